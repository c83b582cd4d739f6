"""No test module imports another test module: what tests share lives in support modules of tests/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def imported_test_modules(source: str) -> list[str]:
    """The ``test_*`` modules of tests/ that ``source`` imports (as ``tests.test_x`` or relatively)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            inside = [a.name.removeprefix("tests.") for a in node.names if a.name.startswith("tests.")]
        elif isinstance(node, ast.ImportFrom) and (node.level > 0 or node.module == "tests"):
            inside = [node.module] if node.module and node.module != "tests" else [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tests."):
            inside = [node.module.removeprefix("tests.")]
        else:
            continue
        found += [name for name in inside if name.split(".")[0].startswith("test_")]
    return found


@pytest.mark.parametrize(("source", "found"), [
    ("from tests.test_session import Pair", ["test_session"]),
    ("import tests.test_session", ["test_session"]),
    ("from tests import strategies, test_session", ["test_session"]),
    ("from .test_session import Pair", ["test_session"]),
    ("from . import test_session", ["test_session"]),
    ("def f():\n    from tests.test_certify_cli import run\n", ["test_certify_cli"]),
    ("from tests.session_pair import Pair\nfrom tests import strategies\nimport test_session_like", []),
], ids=["from", "import", "from-package", "relative", "relative-package", "in-a-function", "support-modules"])
def test_the_check_finds_every_form_of_import(source: str, found: list[str]) -> None:
    assert imported_test_modules(source) == found


def test_no_module_of_tests_imports_a_test_module() -> None:
    offenders = {path.name: names for path in sorted(TESTS.glob("*.py"))
                 if (names := imported_test_modules(path.read_text(encoding="utf-8")))}
    assert offenders == {}
