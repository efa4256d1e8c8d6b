"""CNN definitions and loaders: ResNet20 (CIFAR-style), MobileNetV1, ResNet50.

Weights come from exactly one explicit source (:func:`load_model`):

* a checkpoint path (this package's format, see :func:`save_checkpoint`, or a plain ``state_dict``);
* a named pretrained source for users with hub access: ``timm:<name>`` (e.g. ``timm:resnet50.a1_in1k``,
  ``timm:mobilenetv1_100.ra4_e3600_r224_in1k``) or ``torchvision:<WEIGHTS>`` (e.g.
  ``torchvision:IMAGENET1K_V2`` for ResNet50). Offline they fail with a :class:`WeightsUnavailableError`;
* ``random_init=True`` — explicit, for tests only. A model without weights is otherwise an error.

Module names follow timm / torchvision so that their state dicts load directly: ResNet20 blocks are
``layer{1,2,3}.{0,1,2}`` with ``conv1/bn1/conv2/bn2``; MobileNetV1 is ``conv_stem``, ``bn1``,
``blocks.{0..12}`` with ``conv_dw/bn1/conv_pw/bn2``, ``classifier``; ResNet50 is torchvision's.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from osscar.io import sha256_file  # noqa: F401  (also used by osscar.vision.train)
from osscar.options import VISION_ARCHS as ARCHS


class WeightsUnavailableError(RuntimeError):
    """Named pretrained weights could not be obtained (no hub access, unknown name, ...)."""


# ---------------------------------------------------------------------------------------------
# ResNet20 (He et al. 2016, CIFAR variant): 3 stages x 3 basic blocks, widths 16/32/64
# ---------------------------------------------------------------------------------------------
class LambdaShortcut(nn.Module):
    """Option-A shortcut: subsample spatially by ``stride`` and zero-pad the channels (no weights)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride, self.pad = stride, planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        lo = self.pad // 2
        return F.pad(x, (0, 0, 0, 0, lo, self.pad - lo))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride == 1 and in_planes == planes:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "A":
            self.shortcut = LambdaShortcut(in_planes, planes, stride)
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR-style ResNet20. Works for any input size ≥ 8 (28×28 grayscale, 32×32 RGB, ...)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, shortcut: str = "A",
                 widths: tuple[int, int, int] = (16, 32, 64), blocks: int = 3) -> None:
        super().__init__()
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' (pad/subsample) or 'B' (1x1 projection), got {shortcut!r}")
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        for i, w in enumerate(widths):
            layers = []
            for j in range(blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(BasicBlock(in_planes, w, stride, shortcut))
                in_planes = w
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ---------------------------------------------------------------------------------------------
# MobileNetV1 (Howard et al. 2017): stem + 13 depthwise-separable blocks
# ---------------------------------------------------------------------------------------------
MBV1_CFG = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
            (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


class DepthwiseSeparable(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(in_ch, in_ch, 3, stride, 1, groups=in_ch, bias=False)
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv_pw = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv_dw(x)))
        return self.act(self.bn2(self.conv_pw(x)))


class MobileNetV1(nn.Module):
    """MobileNetV1, width multiplier 1.0 (module names as timm's ``mobilenetv1_100``, blocks flattened)."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, act: str = "relu", stem_stride: int = 2) -> None:
        super().__init__()
        acts = {"relu": nn.ReLU, "relu6": nn.ReLU6}
        if act not in acts:
            raise ValueError(f"act must be one of {sorted(acts)}, got {act!r}")
        self.conv_stem = nn.Conv2d(in_channels, 32, 3, stem_stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.act = acts[act]()
        blocks, c = [], 32
        for out_ch, stride in MBV1_CFG:
            blocks.append(DepthwiseSeparable(c, out_ch, stride, acts[act]))
            c = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.act(self.bn1(self.conv_stem(x))))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet50(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    import torchvision

    m = torchvision.models.resnet50(weights=None, num_classes=num_classes)
    if in_channels != 3:
        m.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return m


def build_model(arch: str, **kwargs: Any) -> nn.Module:
    """An architecture with freshly initialised (random) weights; pair it with weights."""
    if arch == "resnet20":
        return ResNet20(**kwargs)
    if arch == "mobilenetv1":
        return MobileNetV1(**kwargs)
    if arch == "resnet50":
        return resnet50(**kwargs)
    raise ValueError(f"unknown architecture {arch!r}; allowed: {', '.join(ARCHS)}")


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------
def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: str | os.PathLike, model: nn.Module, arch: str, arch_kwargs: dict[str, Any],
                    meta: dict[str, Any] | None = None) -> None:
    """Write ``{"format": "osscar-vision-v1", arch, arch_kwargs, state_dict, meta}`` atomically."""
    atomic_torch_save({"format": "osscar-vision-v1", "arch": arch, "arch_kwargs": dict(arch_kwargs),
                       "state_dict": model.state_dict(), "meta": dict(meta or {})}, path)


def load_checkpoint_file(path: str | os.PathLike) -> dict[str, Any]:
    """``{"format", "state_dict", "meta", ...}`` of a checkpoint file; FileNotFoundError when it is missing,
    ValueError when it is not a torch checkpoint (a text file, a truncated file) or holds no state_dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (pickle/zip errors of a file that is not a torch checkpoint)
        raise ValueError(f"checkpoint {path}: not a file torch.load reads with weights_only=True "
                         f"({type(exc).__name__}: {' '.join(str(exc).split())[:120]})") from exc
    if isinstance(obj, dict) and obj.get("format") == "osscar-vision-v1":
        return obj
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"format": "state_dict", "state_dict": obj, "meta": {}}
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        sd = {k.removeprefix("module."): v for k, v in obj["state_dict"].items()}
        return {"format": "state_dict", "state_dict": sd, "meta": {}}
    raise ValueError(f"{path}: not an osscar-vision checkpoint nor a state_dict")


