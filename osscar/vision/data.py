"""Image datasets for the vision pipeline, read from local files only (no downloads).

* ``fashion-mnist`` — the original gzipped IDX files (Debian package ``dataset-fashion-mnist`` puts
  them in ``/usr/share/datasets/fashion-mnist/``; torchvision's ``FashionMNIST/raw`` folder works
  too). Held in memory as uint8; 28×28 grayscale, 10 classes.
* ``cifar10`` — torchvision's ``CIFAR10`` folder layout (``cifar-10-batches-py`` under root).
* ``imagenet`` — ``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG`` (ImageFolder).

Training augmentation everywhere: random crop with padding (CIFAR-style) or random-resized crop
(ImageNet) plus horizontal flip. All randomness takes an explicit ``torch.Generator``.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from osscar.options import DEFAULT_FMNIST_ROOT, FMNIST_INSTALL
from osscar.options import VISION_DATASETS as DATASETS


FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# per-dataset normalisation (Fashion-MNIST statistics of the training set; CIFAR/ImageNet usual values)
NORMALIZE = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def check_idx_header(path: Path) -> None:
    """ValueError unless ``path`` (gzipped or not) starts like an unsigned-byte IDX file (magic 0x0000 0x08)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
    except (OSError, EOFError) as exc:
        raise ValueError(f"{path.name} is unreadable ({type(exc).__name__}: {exc})") from exc
    if len(head) < 4 or head[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path.name} is not an unsigned-byte IDX file (it starts with {head!r})")


def read_idx(path: str | Path) -> Tensor:
    """Read a (gzipped) IDX file into a uint8 tensor."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4: 4 + 4 * ndim])
    t = torch.frombuffer(bytearray(data[4 + 4 * ndim:]), dtype=torch.uint8)
    if t.numel() != int(torch.tensor(shape).prod()):
        raise ValueError(f"{path}: truncated IDX file")
    return t.reshape(shape)


class DatasetMissingError(FileNotFoundError, ValueError):
    """A dataset folder or file is missing. A FileNotFoundError, and a ValueError so that config
    validation (the CLIs, sweep files) reports it in one line as bad input."""


def _install_hint(dataset: str) -> str:
    """How to get ``dataset``'s files, for error messages."""
    if dataset == "fashion-mnist":
        return f"; Fashion-MNIST comes from Debian: {FMNIST_INSTALL} (as root; files in {DEFAULT_FMNIST_ROOT})"
    return ""


def find_fmnist_file(root: Path, name: str) -> Path:
    """The IDX file ``name`` under ``root`` (also in raw/ and FashionMNIST/raw/, gzipped or not)."""
    for cand in (root / name, root / "raw" / name, root / "FashionMNIST" / "raw" / name,
                 root / name.removesuffix(".gz"), root / "raw" / name.removesuffix(".gz"),
                 root / "FashionMNIST" / "raw" / name.removesuffix(".gz")):
        if cand.is_file():
            return cand
    raise DatasetMissingError(f"data_root={root}: Fashion-MNIST file {name} not found (also looked in raw/ and "
                              f"FashionMNIST/raw/){_install_hint('fashion-mnist')}")


