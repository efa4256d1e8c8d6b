"""The vision run's configuration: one frozen dataclass whose fields describe their own command-line options.

Importable without torch (``python -m osscar vision --help`` builds its parser from these fields alone); the
checks that need the model libraries import them when a config is constructed.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from osscar.config_cli import option
from osscar.options import DEFAULT_DAMPING, DEFAULT_FMNIST_ROOT, VISION_ARCHS, VISION_DATASETS

PAPER_METHODS = ("mp", "mp+", "chip", "fpgm", "lasso", "thinet", "osscar")  # --method paper


def parse_fractions(text: str) -> list[float]:
    """``0.3,0.5`` → [0.3, 0.5] (at least one number)."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one number, got {text!r}")
    return values


def parse_method_param(text: str) -> tuple[str, Any]:
    """``[METHOD.]KEY=VALUE`` → (``[METHOD.]KEY``, the value as a Python literal, else the string)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected [METHOD.]KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


@dataclass(frozen=True)
class VisionRunConfig:
    """Everything one run depends on; validated on construction, before any work.

    Attributes:
        arch: one of ``ARCHS`` (resnet20, mobilenetv1, resnet50).
        checkpoint: ``"default"`` (the shipped reference ResNet20 on Fashion-MNIST), ``"train"`` (that
            recipe retrained at ``threads`` and cached), a checkpoint path, or
            ``timm:<name>`` / ``torchvision:<WEIGHTS>`` (needs hub access). None only with random_init.
        dataset, data_root: a dataset of ``DATASETS`` and the folder holding its files.
        method: a registered pruning method; method_params: its parameters (dict).
        p_hat, t_hat: OSSCAR's p̂ (groups removed per Stage-A step) and t̂ (groups changed per
            local-search step, swap size t̂/2); None: per-layer defaults (2% / 2·5% of the channels).
        flops_fraction: fraction of the whole network's MACs to remove, in (0, 1).
        n_calib: calibration images (training set, training augmentation), seeded.
        damping: λ, H + λ·mean(diag H)·I (on H only; G = X̃ᵀX_dŴ).
        eval_limit: evaluate on the first N test images (None: the full test set).
        chip_samples: CHIP: calibration images whose maps are scored.
        chip_full_maps: CHIP only: True (what unset resolves to for ``method="chip"``): every spatial
            position of each map, as the paper and the authors' code; False: ``chip_positions``
            positions sampled once with ``seed`` (the behaviour before issue #15). Unset for other methods,
            so their run keys do not change. No flag of its own: the CLI sets it from ``--chip-positions``.
        output_dir: where the metrics JSON and the sliced model go (None: nothing written).
        random_init: random weights (tests only; excludes checkpoint).
        device: where the models, calibration, H and the solvers run (``cpu``, ``cuda``, ``cuda:N``);
            evaluation and latency run there too.

    The CLI (:mod:`osscar.vision.cli`) takes several methods (``--method mp,osscar``) and FLOPs fractions
    (``--flops-fraction 0.3,0.5``) and makes one config per pair.
    """

    arch: str = option("resnet20", section="model", choices=VISION_ARCHS, help="architecture")
    checkpoint: str | None = option(
        "default", section="model",
        help="'default': the reference ResNet20/Fashion-MNIST shipped with the package (sha256-checked; "
             "the same on every machine); 'train': retrain it with the default recipe at --threads "
             "(cached in $OSSCAR_CACHE/vision or ~/.cache/osscar/vision; minutes); a checkpoint path; or a pretrained "
             "name 'timm:resnet50.a1_in1k' / 'timm:mobilenetv1_100.ra4_e3600_r224_in1k' / "
             "'torchvision:IMAGENET1K_V2' (needs hub access)")
    dataset: str = option("fashion-mnist", section="model", choices=VISION_DATASETS,
                          help="dataset (calibration: its training set; evaluation: its test set)")
    data_root: str = option(
        DEFAULT_FMNIST_ROOT, section="model",
        help="dataset folder (fashion-mnist: the IDX .gz files, e.g. from apt-get install "
             "dataset-fashion-mnist; cifar10: torchvision layout; imagenet: train/ and val/ folders)")
    method: str = option("osscar", section="target",
                         help=f"method name(s), comma-separated, or 'paper' for {','.join(PAPER_METHODS)}")
    method_params: dict[str, Any] = option(
        section="target", default_factory=dict, flag="--method-param", parse=parse_method_param, repeat=True,
        cli_default=[], metavar="[METHOD.]KEY=VALUE",
        help="method parameter (Python literal); without METHOD. it applies to every method run")
    p_hat: int | None = option(
        None, section="target",
        help="OSSCAR p̂: groups removed per Stage-A step (default: max(1, round(2%% of the channels)))")
    t_hat: int | None = option(
        None, section="target",
        help="OSSCAR t̂: groups changed per local-search step, swap size t̂/2 "
             "(default: 2·max(1, ceil(5%% of the channels)); 0 disables local search)")
    flops_fraction: float = option(
        0.5, section="target", parse=parse_fractions, cli_default="0.5",
        help="fraction(s) of the whole network's MACs to remove, comma-separated, each in (0,1)")
    n_calib: int = option(1024, section="calibration", help="calibration images (training set, augmented)")
    calib_batch_size: int = option(128, section="calibration", help="calibration batch size")
    seed: int = option(0, section="calibration", help="seed (calibration sample, augmentation, CHIP positions)")
    threads: int = option(1, section="execution", help="torch CPU threads (recorded; latency uses the same)")
    damping: float = option(DEFAULT_DAMPING, section="calibration", help="λ: H + λ·mean(diag H)·I (on H only)")
    eval_limit: int | None = option(None, section="evaluation",
                                    help="evaluate on the first N test images (default: all)")
    eval_batch_size: int = option(500, section="evaluation", help="evaluation batch size")
    chip_samples: int = option(64, section="target", help="CHIP: calibration images whose feature maps are scored")
    chip_positions: int = option(
        256, section="target", cli_default=None,
        help="CHIP: score this many sampled spatial positions per map (default: every position)")
    chip_full_maps: bool | None = None
    latency: bool = option(True, section="evaluation", flag="--no-latency", switch=True,
                           help="skip the dense-vs-sliced CPU latency measurement")
    latency_batch: int = option(64, section="evaluation", help="latency batch size")
    latency_repeats: int = option(20, section="evaluation", help="timed repeats (median reported), after 3 warm-ups")
    output_dir: str | None = option(None, section="output",
                                    help="write metrics JSON (+ sliced model) per run and summary.json here")
    save_model: bool = option(True, section="output", flag="--no-save-model", switch=True,
                              help="with --output-dir: do not save the sliced models")
    random_init: bool = option(False, section="model", switch=True,
                               help="random weights instead of a checkpoint (tests only)")
    device: str = option("cpu", section="execution",
                         help="cpu, cuda or cuda:N: models, calibration, H, solvers, eval, latency")

    def __post_init__(self) -> None:
        from osscar.devices import check_device_name

        check_device_name(self.device, "device")  # availability: where the run executes
        if self.arch not in VISION_ARCHS:
            raise ValueError(f"arch: unknown architecture {self.arch!r}; allowed: {', '.join(VISION_ARCHS)}")
        if self.dataset not in VISION_DATASETS:
            raise ValueError(f"dataset: unknown dataset {self.dataset!r}; allowed: {', '.join(VISION_DATASETS)}")
        self._check_method()
        f = self.flops_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not (0 < f < 1):
            raise ValueError(f"flops_fraction must be in (0, 1), got {f!r}")
        self._check_counts()
        self._check_chip()
        if not (isinstance(self.damping, (int, float)) and math.isfinite(self.damping) and self.damping >= 0):
            raise ValueError(f"damping must be a finite number ≥ 0, got {self.damping!r}")
        if self.eval_limit is not None and (not isinstance(self.eval_limit, int) or self.eval_limit < 1):
            raise ValueError(f"eval_limit must be None or an integer ≥ 1, got {self.eval_limit!r}")
        self._check_weights_named()
        from osscar.vision.data import check_dataset_root

        check_dataset_root(self.dataset, self.data_root)

    def _check_method(self) -> None:
        """A registered method, a dict of parameters it accepts, p̂/t̂ only for the OSSCAR variants."""
        from osscar.methods import available_methods, make_method
        from osscar.variants import OSSCAR_VARIANTS, osscar_parameters

        methods = available_methods()
        if self.method not in methods:
            raise ValueError(f"method: unknown method {self.method!r}; allowed: {', '.join(methods)}")
        if not isinstance(self.method_params, dict):
            raise ValueError(f"method_params must be a dict, got {type(self.method_params).__name__}")
        object.__setattr__(self, "method_params", dict(self.method_params))
        for name in ("p_hat", "t_hat"):
            v = getattr(self, name)
            if v is not None:
                if name not in osscar_parameters(self.method):
                    takers = [m for m in OSSCAR_VARIANTS if name in osscar_parameters(m)]
                    raise ValueError(f"{name} is an OSSCAR parameter (of {', '.join(takers)}); method is {self.method!r}")
                if not isinstance(v, int) or isinstance(v, bool) or v < (1 if name == "p_hat" else 0):
                    raise ValueError(f"{name} must be an integer ≥ {1 if name == 'p_hat' else 0}, got {v!r}")
        make_method(self.method, **self.all_method_params())  # unknown/invalid parameters fail now

    def _check_counts(self) -> None:
        for name in ("n_calib", "calib_batch_size", "threads", "eval_batch_size", "latency_batch", "latency_repeats"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an integer ≥ 1, got {v!r}")
        for name in ("chip_samples", "seed"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be an integer ≥ 0, got {v!r}")

    def _check_chip(self) -> None:
        v = self.chip_positions
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"chip_positions must be an integer ≥ 1, got {v!r}")
        if self.chip_full_maps not in (None, True, False):
            raise ValueError(f"chip_full_maps must be true, false or unset, got {self.chip_full_maps!r}")
        if self.method == "chip":
            if self.chip_samples < 1:
                raise ValueError("chip needs chip_samples ≥ 1")
            if self.chip_full_maps is None:  # CHIP's default: every position of each map
                object.__setattr__(self, "chip_full_maps", True)
        elif self.chip_full_maps is not None:
            raise ValueError(f"chip_full_maps is a CHIP setting; method is {self.method!r} (leave it unset)")

    def _check_weights_named(self) -> None:
        """Weights named consistently (the file itself is read by :func:`osscar.vision.pipeline.check_weights`)."""
        from osscar.vision.models import is_pretrained_name

        if self.random_init and self.checkpoint is not None:
            raise ValueError("random_init=True excludes a checkpoint: pass checkpoint=None")
        if self.random_init:
            return
        if self.checkpoint is None:
            raise ValueError("checkpoint: no weights given; use 'default', a path or a timm:/torchvision: "
                             "name (random weights only with random_init=True, for tests)")
        if self.checkpoint in ("default", "train"):
            if self.arch != "resnet20" or self.dataset != "fashion-mnist":
                raise ValueError(f"checkpoint={self.checkpoint!r} is the embedded ResNet20 on Fashion-MNIST; for "
                                 f"arch={self.arch!r}/dataset={self.dataset!r} pass a checkpoint path or name")
        elif not is_pretrained_name(self.checkpoint) and not Path(self.checkpoint).is_file():
            raise FileNotFoundError(f"checkpoint: file not found: {self.checkpoint}")

    def all_method_params(self) -> dict[str, Any]:
        params = dict(self.method_params)
        if self.p_hat is not None:
            params["p_hat"] = self.p_hat
        if self.t_hat is not None:
            params["t_hat"] = self.t_hat
        return params

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
