"""The lists of slow modules and tests in tests/conftest.py name tests that exist (a renamed or moved test would
otherwise drop out of `make test-fast`'s exclusions silently)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import SLOW_MODULES, SLOW_TESTS

TESTS = Path(__file__).parent


def test_every_slow_module_and_test_exists():
    for module in SLOW_MODULES:
        assert (TESTS / module).is_file(), module
    for name in SLOW_TESTS:
        module, function = name.split("::")
        tree = ast.parse((TESTS / module).read_text())
        assert function in {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}, name
