"""The embedded default model: ResNet20 on real Fashion-MNIST.

``reference_checkpoint()`` is the default everywhere: the checkpoint shipped in
``osscar/vision/assets/`` (trained once with :class:`TrainConfig` at 2 threads, about 1 MB),
checked against :data:`REFERENCE_SHA256` on every use, so every machine prunes the same weights.

``default_checkpoint(cfg)`` retrains the recipe on request (``--checkpoint train``, ``--prepare``)
and caches it under ``$OSSCAR_CACHE/vision`` (else ``~/.cache/osscar/vision``); the file name
carries a hash of everything that changes the weights, the thread count included: training is
deterministic for a seed on one machine, torch build and thread count (one explicit generator
drives shuffling and augmentation, loading is in-process), but not across thread counts or
machines (float summation order), so a retrained model is not the reference one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from osscar.devices import device_label, model_device, torch_threads
from osscar.io import atomic_write_json
from osscar.vision.data import DEFAULT_FMNIST_ROOT, ImageSet, dataset_meta, load_split
from osscar.vision.models import ResNet20, load_checkpoint_file, save_checkpoint, sha256_file


def cache_dir() -> Path:
    base = os.environ.get("OSSCAR_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "osscar") / "vision"


@dataclass(frozen=True)
class TrainConfig:
    """Recipe of the embedded default (SGD + Nesterov, one-cycle LR, crop/flip augmentation)."""

    dataset: str = "fashion-mnist"
    root: str = DEFAULT_FMNIST_ROOT
    seed: int = 0
    epochs: int = 2
    batch_size: int = 128
    lr: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    threads: int = 1
    train_limit: int | None = None  # use only the first N (shuffled) training images — tests only
    shortcut: str = "A"

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.threads < 1:
            raise ValueError("epochs, batch_size and threads must be ≥ 1")
        if self.train_limit is not None and self.train_limit < self.batch_size:
            raise ValueError(f"train_limit must be ≥ batch_size={self.batch_size}, got {self.train_limit}")

    def key(self) -> str:
        d = dataclasses.asdict(self)
        d.pop("root")  # the data's identity is recorded by hash in the checkpoint, not its location
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def evaluate(model: nn.Module, data: ImageSet, limit: int | None = None, batch_size: int = 500,
             progress: bool = False) -> dict[str, float]:
    """Top-1 accuracy of ``model`` on the first ``limit`` images of ``data`` (all when None)."""
    from tqdm.auto import tqdm

    n = len(data) if limit is None else min(limit, len(data))
    model.eval()
    device = model_device(model)
    correct = 0
    with torch.inference_mode():
        for start in tqdm(range(0, n, batch_size), desc="eval", disable=not progress, leave=False):
            idx = torch.arange(start, min(start + batch_size, n))
            x, y = data.batch(idx)
            correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
    return {"top1": correct / n, "n": n}


def cached_evaluate(model: nn.Module, data: ImageSet, checkpoint_sha256: str, limit: int | None = None,
                    batch_size: int = 500, progress: bool = False, use_cache: bool = True) -> dict[str, Any]:
    """:func:`evaluate` of an unmodified checkpoint, cached: every run of a sweep evaluates the same dense model.

    Key: (checkpoint sha256, sha256 of the in-memory split's images and labels, limit, torch version,
    threads); entries are JSON under ``cache_dir()``. Folder-backed splits (ImageNet) are not
    hashed, so they are always evaluated. Returns evaluate's dict plus ``cached`` (bool).
    """
    if not isinstance(checkpoint_sha256, str) or not checkpoint_sha256:
        raise ValueError(f"checkpoint_sha256 must be a non-empty string, got {checkpoint_sha256!r}")
    if data.images is None or data.labels is None or not use_cache:
        return {**evaluate(model, data, limit, batch_size, progress), "cached": False}
    h = hashlib.sha256()
    for t in (data.images, data.labels):
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.contiguous().numpy().tobytes())
    key = {"checkpoint_sha256": checkpoint_sha256, "data_sha256": h.hexdigest(), "dataset": data.name,
           "split": data.split, "limit": limit, "torch": str(torch.__version__), "threads": torch.get_num_threads(),
           "device": device_label(model_device(model))}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = cache_dir() / f"eval-{digest}.json"
    if path.is_file():
        try:
            d = json.loads(path.read_text())
            if d.get("key") == key:
                return {**d["result"], "cached": True}
        except (ValueError, KeyError):
            pass  # a corrupt entry is re-measured and overwritten
    result = evaluate(model, data, limit, batch_size, progress)
    atomic_write_json(path, {"key": key, "result": result})
    return {**result, "cached": False}


def train_resnet20(cfg: TrainConfig, progress: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """Train ResNet20 on ``cfg.dataset``; returns (model in eval mode, training record)."""
    with torch_threads(cfg.threads):
        return _train_resnet20(cfg, progress)


def _train_resnet20(cfg: TrainConfig, progress: bool) -> tuple[nn.Module, dict[str, Any]]:
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    train = load_split(cfg.dataset, cfg.root, "train")
    test = load_split(cfg.dataset, cfg.root, "test")
    meta = dataset_meta(cfg.dataset)
    model = ResNet20(num_classes=meta["num_classes"], in_channels=meta["in_channels"], shortcut=cfg.shortcut)
    model = model.to(memory_format=torch.channels_last)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0}],
                          lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    n_train = len(train) if cfg.train_limit is None else min(cfg.train_limit, len(train))
    steps_per_epoch = n_train // cfg.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch,
                                                pct_start=0.25)
    subset = torch.randperm(len(train), generator=gen)[:n_train]
    start = time.perf_counter()
    bar = tqdm(total=cfg.epochs * steps_per_epoch, desc="train resnet20", disable=not progress)
    for epoch in range(cfg.epochs):
        model.train()
        order = subset[torch.randperm(n_train, generator=gen)]
        for step in range(steps_per_epoch):
            x, y = train.batch(order[step * cfg.batch_size:(step + 1) * cfg.batch_size], augment=True, generator=gen)
            loss = F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{float(loss.detach()):.3f}")
            if not math.isfinite(float(loss.detach())):
                raise RuntimeError(f"training diverged at epoch {epoch + 1} step {step}")
    bar.close()
    train_seconds = time.perf_counter() - start
    model = model.to(memory_format=torch.contiguous_format).eval()
    acc = evaluate(model, test, progress=progress)
    record = {
        "train_config": dataclasses.asdict(cfg),
        "train_seconds": train_seconds,
        "test_top1": acc["top1"],
        "test_n": acc["n"],
        "dataset_sha256": {"train_images": _first_file_sha(cfg, "train")},
        "torch": str(torch.__version__),
        "platform": platform.platform(),
    }
    return model, record


def _first_file_sha(cfg: TrainConfig, split: str) -> str | None:
    if cfg.dataset != "fashion-mnist":
        return None
    from osscar.vision.data import FMNIST_FILES, find_fmnist_file

    return sha256_file(find_fmnist_file(Path(cfg.root), FMNIST_FILES[split][0]))


ASSETS = Path(__file__).resolve().parent / "assets"
REFERENCE_CHECKPOINT = ASSETS / "resnet20_fashion-mnist.pt"
REFERENCE_SHA256 = "830525f062f9562528dd4e1c09287b3aeb14b9b4a42efec7be401ced97af9693"


def reference_checkpoint() -> Path:
    """The shipped reference ResNet20/Fashion-MNIST; ValueError when it is missing or not the reference bytes."""
    from osscar.io import sha256_file

    if not REFERENCE_CHECKPOINT.is_file():
        raise ValueError(f"the reference checkpoint {REFERENCE_CHECKPOINT} is missing (reinstall the package, or "
                         "use --checkpoint train to retrain the recipe)")
    digest = sha256_file(REFERENCE_CHECKPOINT)
    if digest != REFERENCE_SHA256:
        raise ValueError(f"the reference checkpoint {REFERENCE_CHECKPOINT} has sha256 {digest}, expected "
                         f"{REFERENCE_SHA256}: the file is corrupt or was replaced (git checkout it, or reinstall)")
    return REFERENCE_CHECKPOINT


def training_estimate(cfg: TrainConfig) -> str:
    """A rough duration of :func:`train_resnet20` (measured on a 2-core AMD EPYC: ~2.5 min at 2 threads)."""
    n = 60000 if cfg.train_limit is None else cfg.train_limit
    minutes = 2.5 * cfg.epochs / 2 * n / 60000 * (2 / min(cfg.threads, 2))
    return f"about {max(1, round(minutes))} min on a 2-core CPU at {cfg.threads} thread(s), more on a busy machine"


def default_checkpoint_path(cfg: TrainConfig = TrainConfig()) -> Path:
    return cache_dir() / f"resnet20_{cfg.dataset}_{cfg.key()}.pt"


def default_checkpoint(cfg: TrainConfig = TrainConfig(), progress: bool = True, retrain: bool = False) -> Path:
    """Path of the cached default ResNet20 for ``cfg``; trains and caches it when missing."""
    path = default_checkpoint_path(cfg)
    if path.is_file() and not retrain:
        return path
    if progress:
        print(f"training ResNet20 on {cfg.dataset} with the default recipe ({cfg.epochs} epochs, seed {cfg.seed}, "
              f"{cfg.threads} thread(s)): {training_estimate(cfg)}; cached at {path} "
              "(prepare it ahead with `python -m osscar vision --prepare`)", flush=True)
    model, record = train_resnet20(cfg, progress=progress)
    meta = dataset_meta(cfg.dataset)
    save_checkpoint(path, model, "resnet20",
                    {"num_classes": meta["num_classes"], "in_channels": meta["in_channels"], "shortcut": cfg.shortcut},
                    meta={"dataset": cfg.dataset, **record})
    if progress:
        print(f"cached {path}: test top-1 {record['test_top1']:.4f} after {record['train_seconds']:.0f}s of training")
    return path


def load_checkpoint_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The ``meta`` record stored in an osscar-vision checkpoint."""
    return dict(load_checkpoint_file(path).get("meta", {}))
