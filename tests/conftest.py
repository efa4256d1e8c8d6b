"""Shared fixtures: small random layer problems and an exhaustive reference solver."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from osscar.allocation import LayerChoices
from osscar.problem import LayerProblem


def random_problem(seed: int, n_groups: int, group_size: int, k: int, m: int = 5, n: int | None = None,
                   correlated: bool = True, damping: float = 0.01) -> LayerProblem:
    """A layer problem from random calibration inputs X: (n, p) with correlated features."""
    g = torch.Generator().manual_seed(seed)
    p = n_groups * group_size
    n = n or 3 * p
    X = torch.randn(n, p, generator=g, dtype=torch.float64)
    if correlated:  # mix features so that groups interact, as real activations do
        X = X @ (torch.eye(p, dtype=torch.float64) + 0.5 * torch.randn(p, p, generator=g, dtype=torch.float64) / p**0.5)
    W = torch.randn(p, m, generator=g, dtype=torch.float64)
    return LayerProblem.from_calibration(X.T @ X, W, group_size, k, damping=damping)


def allocation_instance(seed: int, n_layers: int = 5, n_options: int = 4) -> tuple[list[LayerChoices], float]:
    """Allocation layers with level 0 (removed, cost 0) and costlier, more accurate levels; integer costs, so the
    budget (between the cheapest and the dearest total) lies on the DP's grid. Returns (layers, budget)."""
    rng = np.random.default_rng(seed)
    layers = []
    for i in range(n_layers):
        cost = np.concatenate([[0.0], np.sort(rng.choice(np.arange(1, 12), size=n_options - 1, replace=False))])
        error = np.concatenate([np.sort(rng.uniform(0, 3, size=n_options - 1))[::-1], [0.0]])
        layers.append(LayerChoices(f"block{i}", tuple(range(0, 2 * n_options, 2)), cost, error))
    limit = float(round(0.45 * sum(c.cost.max() for c in layers)))
    return layers, limit


def brute_force(problem: LayerProblem) -> tuple[float, tuple[int, ...]]:
    """Exact optimum over all supports of size k: min over S of −½ tr(G_Sᵀ H_SS⁻¹ G_S)."""
    best, best_s = float("inf"), ()
    supports = list(itertools.combinations(range(problem.n_groups), problem.k))
    rows = torch.stack([problem.rows_of(torch.tensor(S, dtype=torch.long)) for S in supports]) if problem.k else None
    if rows is None:
        return 0.0, ()
    Hs = problem.H[rows[:, :, None], rows[:, None, :]]  # (N, r, r)
    Gs = problem.G[rows]  # (N, r, m)
    vals = -0.5 * (Gs * torch.cholesky_solve(Gs, torch.linalg.cholesky(Hs))).sum(dim=(1, 2))
    i = int(torch.argmin(vals))
    best, best_s = float(vals[i]), supports[i]
    return best, best_s


@pytest.fixture
def make_problem():
    return random_problem


def write_fake_fmnist(root, n: int = 4):
    """Four tiny gzipped IDX files in Fashion-MNIST's layout under ``root`` (n random 28×28 images per
    split): what validation looks for, without the Debian package. Returns ``root``."""
    import gzip
    import struct
    from pathlib import Path

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for prefix in ("train", "t10k"):
        images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, 10, (n,), dtype=torch.uint8, generator=g)
        for kind, t in (("images-idx3", images), ("labels-idx1", labels)):
            head = struct.pack(">HBB", 0, 0x08, t.ndim) + struct.pack(">" + "I" * t.ndim, *t.shape)
            (root / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(head + t.numpy().tobytes()))
    return root


@pytest.fixture
def fake_fmnist(tmp_path):
    """A folder with tiny Fashion-MNIST-layout files (see :func:`write_fake_fmnist`)."""
    return write_fake_fmnist(tmp_path / "fashion-mnist")


@pytest.fixture
def check_new_option(capsys):
    """``check(parser_for, config_from_args, pipeline, base, base_argv)``: adding one field with option metadata to
    ``base`` (a run config) gives its flag, help, choices, value, sweep key and flag name in errors, with no other
    edit; ``parser_for(cls)`` builds the CLI's parser, ``config_from_args(args, cls)`` one config."""
    return lambda *args: _check_new_option(*args, capsys=capsys)


def _check_new_option(parser_for, configs_from_args, pipeline: str, base: type, base_argv: list[str], capsys) -> None:
    import dataclasses

    from benchmarks.pipelines import get_pipeline
    from osscar.config_cli import option
    from osscar.options import as_flags, parser_flags

    Extended = dataclasses.make_dataclass(
        "Extended", [("knob", str, option("low", section="calibration", choices=("low", "high"),
                                          help="a knob no code knows about"))],
        bases=(base,), frozen=True)
    parser = parser_for(Extended)
    calibration = parser.format_help().split("\ncalibration:\n")[1].split("\nevaluation:\n")[0]
    assert "--knob {low,high}" in calibration and "a knob no code knows about (default: low)" in " ".join(calibration.split())
    config = configs_from_args(parser.parse_args([*base_argv, "--knob", "high"]), Extended)
    assert config.knob == "high"
    assert get_pipeline(pipeline).key_config(dataclasses.asdict(config))["knob"] == "high"
    assert as_flags("knob must be low", parser_flags(parser)) == "--knob must be low"
    with pytest.raises(SystemExit):
        parser.parse_args(["--knob", "medium"])
    assert "--knob: invalid choice: 'medium'" in capsys.readouterr().err
