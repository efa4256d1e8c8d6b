"""``python -m osscar vision``: prune a CNN with one or more methods at one or more FLOPs targets.

Every (method, flops fraction) pair is one :class:`~osscar.vision.pipeline.VisionRunConfig`; all
are validated before the first run. With ``--output-dir``, each run writes its metrics JSON and
sliced model there, and ``summary.json`` collects the table printed at the end.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path
from typing import Any

from osscar.options import (DEFAULT_DAMPING, DEFAULT_FMNIST_ROOT, VISION_ARCHS, VISION_DATASETS, HelpFormatter, as_flags,
                            parser_flags)

# VisionRunConfig fields whose flag is not the field's name
FIELD_FLAGS = {"latency": "--no-latency", "save_model": "--no-save-model", "method_params": "--method-param"}

PAPER_METHODS = ("mp", "mp+", "chip", "fpgm", "lasso", "thinet", "osscar")


def _floats(s: str) -> list[float]:
    try:
        values = [float(v) for v in s.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from exc
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one number, got {s!r}")
    return values


def _value(s: str) -> Any:
    try:
        return ast.literal_eval(s)
    except (ValueError, SyntaxError):
        return s


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="osscar vision", formatter_class=HelpFormatter,
        description="One-shot structured pruning of a CNN (block-sequential, two calibration streams, no "
                    "fine-tuning), then physical slicing, top-1 accuracy, MACs, parameters and CPU latency. "
                    "Default: the reference ResNet20 trained on real Fashion-MNIST, shipped with the package.")
    p.add_argument("--arch", default="resnet20", choices=VISION_ARCHS, help="architecture")
    p.add_argument("--checkpoint", default="default",
                   help="'default': the reference ResNet20/Fashion-MNIST shipped with the package (sha256-checked; "
                        "the same on every machine); 'train': retrain it with the default recipe at --threads "
                        "(cached in $OSSCAR_CACHE/vision or ~/.cache/osscar/vision; minutes); a checkpoint path; or a pretrained name "
                        "'timm:resnet50.a1_in1k' / 'timm:mobilenetv1_100.ra4_e3600_r224_in1k' / "
                        "'torchvision:IMAGENET1K_V2' (needs hub access)")
    p.add_argument("--random-init", action="store_true", help="random weights instead of a checkpoint (tests only)")
    p.add_argument("--dataset", default="fashion-mnist", choices=VISION_DATASETS, help="dataset")
    p.add_argument("--data-root", default=DEFAULT_FMNIST_ROOT,
                   help="dataset folder (fashion-mnist: the IDX .gz files, e.g. from apt-get install "
                        "dataset-fashion-mnist; cifar10: torchvision layout; imagenet: train/ and val/ folders)")
    p.add_argument("--method", default="osscar",
                   help=f"method name(s), comma-separated, or 'paper' for {','.join(PAPER_METHODS)}")
    p.add_argument("--method-param", action="append", default=[], metavar="[METHOD.]KEY=VALUE",
                   help="method parameter (Python literal); without METHOD. it applies to every method run")
    p.add_argument("--p-hat", type=int, default=None,
                   help="OSSCAR p̂: groups removed per Stage-A step (default: max(1, round(2%% of the channels)))")
    p.add_argument("--t-hat", type=int, default=None,
                   help="OSSCAR t̂: groups changed per local-search step, swap size t̂/2 "
                        "(default: 2·max(1, ceil(5%% of the channels)); 0 disables local search)")
    p.add_argument("--flops-fraction", type=_floats, default="0.5",
                   help="fraction(s) of the whole network's MACs to remove, comma-separated, each in (0,1)")
    p.add_argument("--n-calib", type=int, default=1024, help="calibration images (training set, augmented)")
    p.add_argument("--calib-batch-size", type=int, default=128, help="calibration batch size")
    p.add_argument("--seed", type=int, default=0, help="seed (calibration sample, augmentation, CHIP positions)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (recorded; latency uses the same)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: models, calibration, H, solvers, eval, latency")
    p.add_argument("--damping", type=float, default=DEFAULT_DAMPING, help="λ: H + λ·mean(diag H)·I (on H only)")
    p.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N test images (default: all)")
    p.add_argument("--eval-batch-size", type=int, default=500, help="evaluation batch size")
    p.add_argument("--chip-samples", type=int, default=64, help="CHIP: calibration images whose feature maps are scored")
    p.add_argument("--chip-positions", type=int, default=None,
                   help="CHIP: score this many sampled spatial positions per map (default: every position)")
    p.add_argument("--no-latency", action="store_true", help="skip the dense-vs-sliced CPU latency measurement")
    p.add_argument("--latency-batch", type=int, default=64, help="latency batch size")
    p.add_argument("--latency-repeats", type=int, default=20, help="timed repeats (median reported), after 3 warm-ups")
    p.add_argument("--output-dir", default=None, help="write metrics JSON (+ sliced model) per run and summary.json here")
    p.add_argument("--no-save-model", action="store_true", help="with --output-dir: do not save the sliced models")
    p.add_argument("--prepare", action="store_true",
                   help="only train and cache the default-recipe ResNet20 (what --checkpoint train uses) and exit")
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _configs(args: argparse.Namespace) -> list[Any]:
    from osscar.variants import osscar_parameters
    from osscar.vision.pipeline import VisionRunConfig

    methods = list(PAPER_METHODS) if args.method == "paper" else [m.strip() for m in args.method.split(",") if m.strip()]
    if not methods:
        raise ValueError("--method: no method given")
    per: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for item in args.method_param:
        key, sep, val = item.partition("=")
        if not sep:
            raise ValueError(f"--method-param expects [METHOD.]KEY=VALUE, got {item!r}")
        target, dot, name = key.rpartition(".")
        for m in ([target] if dot else methods):
            if m not in per:
                raise ValueError(f"--method-param {item!r}: method {m!r} is not among the runs ({', '.join(methods)})")
            per[m][name] = _value(val)
    configs = []
    for frac in args.flops_fraction:
        for m in methods:
            configs.append(VisionRunConfig(
                arch=args.arch, checkpoint=None if args.random_init else args.checkpoint, dataset=args.dataset,
                data_root=args.data_root, method=m, method_params=per[m],
                p_hat=args.p_hat if "p_hat" in osscar_parameters(m) else None,
                t_hat=args.t_hat if "t_hat" in osscar_parameters(m) else None,
                flops_fraction=frac, n_calib=args.n_calib, calib_batch_size=args.calib_batch_size, seed=args.seed,
                threads=args.threads, damping=args.damping, eval_limit=args.eval_limit,
                eval_batch_size=args.eval_batch_size, chip_samples=args.chip_samples,
                chip_positions=256 if args.chip_positions is None else args.chip_positions,
                chip_full_maps=(args.chip_positions is None) if m == "chip" else None,
                latency=not args.no_latency, latency_batch=args.latency_batch,
                latency_repeats=args.latency_repeats, output_dir=args.output_dir,
                save_model=not args.no_save_model, random_init=args.random_init, device=args.device))
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
