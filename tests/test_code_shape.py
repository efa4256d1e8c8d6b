"""Code shape: no function over 80 lines and no module over 400 lines in the project's packages.

A long function is where a wrong line hides; a long module holds more than one concept. Any
exception is named here with the reason it is allowed (an empty table is the goal).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("osscar", "baselines", "benchmarks", "reports")
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 400

# "path:function" or "path" -> why it may be longer
EXCEPTIONS: dict[str, str] = {
    "osscar/lm/run_config.py": "the one table of the LM run's ~40 options, each with its flag, help, section and check "
                               "(the single source the CLI, the sweep keys and the validation are generated from); "
                               "splitting it would split that table",
}


def long_functions(root: Path = ROOT) -> dict[str, int]:
    """{"pkg/module.py:function": lines} for every function (methods too) over the limit."""
    out: dict[str, int] = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        out[f"{rel}:{node.name}"] = lines
    return out


def long_modules(root: Path = ROOT) -> dict[str, int]:
    """{"pkg/module.py": lines} for every module over the limit."""
    out: dict[str, int] = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            lines = len(path.read_text().splitlines())
            if lines > MAX_MODULE_LINES:
                out[path.relative_to(root).as_posix()] = lines
    return out


def test_no_long_functions():
    found = {k: v for k, v in long_functions().items() if k not in EXCEPTIONS}
    assert found == {}, f"functions over {MAX_FUNCTION_LINES} lines (split them, or name them in EXCEPTIONS): {found}"


def test_no_long_modules():
    found = {k: v for k, v in long_modules().items() if k not in EXCEPTIONS}
    assert found == {}, f"modules over {MAX_MODULE_LINES} lines: {found}"


def test_exceptions_are_still_needed():
    present = set(long_functions()) | set(long_modules())
    assert sorted(set(EXCEPTIONS) - present) == []


def test_the_checker_sees_a_long_function(tmp_path):
    pkg = tmp_path / "osscar"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (pkg / "m.py").write_text(f"def short():\n    return 1\n\n\ndef long():\n{body}\n")
    assert long_functions(tmp_path) == {"osscar/m.py:long": MAX_FUNCTION_LINES + 1}
