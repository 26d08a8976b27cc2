"""The shape the code keeps: short functions, no module named after a builtin or the stdlib."""

from __future__ import annotations

import ast
import builtins
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "matcli"
LONGEST_FUNCTION = 50


def test_no_function_is_longer_than_the_limit():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > LONGEST_FUNCTION:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({lines})")
    assert not long, "functions over 50 lines: " + ", ".join(long)


def test_no_module_shadows_a_builtin_or_a_standard_module():
    taken = set(dir(builtins)) | set(sys.stdlib_module_names)
    shadowing = [
        str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py") if path.stem in taken
    ]
    assert not shadowing, shadowing
