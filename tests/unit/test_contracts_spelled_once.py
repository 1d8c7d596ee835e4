"""Each contract string is spelled once, in its owner module.

A contract string is a name two parts of the system must agree on: a pod annotation or
label (``kube/annotations.py``), a variable or path between the webhook and the key
container (``core/sidecarenv.py``), a Secret's type, label, annotation or name
(``kube/blobformat.py``, ``kube/keysformat.py``, ``kube/names.py``). Spelled a second
time, the two copies can drift apart silently. This test reads every shipped module's
string literals (docstrings aside: prose may name them) and fails when one of them
contains a contract string outside its owner. Other modules import the constant.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from secure_keys.core import sidecarenv
from secure_keys.kube import annotations as ann
from secure_keys.kube import blobformat, keysformat, names

ROOT = Path(__file__).parents[2]
SHIPPED = sorted(
    p
    for tree in ("operator/secure_keys", "sidecar/secure_keys_sidecar")
    for p in (ROOT / tree).rglob("*.py")
)


def _owned(module: object, *, prefix: str = "") -> set[str]:
    return {
        value
        for name, value in vars(module).items()
        if name.isupper() and isinstance(value, str) and value.startswith(prefix)
    }


CONTRACTS: dict[str, set[str]] = {
    "operator/secure_keys/kube/annotations.py": _owned(ann, prefix="securekeys.io/") - {ann.PREFIX},
    # POD_NAME, POD_NAMESPACE and POD_UID are left out: every process of ours reads
    # its own pod's names under those conventional names from the downward API.
    "operator/secure_keys/core/sidecarenv.py": {
        *(n for n in (*sidecarenv.WEBHOOK_SETS, *sidecarenv.WEBHOOK_MAY_SET) if n[:4] != "POD_"),
        sidecarenv.KEYS_DIR,
        sidecarenv.TOKEN_DIR,
        sidecarenv.CA_DIR,
    },
    "operator/secure_keys/kube/blobformat.py": {
        blobformat.BLOB_SECRET_TYPE,
        blobformat.LABEL_APIKEY,
        blobformat.TAGS_ANNOTATION,
    },
    "operator/secure_keys/kube/keysformat.py": {keysformat.CONTROLLER_KEYS_TYPE},
    "operator/secure_keys/kube/names.py": {names.KEYS_SECRET},
}


def _literals(tree: ast.Module) -> Iterator[tuple[int, str]]:
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            docstrings.add(id(node.value))  # attribute docstrings
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
        ):
            yield node.lineno, node.value


def _spelled_again() -> list[str]:
    found = []
    for path in SHIPPED:
        where = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(), str(path))
        for line, text in _literals(tree):
            for owner, strings in CONTRACTS.items():
                if where == owner:
                    continue
                found += [f"{where}:{line}: {s!r} (owner {owner})" for s in strings if s in text]
    return found


def test_every_contract_names_strings() -> None:
    for owner, strings in CONTRACTS.items():
        assert (ROOT / owner).is_file(), owner
        assert strings, owner


def test_contract_strings_are_spelled_only_by_their_owner() -> None:
    assert _spelled_again() == []


@pytest.mark.parametrize("spelled", ['"securekeys.io/keys"', '"SECUREKEYS_DIR"'])
def test_a_second_spelling_is_found(spelled: str) -> None:
    copy = ast.parse(f"NAME = {spelled}\n")
    texts = [text for _line, text in _literals(copy)]
    assert any(s in t for t in texts for strings in CONTRACTS.values() for s in strings)
