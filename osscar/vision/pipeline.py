"""One vision run: load → calibrate and prune (block-sequential, two streams) → slice → evaluate.

>>> from osscar.vision.pipeline import run_vision
>>> from osscar.vision.run_config import VisionRunConfig
>>> metrics = run_vision(VisionRunConfig(method="osscar", flops_fraction=0.5))   # doctest: +SKIP

``checkpoint="default"`` is the reference ResNet20 on real Fashion-MNIST shipped with the package
(sha256-checked); ``checkpoint="train"`` retrains that recipe at the run's thread count and caches
it (see :mod:`osscar.vision.train`).
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from osscar.devices import device_label, resolve_device, synchronize, torch_threads
from osscar.vision.data import dataset_meta, load_split
from osscar.vision.models import is_pretrained_name, load_model
from osscar.vision.run_config import VisionRunConfig


def check_weights(config: VisionRunConfig) -> None:
    """The checks that read a checkpoint file the config names (a sweep's validation, the CLI): ValueError for a
    file that is not a checkpoint or holds another architecture; each (arch, file) is read once per process."""
    ckpt = config.checkpoint
    if isinstance(ckpt, str) and ckpt not in ("default", "train") and not is_pretrained_name(ckpt):
        path = Path(ckpt)
        _read_weights(config.arch, str(path), path.stat().st_mtime_ns if path.is_file() else None)


@functools.lru_cache(maxsize=32)
def _read_weights(arch: str, path: str, mtime_ns: int | None) -> bool:
    load_model(arch, path)  # raises for a missing file, a non-checkpoint or another architecture
    return True


def input_shape(dataset: str) -> tuple[int, int, int]:
    return {"fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32), "imagenet": (3, 224, 224)}[dataset]


def measure_latency(models: dict[str, nn.Module], x: torch.Tensor, repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median ms per forward of each model on ``x``, interleaved in one process at the current thread
    count (on a GPU, synchronised around every pass)."""
    times: dict[str, list[float]] = {n: [] for n in models}
    with torch.inference_mode():
        for m in models.values():
            for _ in range(warmup):
                m(x)
        for _ in range(repeats):
            for n, m in models.items():
                synchronize(x.device)
                t = time.perf_counter()
                m(x)
                synchronize(x.device)
                times[n].append(time.perf_counter() - t)
    return {n: 1e3 * sorted(v)[len(v) // 2] for n, v in times.items()}


def run_name(cfg: VisionRunConfig) -> str:
    return f"{cfg.arch}_{cfg.dataset}_{cfg.method}_f{cfg.flops_fraction:g}_n{cfg.n_calib}_s{cfg.seed}"


def run_vision(config: VisionRunConfig, progress: bool = True) -> dict[str, Any]:
    """Run one pruning experiment; returns metrics and the run's provenance (the caller writes them; with
    ``output_dir`` and ``save_model`` the sliced model is saved there)."""
    from osscar.vision.adapters import prune_units
    from osscar.vision.flops import count_params, layer_shapes, macs, solve_keep_counts
    from osscar.vision.prune import prune_model
    from osscar.vision.slicing import slice_model
    cfg = config
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    with torch_threads(cfg.threads):
        torch.manual_seed(cfg.seed)
        device = resolve_device(cfg.device, "device")
        t = time.perf_counter()
        train, test, meta_ds, ckpt, dense, provenance = _load(cfg, device, progress)
        timings["load"] = time.perf_counter() - t

        # calibration images: n_calib training images, training augmentation, one seeded generator
        gen = torch.Generator().manual_seed(cfg.seed)
        idx = torch.randperm(len(train), generator=gen)[: cfg.n_calib]
        calib, _ = train.batch(idx, augment=True, generator=gen)

        shape = input_shape(cfg.dataset)
        units = prune_units(dense, cfg.arch)
        shapes = layer_shapes(dense, shape)
        channels = {u.name: u.channels(dense) for u in units}
        keep, layer_fraction, target_reduction = solve_keep_counts(shapes, units, channels, cfg.flops_fraction)

        t = time.perf_counter()
        pruned, kept, layers = prune_model(
            dense, units, calib, cfg.method, keep, cfg.all_method_params(), damping=cfg.damping,
            batch_size=cfg.calib_batch_size, chip_samples=cfg.chip_samples,
            chip_positions=None if cfg.chip_full_maps else cfg.chip_positions,
            seed=cfg.seed, progress=progress)
        timings["prune"] = time.perf_counter() - t
        sliced = slice_model(pruned, units, kept).eval()

        slice_diff = _slice_diff(sliced, pruned, test, device)  # exactness of slicing on real test images

        t = time.perf_counter()
        acc_dense, acc_pruned = _accuracies(cfg, dense, sliced, test, provenance.get("sha256"), progress)
        timings["eval"] = time.perf_counter() - t

        macs_dense, macs_sliced = macs(shapes), macs(layer_shapes(sliced, shape))
        lat: dict[str, float] = {}
        if cfg.latency:
            t = time.perf_counter()
            lat = _latency(cfg, dense, sliced, shape, device)
            timings["latency"] = time.perf_counter() - t

        out_files = _save(cfg, sliced, provenance.get("arch_kwargs", meta_ds), kept, acc_pruned["top1"])
        timings["total"] = time.perf_counter() - t_start
        prov = {k: v for k, v in provenance.items() if k != "state_dict"}
        result: dict[str, Any] = {
            "config": cfg.to_dict(),
            "method_params": cfg.all_method_params(),
            "dense": {"top1": acc_dense["top1"], "macs": macs_dense, "params": count_params(dense),
                      "latency_ms": lat.get("dense"), "top1_cached": bool(acc_dense.get("cached", False))},
            "pruned": {"top1": acc_pruned["top1"], "macs": macs_sliced, "params": count_params(sliced),
                       "latency_ms": lat.get("sliced")},
            "eval_n": acc_pruned["n"],
            "flops_reduction": 1 - macs_sliced / macs_dense,
            "flops_reduction_planned": target_reduction,
            "channel_fraction_removed": layer_fraction,
            "params_reduction": 1 - count_params(sliced) / count_params(dense),
            "latency_speedup": (lat["dense"] / lat["sliced"]) if lat else None,
            "latency_setup": {"device": device_label(device), "threads": cfg.threads, "batch": cfg.latency_batch,
                              "repeats": cfg.latency_repeats,
                              "warmup": 3, "statistic": "median"} if lat else None,
            "slice_max_abs_diff": slice_diff,
            "layers": layers,
            "kept": {k: v.tolist() for k, v in kept.items()},
            "provenance": {"checkpoint": ckpt, "checkpoint_sha256": prov.get("sha256"), "checkpoint_meta": prov,
                           "dataset": cfg.dataset, "data_root": cfg.data_root, "seed": cfg.seed,
                           "device": device_label(device), "threads_used": torch.get_num_threads()},
            "timings": timings,
            "files": out_files,
        }
        return result


def _load(cfg: VisionRunConfig, device: Any, progress: bool) -> tuple[Any, Any, dict[str, Any], str, nn.Module, dict]:
    """(train, test, dataset meta, checkpoint path, the dense model on ``device``, its provenance)."""
    from osscar.vision.train import TrainConfig, default_checkpoint, reference_checkpoint

    train = load_split(cfg.dataset, cfg.data_root, "train")
    test = load_split(cfg.dataset, cfg.data_root, "test")
    meta_ds = dataset_meta(cfg.dataset)
    ckpt = cfg.checkpoint
    if ckpt == "default":
        ckpt = str(reference_checkpoint())
    elif ckpt == "train":
        ckpt = str(default_checkpoint(TrainConfig(root=cfg.data_root, threads=cfg.threads), progress=progress))
    if cfg.random_init:
        dense, provenance = load_model(cfg.arch, None, random_init=True, **meta_ds)
    else:
        dense, provenance = load_model(cfg.arch, ckpt)
    return train, test, meta_ds, ckpt, dense.to(device), provenance


def _accuracies(cfg: VisionRunConfig, dense: nn.Module, sliced: nn.Module, test: Any, ckpt_sha: str | None,
                progress: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Top-1 of the dense and the sliced model on the test split (the dense one cached per checkpoint)."""
    from osscar.vision.train import cached_evaluate, evaluate

    if cfg.random_init or not ckpt_sha:
        acc_dense = evaluate(dense, test, cfg.eval_limit, cfg.eval_batch_size, progress)
    else:  # the same dense checkpoint in every run of a sweep: evaluated once, cached
        acc_dense = cached_evaluate(dense, test, ckpt_sha, cfg.eval_limit, cfg.eval_batch_size, progress)
    return acc_dense, evaluate(sliced, test, cfg.eval_limit, cfg.eval_batch_size, progress)


def _slice_diff(sliced: nn.Module, pruned: nn.Module, test: Any, device: Any) -> float:
    """Largest |logit difference| of the sliced and the unsliced pruned model on up to 64 test images."""
    xs, _ = test.batch(torch.arange(min(64, len(test))))
    xs = xs.to(device)
    with torch.inference_mode():
        return float((sliced(xs) - pruned(xs)).abs().max())


def _latency(cfg: VisionRunConfig, dense: nn.Module, sliced: nn.Module, shape: tuple[int, ...], device: Any
             ) -> dict[str, float]:
    """Median ms of the dense and the sliced model on a seeded random batch (``latency_batch``, ``shape``)."""
    xl = torch.randn(cfg.latency_batch, *shape, generator=torch.Generator().manual_seed(cfg.seed)).to(device)
    return measure_latency({"dense": dense, "sliced": sliced}, xl, cfg.latency_repeats)


def _save(cfg: VisionRunConfig, sliced: nn.Module, arch_kwargs: dict[str, Any], kept: dict[str, Any],
          top1: float) -> dict[str, str]:
    """With ``output_dir`` and ``save_model``: the sliced model with its widths manifest; returns the files."""
    from osscar.vision.slicing import save_sliced

    if cfg.output_dir is None or not cfg.save_model:
        return {}
    path = save_sliced(Path(cfg.output_dir) / f"{run_name(cfg)}.pt", sliced, cfg.arch, arch_kwargs, kept,
                       meta={"config": cfg.to_dict(), "top1": top1})
    return {"sliced_model": str(path)}
