"""Write results/mutation.json from a mutmut run (``nox -s mutation`` calls it after ``mutmut run``).

    python -m benchmarks.mutation_report [--out results/mutation.json] [--equivalent results/mutation_equivalent.toml]

Reads mutmut's per-file results under ``mutants/`` (run from the repository root, where
``[tool.mutmut]`` in pyproject.toml names the mutated modules) and writes: the tool and its
version, the modules, the counts per status (overall and per module), the score, and every
mutant that was not killed with its ``file:line`` and diff. A survivor listed in the
equivalent file (keyed by mutmut's mutant name, with the mutated line it expects, so that a
stale entry is noticed) carries the reason it is equivalent and leaves the score's denominator.

``score`` = killed / (total − equivalent), counting a timeout as killed (the mutant made the
tests hang: they detect it); ``killed_fraction`` = killed / total is the plain fraction.
A run with mutants still unchecked is written with ``"partial": true`` and the unchecked count.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import json
import re
import sys
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

STATUS_KILLED = ("killed", "timeout")  # a mutant the tests detect (a timeout: the tests hang on it)
HUNK = re.compile(r"^@@ -(\d+)")


def _mutmut() -> Any:
    """mutmut's own readers (imported late: mutmut reads pyproject.toml at import)."""
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.stats import status_by_exit_code
    from mutmut.utils.file_utils import walk_mutatable_files
    from mutmut.utils.format_utils import orig_function_and_class_names_from_key

    return SourceFileMutationData, get_diff_for_mutant, status_by_exit_code, walk_mutatable_files, \
        orig_function_and_class_names_from_key


def _function_span(source: str, name: str, class_name: str | None) -> tuple[int, int]:
    """(first line incl. decorators, last line) of function ``name`` (in ``class_name``) in ``source``."""
    body: list[ast.stmt] = ast.parse(source).body
    if class_name is not None:
        cls = next(n for n in body if isinstance(n, ast.ClassDef) and n.name == class_name)
        body = cls.body
    fn = next(n for n in body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == name)
    first = min([fn.lineno, *(d.lineno for d in fn.decorator_list)])
    return first, fn.end_lineno or fn.lineno


def mutated_line(diff: str) -> tuple[int, str, str]:
    """(line in the function's code, original text, mutated text) of the first changed line of ``diff``."""
    lines = diff.splitlines()
    old, new, offset = "", "", 0
    for i, line in enumerate(lines):
        m = HUNK.match(line)
        if m:
            offset = int(m.group(1))
            for rest in lines[i + 1:]:
                if rest.startswith("-"):
                    old = rest[1:]
                    break
                if rest.startswith("+"):
                    break
                offset += 1
            new = next((r[1:] for r in lines[i + 1:] if r.startswith("+")), "")
            break
    return offset, old, new


def file_line(source: str, key: str, diff: str, names_of: Any) -> int:
    """The line of ``source`` that mutant ``key`` changes (its first changed line)."""
    name, class_name = names_of(key)
    first, last = _function_span(source, name, class_name)
    offset, old, _ = mutated_line(diff)
    text = source.splitlines()
    guess = first + offset - 1
    hits = [i for i in range(first, last + 1) if text[i - 1].strip() == old.strip()]
    return min(hits, key=lambda i: abs(i - guess)) if hits else guess


def load_equivalent(path: Path) -> tuple[dict[str, dict[str, str]], list[dict[str, str]]]:
    """The committed equivalent survivors: ``[mutant."NAME"]`` entries (reason, and the mutated line
    it expects) and ``[[class]]`` families (name, reason, pattern, replacement: a survivor whose
    original and mutated lines are equal once ``re.sub(pattern, replacement)`` is applied to both).
    An absent file lists none."""
    if not path.exists():
        return {}, []
    data = tomllib.loads(path.read_text())
    mutants, classes = data.get("mutant", {}), data.get("class", [])
    for key, entry in [*mutants.items(), *((c.get("name", "?"), c) for c in classes)]:
        if not entry.get("reason"):
            raise SystemExit(f"error: {path}: {key!r} needs a reason")
    for c in classes:
        if "pattern" not in c:
            raise SystemExit(f"error: {path}: class {c.get('name')!r} needs a pattern")
    return mutants, classes


