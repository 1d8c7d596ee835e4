"""Structural rules of the codebase that linters don't check.

- One module owns each dangerous primitive: AES-GCM is imported only by
  ``secure_keys.core.aead``; PBKDF2 and HKDF only by ``secure_keys.core.hierarchy``;
  X25519 only by ``secure_keys.core.sealing``.
- Every module opens with a docstring saying what it owns.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
SOURCES = sorted(
    p
    for tree in ("operator", "sidecar", "devtools")
    for p in (ROOT / tree).rglob("*.py")
    if ".venv" not in p.parts
)

OWNERS = {
    "AESGCM": "operator/secure_keys/core/aead.py",
    "PBKDF2HMAC": "operator/secure_keys/core/hierarchy.py",
    "HKDFExpand": "operator/secure_keys/core/hierarchy.py",
    "HKDF": "operator/secure_keys/core/hierarchy.py",
    "X25519PrivateKey": "operator/secure_keys/core/sealing.py",
    "X25519PublicKey": "operator/secure_keys/core/sealing.py",
    "x25519": "operator/secure_keys/core/sealing.py",  # from ...asymmetric import x25519
}
OWNED_MODULES = {
    "cryptography.hazmat.primitives.ciphers.aead": OWNERS["AESGCM"],
    "cryptography.hazmat.primitives.kdf.hkdf": OWNERS["HKDF"],
    "cryptography.hazmat.primitives.kdf.pbkdf2": OWNERS["PBKDF2HMAC"],
    "cryptography.hazmat.primitives.asymmetric.x25519": OWNERS["X25519PrivateKey"],
}


def _imported_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names.update(alias.name for alias in node.names)
            names.add(node.module or "")
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_sources_were_found() -> None:
    assert len(SOURCES) >= 10


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dangerous_primitives_have_one_owner(path: Path) -> None:
    imported = _imported_names(ast.parse(path.read_text()))
    relative = str(path.relative_to(ROOT))
    for name, owner in OWNERS.items():
        if name in imported:
            assert relative == owner, f"{relative} imports {name}; only {owner} may"
    for module, owner in OWNED_MODULES.items():
        if module in imported:
            assert relative == owner, f"{relative} imports {module}; only {owner} may"


@pytest.mark.parametrize("module", sorted(OWNED_MODULES))
def test_each_owner_uses_what_it_owns(module: str) -> None:
    # Keeps the table honest: a rule naming a module that no longer uses the primitive
    # (after a rename or a move) would silently guard nothing.
    owner = OWNED_MODULES[module]
    assert module in _imported_names(ast.parse((ROOT / owner).read_text()))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_says_what_it_owns(path: Path) -> None:
    docstring = ast.get_docstring(ast.parse(path.read_text()))
    assert docstring, f"{path.relative_to(ROOT)} has no module docstring"
    assert len(docstring.split()) >= 5
