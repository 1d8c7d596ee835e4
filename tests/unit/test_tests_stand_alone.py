"""Every test module stands alone: none imports another test module.

A test module reads as a specification of one thing; a helper it shares lives in a
``conftest.py``, in ``tests/support/`` or in a helper module of its folder (a name not
starting with ``test_``). Importing a test module also runs its tests twice under some
collection orders and ties unrelated specifications together (a rename of one breaks
the other), so this check covers every Python file under tests/.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).parents[1]
ROOT = TESTS.parent
FILES = sorted(p for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts)


def _is_test_module(dotted: str) -> bool:
    """A module of this tree's tests/ whose name starts with ``test_``."""
    return dotted.startswith("tests.") and dotted.rsplit(".", 1)[-1].startswith("test_")


def imported_test_modules(source: str, package: str) -> list[str]:
    """The test modules that ``source`` (a module of ``package``) imports, dotted."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend(a.name for a in node.names if _is_test_module(a.name))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            if _is_test_module(base):
                found.append(base)
            # ``from tests.e2e import test_node`` imports a test module by its name.
            named = (f"{base}.{a.name}" for a in node.names)
            found.extend(name for name in named if _is_test_module(name))
    return found


def test_the_check_sees_every_form_of_import() -> None:
    package = "tests.e2e"
    assert imported_test_modules("from tests.e2e.test_node import kubectl", package) == [
        "tests.e2e.test_node"
    ]
    assert imported_test_modules("from tests.e2e import test_node", package) == [
        "tests.e2e.test_node"
    ]
    assert imported_test_modules("import tests.e2e.test_node", package) == ["tests.e2e.test_node"]
    assert imported_test_modules("from .test_node import kubectl", package) == [
        "tests.e2e.test_node"
    ]
    inside = "def helper():\n    from tests.unit.controller.test_reconciler import NS\n"
    assert imported_test_modules(inside, package) == ["tests.unit.controller.test_reconciler"]
    assert imported_test_modules("from tests.support.delivery import exec_in", package) == []
    assert imported_test_modules("from tests.e2e.conftest import Target", package) == []
    assert imported_test_modules("from aiohttp.test_utils import TestClient", package) == []


def test_files_were_found() -> None:
    assert sum(1 for p in FILES if p.name.startswith("test_")) >= 50


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_test_module_is_imported(path: Path) -> None:
    package = ".".join(path.relative_to(ROOT).parent.parts)
    imported = imported_test_modules(path.read_text(), package)
    assert not imported, (
        f"{path.relative_to(ROOT)} imports test module(s) {imported}: move what it needs "
        "into a conftest.py or tests/support/"
    )