def equivalent_class(old: str, new: str, classes: list[dict[str, str]]) -> dict[str, str] | None:
    """The first family whose rewrite makes the original and the mutated line equal."""
    for c in classes:
        def norm(text: str, c: dict[str, str] = c) -> str:
            text = re.sub(c["pattern"], c.get("replacement", ""), text)
            return re.sub(r",\s*\)", ")", re.sub(r"\s+", " ", text)).strip()
        if old != new and norm(old) == norm(new):
            return c
    return None


def collect(equivalent: dict[str, dict[str, str]], classes: list[dict[str, str]]) -> dict[str, Any]:
    """The report's content from mutants/ (see the module docstring)."""
    SourceFileMutationData, get_diff, status_by_exit_code, walk, names_of = _mutmut()
    counts: Counter[str] = Counter()
    per_module: dict[str, dict[str, int]] = {}
    not_killed: list[dict[str, Any]] = []
    seen_equivalent: set[str] = set()
    used_classes: Counter[str] = Counter()
    for path in walk():
        data = SourceFileMutationData(path=path)
        data.load()
        if not data.exit_code_by_key:
            continue
        source = Path(path).read_text()
        module_counts: Counter[str] = Counter()
        for key, code in sorted(data.exit_code_by_key.items()):
            status = status_by_exit_code[code]
            module_counts[status] += 1
            if status in STATUS_KILLED or status == "not checked":
                continue
            diff = get_diff(key, path=path)
            _, old, new = mutated_line(diff)
            entry: dict[str, Any] = {"mutant": key, "status": status,
                                     "where": f"{path}:{file_line(source, key, diff, names_of)}", "diff": diff}
            family = equivalent_class(old, new, classes)
            if status != "survived":
                pass
            elif key in equivalent:
                expected = equivalent[key].get("mutated", "").strip()
                if expected and expected != new.strip():
                    entry["stale_equivalent"] = f"the equivalent file expects {expected!r}, the mutant is {new.strip()!r}"
                else:
                    entry["equivalent"] = equivalent[key]["reason"]
                    seen_equivalent.add(key)
            elif family is not None:
                entry["equivalent"] = f"[{family['name']}] {family['reason']}"
                seen_equivalent.add(key)
                used_classes[family["name"]] += 1
            not_killed.append(entry)
        per_module[str(path)] = dict(sorted(module_counts.items()))
        counts.update(module_counts)
    total = sum(counts.values())
    killed = sum(counts[s] for s in STATUS_KILLED)
    n_eq = len(seen_equivalent)
    unchecked = counts["not checked"]
    checked = total - unchecked
    return {
        "tool": "mutmut", "version": importlib.metadata.version("mutmut"), "session": "nox -s mutation",
        "partial": unchecked > 0, "unchecked": unchecked,
        "modules": sorted(per_module),
        "counts": {"total": total, "killed": counts["killed"], "timeout": counts["timeout"],
                   "survived": counts["survived"], "equivalent": n_eq, "no_tests": counts["no tests"],
                   "skipped": counts["skipped"], "suspicious": counts["suspicious"], "segfault": counts["segfault"]},
        "score": round(killed / max(checked - n_eq, 1), 4),
        "killed_fraction": round(counts["killed"] / max(checked, 1), 4),
        "per_module": per_module,
        "equivalent_classes": {c["name"]: used_classes[c["name"]] for c in classes},
        "unused_equivalent_entries": sorted(set(equivalent) - seen_equivalent),
        "survivors_not_equivalent": sum(1 for e in not_killed if e["status"] == "survived" and "equivalent" not in e),
        "not_killed": not_killed,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/mutation.json"))
    ap.add_argument("--equivalent", type=Path, default=Path("results/mutation_equivalent.toml"))
    ap.add_argument("--wall-s", type=float, default=None, help="wall time of the mutmut run, recorded as is")
    ap.add_argument("--note", default=None, help="how the run was made (recorded as is)")
    args = ap.parse_args(argv)
    if not Path("mutants").is_dir():
        print("error: no mutants/ here: run `mutmut run` (nox -s mutation) from the repository root first",
              file=sys.stderr)
        return 2
    report = collect(*load_equivalent(args.equivalent))
    if args.wall_s is not None:
        report["wall_s"] = round(args.wall_s, 1)
    if args.note:
        report["note"] = args.note
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    c = report["counts"]
    print(f"mutation: {c['killed'] + c['timeout']}/{c['total']} killed (timeouts {c['timeout']}), "
          f"{c['survived']} survived ({c['equivalent']} equivalent), score {report['score']:.1%}"
          + (f", PARTIAL: {report['unchecked']} unchecked" if report["partial"] else "") + f" -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
