"""No function or method in pfp_core/ or nodes/ is longer than 80 lines (decorators and docstring included): a
longer one has more than one reason to change, so it is split (cli.build_parser: one function per sub-command
group; bench speed's markdown: one function per section)."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 80


def long_functions(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno] + [decorator.lineno for decorator in node.decorator_list])
            lines = node.end_lineno - first + 1
            if lines > MAX_LINES:
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_is_longer_than_80_lines():
    files = sorted((REPO / "pfp_core").rglob("*.py")) + sorted((REPO / "nodes").rglob("*.py"))
    assert files
    assert [found for path in files for found in long_functions(path)] == []