def _timm_mbv1_to_flat(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's ``blocks.{stage}.{i}.`` keys -> this module's flat ``blocks.{j}.``."""
    stages = sorted({tuple(int(x) for x in k.split(".")[1:3]) for k in sd if k.startswith("blocks.")})
    flat = {s: j for j, s in enumerate(stages)}
    out = {}
    for k, v in sd.items():
        if k.startswith("blocks."):
            parts = k.split(".")
            k = ".".join(["blocks", str(flat[(int(parts[1]), int(parts[2]))])] + parts[3:])
        out[k] = v
    return out


def load_pretrained(arch: str, source: str, num_classes: int = 1000) -> tuple[nn.Module, dict[str, Any]]:
    """Named pretrained weights (needs hub access): ``timm:<name>`` or ``torchvision:<WEIGHTS>``."""
    kind, _, name = source.partition(":")
    try:
        if kind == "timm":
            import timm

            ref = timm.create_model(name, pretrained=True)
            sd = ref.state_dict()
            if arch == "mobilenetv1":
                model = MobileNetV1(num_classes=ref.num_classes, act="relu6")
                sd = _timm_mbv1_to_flat(sd)
            else:
                model = build_model(arch, num_classes=ref.num_classes)
            model.load_state_dict(sd, strict=True)
            cfg = dict(ref.pretrained_cfg)
            meta = {"source": source, "mean": list(cfg.get("mean", ())), "std": list(cfg.get("std", ())),
                    "input_size": list(cfg.get("input_size", ()))}
            return model, meta
        if kind == "torchvision":
            import torchvision

            if arch != "resnet50":
                raise WeightsUnavailableError(f"torchvision has no pretrained {arch}; use timm: or a checkpoint path")
            weights = torchvision.models.ResNet50_Weights[name]
            model = torchvision.models.resnet50(weights=weights)
            return model, {"source": source, "mean": list(weights.transforms().mean),
                           "std": list(weights.transforms().std)}
    except WeightsUnavailableError:
        raise
    except Exception as exc:  # network, unknown names, shape mismatches
        raise WeightsUnavailableError(
            f"could not load pretrained weights {source!r} for {arch}: {type(exc).__name__}: {exc}. "
            "Named weights need hub access; offline, pass a checkpoint path (--checkpoint PATH)."
        ) from exc
    raise ValueError(f"pretrained source must be 'timm:<name>' or 'torchvision:<WEIGHTS>', got {source!r}")


def is_pretrained_name(source: str) -> bool:
    return isinstance(source, str) and source.split(":", 1)[0] in ("timm", "torchvision") and ":" in source


def load_model(arch: str, checkpoint: str | os.PathLike | None = None, *, random_init: bool = False,
               **arch_kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Build ``arch`` and load its weights. Returns (model in eval mode, provenance dict).

    Exactly one of ``checkpoint`` (path or ``timm:``/``torchvision:`` name) and ``random_init``.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; allowed: {', '.join(ARCHS)}")
    if checkpoint is None and not random_init:
        raise ValueError(f"no weights for {arch}: pass a checkpoint (path or timm:/torchvision: name); "
                         "random weights only with random_init=True (tests)")
    if checkpoint is not None and random_init:
        raise ValueError("pass either a checkpoint or random_init=True, not both")
    if random_init:
        model = build_model(arch, **arch_kwargs)
        return model.eval(), {"source": "random_init", "arch_kwargs": arch_kwargs}
    if is_pretrained_name(str(checkpoint)):
        model, meta = load_pretrained(arch, str(checkpoint))
        return model.eval(), meta
    ck = load_checkpoint_file(checkpoint)
    if ck["format"] == "osscar-vision-v1":
        if ck["arch"] != arch:
            raise ValueError(f"checkpoint {checkpoint} holds a {ck['arch']!r}, not a {arch!r}")
        kwargs = {**ck["arch_kwargs"], **arch_kwargs}
    else:
        kwargs = dict(arch_kwargs)
    model = build_model(arch, **kwargs)
    sd = ck["state_dict"]
    if arch == "mobilenetv1" and any(k.count(".") >= 3 and k.startswith("blocks.") and k.split(".")[2].isdigit() for k in sd):
        sd = _timm_mbv1_to_flat(sd)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {checkpoint} does not match {arch} {kwargs}: {exc}") from exc
    meta = {"source": str(checkpoint), "sha256": sha256_file(checkpoint), "arch_kwargs": kwargs, **ck.get("meta", {})}
    return model.eval(), meta
