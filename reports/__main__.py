"""python -m reports --store results/records --out reports/output"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports",
                                     description="Build tables, figures and one index.md from the result store.")
    parser.add_argument("--store", default=str(ROOT / "results" / "records"),
                        help="result store root (default: %(default)s)")
    parser.add_argument("--out", default=str(ROOT / "reports" / "output"), help="output folder (default: %(default)s)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    blocker = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        print(f"{parser.prog}: error: --out {args.out}: {blocker} is a file, not a folder", file=sys.stderr)
        return 2
    store = Path(args.store)
    if not store.is_dir():
        print(f"note: store {store} does not exist; the report will list every experiment as missing",
              file=sys.stderr)
    from reports.build import build_report

    index = build_report(store, args.out)
    print(f"report: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
