"""Tables from a folder of vision metrics JSON files: ``python -m osscar.vision.report DIR``.

Prints top-1 / MACs / params / latency per (FLOPs target, method), and the per-layer relative
reconstruction error ½‖X̃W − X_dŴ‖² / ½‖X_dŴ‖² (first unit: the same problem for every method;
later units depend on what earlier ones pruned).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load_runs(folder: str | Path) -> list[dict]:
    runs = []
    for p in sorted(Path(folder).glob("*.json")):
        if p.name == "summary.json":
            continue
        r = json.loads(p.read_text())
        if "config" in r and "pruned" in r:
            runs.append(r)
    return runs


def tables(runs: list[dict]) -> str:
    if not runs:
        return "no runs"
    order = ["mp", "mp+", "chip", "fpgm", "lasso", "thinet", "ziplm", "osscar"]
    runs = sorted(runs, key=lambda r: (r["config"]["flops_fraction"],
                                       order.index(r["config"]["method"]) if r["config"]["method"] in order else 99))
    d = runs[0]["dense"]
    out = [f"dense: top-1 {d['top1']:.4f}, MACs {d['macs']:,}, params {d['params']:,}, "
           f"eval n={runs[0]['eval_n']}", "",
           "| target | method | top-1 | MACs removed | params | latency ms (dense) | speedup | rel. err L1 | mean rel. err | prune s |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lay = r["layers"]
        lat = r["pruned"]["latency_ms"]
        lat_s = f"{lat:.1f} ({r['dense']['latency_ms']:.1f})" if lat is not None else "-"
        sp = f"{r['latency_speedup']:.2f}" if r.get("latency_speedup") else "-"
        out.append(f"| {r['config']['flops_fraction']:.2f} | {r['config']['method']} | {r['pruned']['top1']:.4f} | "
                   f"{r['flops_reduction']:.3f} | {r['pruned']['params']:,} | {lat_s} | {sp} | "
                   f"{lay[0]['relative_error']:.4f} | {sum(x['relative_error'] for x in lay) / len(lay):.4f} | "
                   f"{r['timings']['prune']:.0f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m osscar.vision.report DIR", file=sys.stderr)
        return 2
    print(tables(load_runs(argv[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
