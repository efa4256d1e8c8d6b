"""``python -m osscar vision``: prune a CNN with one or more methods at one or more FLOPs targets.

Every (method, flops fraction) pair is one :class:`~osscar.vision.run_config.VisionRunConfig`; all
are validated before the first run. With ``--output-dir``, each run writes its metrics JSON and
sliced model there, and ``summary.json`` collects the table printed at the end.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from osscar.config_cli import add_config_options, config_flags, config_values
from osscar.options import HelpFormatter, as_flags, parser_flags
from osscar.vision.run_config import PAPER_METHODS, VisionRunConfig

# {VisionRunConfig field: its flag}, from the fields' own option metadata
FIELD_FLAGS = config_flags(VisionRunConfig)


def build_parser(config_class: type | None = None) -> argparse.ArgumentParser:
    """The parser: one option per :func:`osscar.config_cli.option` field of ``config_class`` (default
    :class:`~osscar.vision.run_config.VisionRunConfig`), grouped by section, plus the CLI's own options."""
    p = argparse.ArgumentParser(
        prog="osscar vision", formatter_class=HelpFormatter,
        description="One-shot structured pruning of a CNN (block-sequential, two calibration streams, no "
                    "fine-tuning), then physical slicing, top-1 accuracy, MACs, parameters and CPU latency. "
                    "Default: the reference ResNet20 trained on real Fashion-MNIST, shipped with the package.")
    groups = add_config_options(p, config_class or VisionRunConfig)
    groups["model"].add_argument(
        "--prepare", action="store_true",
        help="only train and cache the default-recipe ResNet20 (what --checkpoint train uses) and exit")
    out = groups["output"]
    out.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    out.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _method_params(pairs: list[tuple[str, Any]], methods: list[str]) -> dict[str, dict[str, Any]]:
    """``--method-param [METHOD.]KEY=VALUE`` pairs → {method: {key: value}}; without METHOD. for every method."""
    per: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for key, value in pairs:
        target, dot, name = key.rpartition(".")
        for m in ([target] if dot else methods):
            if m not in per:
                raise ValueError(f"--method-param {key}={value!r}: method {m!r} is not among the runs ({', '.join(methods)})")
            per[m][name] = value
    return per


def _configs(args: argparse.Namespace, config_class: type | None = None) -> list[VisionRunConfig]:
    """One config per (FLOPs fraction, method) of the parsed arguments; p̂/t̂ go to the OSSCAR variants only,
    ``--chip-positions`` unset means CHIP's full maps."""
    from osscar.variants import osscar_parameters

    cls = config_class or VisionRunConfig
    values = config_values(cls, args)
    methods = list(PAPER_METHODS) if args.method == "paper" else [m.strip() for m in args.method.split(",") if m.strip()]
    if not methods:
        raise ValueError("--method: no method given")
    per = _method_params(values.pop("method_params"), methods)
    fractions = values.pop("flops_fraction")
    positions = values.pop("chip_positions")
    if args.random_init:
        values["checkpoint"] = None
    configs = []
    for frac in fractions:  # parse_fractions: a list, the default "0.5" included
        for m in methods:
            configs.append(cls(**{
                **values, "method": m, "method_params": per[m], "flops_fraction": frac,
                "p_hat": args.p_hat if "p_hat" in osscar_parameters(m) else None,
                "t_hat": args.t_hat if "t_hat" in osscar_parameters(m) else None,
                "chip_positions": cls.chip_positions if positions is None else positions,  # the field's default
                "chip_full_maps": (positions is None) if m == "chip" else None}))
    return configs


def format_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'method':<8} {'target':>6} {'MACs↓':>7} {'top1':>7} {'dense':>7} {'params':>9} {'MACs':>10} {'lat ms':>8} {'speedup':>7} {'prune s':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lat = r["pruned"]["latency_ms"]
        lines.append(f"{r['config']['method']:<8} {r['config']['flops_fraction']:>6.2f} {r['flops_reduction']:>7.3f} "
                     f"{r['pruned']['top1']:>7.4f} {r['dense']['top1']:>7.4f} {r['pruned']['params']:>9d} "
                     f"{r['pruned']['macs']:>10d} {lat if lat is not None else float('nan'):>8.2f} "
                     f"{r['latency_speedup'] or float('nan'):>7.2f} {r['timings']['prune']:>8.1f}")
    if rows:
        d = rows[0]["dense"]
        lat = d["latency_ms"] if d["latency_ms"] is not None else float("nan")
        lines.append(f"{'dense':<8} {'':>6} {0:>7.3f} {d['top1']:>7.4f} {d['top1']:>7.4f} {d['params']:>9d} "
                     f"{d['macs']:>10d} {lat:>8.2f} {1:>7.2f}")
    return "\n".join(lines)


def _prepare(args: argparse.Namespace) -> int:
    """``--prepare``: train and cache the default-recipe ResNet20."""
    from osscar.vision.data import check_dataset_root
    from osscar.vision.train import TrainConfig, default_checkpoint, load_checkpoint_meta

    cfg = TrainConfig(root=args.data_root, threads=args.threads, seed=args.seed)
    check_dataset_root(cfg.dataset, cfg.root)
    path = default_checkpoint(cfg, progress=not args.quiet)
    meta = load_checkpoint_meta(path)
    print(f"{path}\ntest top-1 {meta['test_top1']:.4f}, trained in {meta['train_seconds']:.0f}s")
    return 0


def _error(parser: argparse.ArgumentParser, args: argparse.Namespace, exc: Exception) -> int:
    """One line on stderr naming the flags as typed (the user's paths left as they are); exit code 2."""
    keep = [str(v) for v in (args.data_root, args.checkpoint, args.output_dir) if v is not None]
    message = as_flags(" ".join(str(exc).split()), parser_flags(parser, FIELD_FLAGS), keep=keep)
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.prepare:
            return _prepare(args)
        configs = _configs(args)
        from osscar.devices import resolve_device
        from osscar.vision.pipeline import check_weights

        resolve_device(args.device, "--device")
        for c in configs:
            check_weights(c)
    except (ValueError, FileNotFoundError) as exc:
        if args.debug:
            raise
        return _error(parser, args, exc)
    from osscar.io import atomic_write_json
    from osscar.provenance import environment
    from osscar.vision.pipeline import run_name, run_vision

    rows, env = [], environment()
    for cfg in configs:
        r = run_vision(cfg, progress=not args.quiet)
        if cfg.output_dir is not None:
            path = Path(cfg.output_dir) / f"{run_name(cfg)}.json"
            r["files"]["metrics"] = str(path)
            atomic_write_json(path, {**r, "environment": env})
        rows.append(r)
        print(f"{cfg.method} @ {cfg.flops_fraction:g}: top-1 {r['pruned']['top1']:.4f} (dense {r['dense']['top1']:.4f}), "
              f"MACs -{r['flops_reduction']:.3f}, {r['timings']['prune']:.1f}s", flush=True)
    print(format_table(rows))
    if args.output_dir:
        atomic_write_json(Path(args.output_dir) / "summary.json",
                          {"argv": list(sys.argv[1:] if argv is None else argv), "table": format_table(rows),
                           "environment": env,
                           "runs": [{k: r[k] for k in ("config", "dense", "pruned", "flops_reduction", "latency_speedup",
                                                        "timings", "files", "provenance")} for r in rows]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
