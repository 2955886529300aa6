"""The house's size rule for ``src/vlae``, checked by ``make check``.

A reader should hold a function in their head and find one concept per module, so
no function is longer than ``FUNCTION_LINES`` and no module longer than
``MODULE_LINES`` (lines as ``ruff format`` writes them, docstrings included).
An exception is named in ``ALLOWED`` with the reason it is one; an allowance that is
no longer needed is reported too, so the list cannot go stale.

    python tools/check_sizes.py [ROOT]     # exit 1 and one line per breach
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

FUNCTION_LINES = 80
MODULE_LINES = 600

# "path" or "path:function" -> why it may be longer.
ALLOWED: dict[str, str] = {}


def breaches(root: Path) -> list[tuple[str, int, int]]:
    """``(place, lines, limit)`` for every module and function of ``root`` over its limit."""
    found = []
    for path in sorted(root.rglob("*.py")):
        name = path.relative_to(root.parent).as_posix()
        text = path.read_text()
        lines = text.count("\n")
        if lines > MODULE_LINES:
            found.append((name, lines, MODULE_LINES))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if length > FUNCTION_LINES:
                    found.append((f"{name}:{node.name}", length, FUNCTION_LINES))
    return found


def main(argv: list[str]) -> int:
    root = Path(argv[0] if argv else Path(__file__).resolve().parents[1] / "src" / "vlae")
    over = breaches(root)
    failed = False
    for place, lines, limit in over:
        if place not in ALLOWED:
            print(f"{place}: {lines} lines (the house's limit is {limit}; split it, or name the reason in ALLOWED)")
            failed = True
    for place in sorted(set(ALLOWED) - {p for p, _, _ in over}):
        print(f"{place}: within the limits now; remove its entry from ALLOWED in {Path(__file__).name}")
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