def check_dataset_root(dataset: str, root: str | Path) -> None:
    """Raise :class:`DatasetMissingError` (or ValueError) unless ``root`` holds ``dataset`` — before any work."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; allowed: {', '.join(DATASETS)}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetMissingError(f"data_root={root} does not exist{_install_hint(dataset)}")
    if dataset == "fashion-mnist":
        for files in FMNIST_FILES.values():
            for name in files:
                path = find_fmnist_file(root, name)
                try:
                    check_idx_header(path)
                except ValueError as exc:
                    raise ValueError(f"data_root={root}: {exc}") from None
    elif dataset == "cifar10":
        if not (root / "cifar-10-batches-py").is_dir():
            raise DatasetMissingError(f"data_root={root}: cifar-10-batches-py/ not found (torchvision CIFAR10 layout)")
    elif dataset == "imagenet":
        for split in ("train", "val"):
            if not (root / split).is_dir():
                raise DatasetMissingError(f"data_root={root}: {split}/ not found (ImageFolder layout "
                                          "root/{train,val}/<class>/)")


@dataclass
class ImageSet:
    """A split in memory: ``images`` uint8 (N, C, H, W), ``labels`` long (N,); or a lazy folder."""

    name: str
    split: str
    images: Tensor | None
    labels: Tensor | None
    folder: object | None = None  # torchvision dataset for ImageNet-size data

    def __len__(self) -> int:
        return len(self.labels) if self.labels is not None else len(self.folder)  # type: ignore[arg-type]

    @property
    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return NORMALIZE[self.name]

    def normalize(self, x: Tensor) -> Tensor:
        """uint8 or [0,1] float (B, C, H, W) -> normalised float32."""
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        mean, std = (torch.tensor(v, dtype=x.dtype).view(1, -1, 1, 1) for v in self.mean_std)
        return (x - mean) / std

    def batch(self, idx: Tensor, augment: bool = False, generator: torch.Generator | None = None,
              pad: int | None = None) -> tuple[Tensor, Tensor]:
        """Normalised images and labels at ``idx``; with ``augment``, crop-with-padding + flip."""
        if self.images is not None:
            x = self.images[idx]
            if augment:
                x = random_crop_flip(x, pad if pad is not None else (2 if self.name == "fashion-mnist" else 4),
                                     generator)
            return self.normalize(x), self.labels[idx]  # type: ignore[index]
        return self._folder_batch(idx, augment, generator)

    def _folder_batch(self, idx: Tensor, augment: bool, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        import torchvision.transforms.v2 as T

        if augment:
            tf = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToImage(),
                            T.ToDtype(torch.float32, scale=True)])
        else:
            tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToImage(), T.ToDtype(torch.float32, scale=True)])
        xs, ys = [], []
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) if generator is not None else None
        with torch.random.fork_rng(enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            for i in idx.tolist():
                img, y = self.folder.samples[i]  # type: ignore[union-attr]
                xs.append(tf(self.folder.loader(img)))  # type: ignore[union-attr]
                ys.append(y)
        return self.normalize(torch.stack(xs)), torch.tensor(ys)


def random_crop_flip(x: Tensor, pad: int, generator: torch.Generator | None) -> Tensor:
    """Per-image random crop of a zero-padded batch plus random horizontal flip. x: (B, C, H, W)."""
    B, _, H, W = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (B,), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (B,), generator=generator)
    flip = torch.rand(B, generator=generator) < 0.5
    rows = (oy[:, None] + torch.arange(H)[None, :])  # (B, H)
    cols = (ox[:, None] + torch.arange(W)[None, :])  # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    b = torch.arange(B)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def load_split(dataset: str, root: str | Path, split: str) -> ImageSet:
    """Load ``split`` ('train' or 'test') of ``dataset`` from ``root``."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    check_dataset_root(dataset, root)
    root = Path(root)
    if dataset == "fashion-mnist":
        img_name, lbl_name = FMNIST_FILES[split]
        images = read_idx(find_fmnist_file(root, img_name))[:, None]
        labels = read_idx(find_fmnist_file(root, lbl_name)).long()
        if len(images) != len(labels):
            raise ValueError(f"{root}: {len(images)} images but {len(labels)} labels")
        return ImageSet(dataset, split, images, labels)
    if dataset == "cifar10":
        import numpy as np
        import torchvision

        ds = torchvision.datasets.CIFAR10(str(root), train=split == "train", download=False)
        images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        return ImageSet(dataset, split, images, torch.tensor(ds.targets))
    import torchvision

    folder = torchvision.datasets.ImageFolder(str(root / ("train" if split == "train" else "val")))
    return ImageSet(dataset, split, None, None, folder)


def dataset_meta(dataset: str) -> dict[str, int]:
    return {"fashion-mnist": {"in_channels": 1, "num_classes": 10},
            "cifar10": {"in_channels": 3, "num_classes": 10},
            "imagenet": {"in_channels": 3, "num_classes": 1000}}[dataset]
