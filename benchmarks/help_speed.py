"""How long each command-line entry point takes to answer ``--help`` (a benchmark, not a test).

    python benchmarks/help_speed.py [--repeats 5] [--out results/help_speed.json]

Each command runs ``repeats`` times in a fresh interpreter; the median wall time is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = (("osscar",), ("osscar", "lm"), ("osscar", "vision"), ("benchmarks.run",), ("benchmarks.status",),
            ("benchmarks.compare",), ("reports",))


def time_help(module_args: tuple[str, ...], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", *module_args, "--help"], cwd=ROOT, check=True, capture_output=True)
        out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="runs per command (default: 5)")
    p.add_argument("--out", default=str(ROOT / "results" / "help_speed.json"), help="JSON output (default: %(default)s)")
    args = p.parse_args(argv)
    rows = []
    for cmd in COMMANDS:
        times = time_help(cmd, args.repeats)
        rows.append({"command": "python -m " + " ".join(cmd) + " --help", "median_s": statistics.median(times),
                     "seconds_each": times})
        print(f"{rows[-1]['median_s']:6.3f} s  {rows[-1]['command']}")
    Path(args.out).write_text(json.dumps({"python": sys.version.split()[0], "repeats": args.repeats, "rows": rows},
                                         indent=1) + "\n")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
