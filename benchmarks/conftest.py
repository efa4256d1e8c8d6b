"""Fixtures for the solver benchmarks: OPT-shaped layer problems and a side-by-side summary."""

from __future__ import annotations

import pytest
import torch

from osscar.devices import resolve_device
from osscar.problem import LayerProblem

# name -> (n_groups, group_size, m[, blocks]): OPT-125m / OPT-2.7B-like FFN (fc2) and attention
# (out_proj), the embedded SmolLM2-135M's (down_proj 1536 -> 576; o_proj 9 heads of 64) and a
# Llama-style GQA o_proj (32 query heads in 8 KV groups, half of each group kept: blocks = 8)
SHAPES = {
    "ffn-1536": (1536, 1, 576),
    "heads-9x64": (9, 64, 576),
    "ffn-3072": (3072, 1, 768),
    "ffn-8192": (8192, 1, 2048),
    "heads-12x64": (12, 64, 768),
    "heads-32x64": (32, 64, 2048),
    "gqa-32x64-kv8": (32, 64, 2048, 8),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("osscar solver benchmark")
    group.addoption("--solver-device", default="cpu",
                    help="device the layer problems (and so the solvers) live on, e.g. cuda (default: cpu)")
    group.addoption("--threads", type=int, default=1, help="torch CPU threads (default: 1)")


@pytest.fixture(scope="session")
def solver_device(request) -> torch.device:
    """The benchmark's device, checked before any problem is built; CPU threads set here too."""
    try:
        device = resolve_device(request.config.getoption("--solver-device"), "--solver-device")
    except ValueError as e:
        raise pytest.UsageError(str(e)) from None
    threads = request.config.getoption("--threads")
    if threads < 1:
        raise pytest.UsageError(f"--threads must be ≥ 1, got {threads}")
    torch.set_num_threads(threads)
    return device


def opt_like_problem(shape: str, keep: float = 0.5, seed: int = 0, device: str | torch.device = "cpu") -> LayerProblem:
    """Calibration-like inputs: n = p + 512 correlated rows with a decaying spectrum (built on the
    CPU, then moved to ``device``)."""
    n_groups, s, m, *rest = SHAPES[shape]
    blocks = rest[0] if rest else 1
    p = n_groups * s
    g = torch.Generator().manual_seed(seed)
    n = p + 512
    scale = torch.logspace(0, -2, p, dtype=torch.float64)[torch.randperm(p, generator=g)]
    X = torch.randn(n, p, generator=g, dtype=torch.float64) * scale
    X += 0.3 * torch.randn(n, 1, generator=g, dtype=torch.float64) * torch.randn(1, p, generator=g, dtype=torch.float64)
    W = torch.randn(p, m, generator=g, dtype=torch.float64) / p**0.5
    P = LayerProblem.from_calibration(X.T @ X, W, s, int(keep * n_groups), damping=0.01, blocks=blocks)
    if torch.device(device).type == "cpu":
        return P
    return LayerProblem(H=P.H.to(device), G=P.G.to(device), W_dense=P.W_dense.to(device), group_size=s, k=P.k,
                        damping=P.damping, G_is_HW=P.G_is_HW, blocks=blocks)


@pytest.fixture(scope="session")
def summary(request):
    """Rows {shape, what, seconds, cpu_seconds, objective}; printed as one table when the session ends."""
    rows: list[dict] = []

    def show():
        if not rows:
            return
        by_shape: dict[str, dict[str, dict]] = {}
        for r in rows:
            by_shape.setdefault(r["shape"], {})[r["what"]] = r
        device = request.config.getoption("--solver-device")
        threads = torch.get_num_threads()
        key = "cpu_seconds" if torch.device(device).type == "cpu" else "seconds"  # a GPU's work is not CPU time
        lines = ["", f"solver benchmark (median over the rounds, one machine; device {device}, {threads} CPU thread(s)); "
                 f"cpu s = this process's CPU time, which other load does not inflate; ratios from {key.replace('_', ' ')}:",
                 f"{'shape':<14} {'what':<15} {'seconds':>9} {'cpu s':>9} {'objective':>16} {'vs inverse':>10} {'ziplm/x':>8}"]
        for shape, d in by_shape.items():
            inv = d.get("inverse", {}).get(key)
            zip_s = d.get("ziplm", {}).get(key)
            for what, r in d.items():
                obj = "" if r["objective"] is None else f"{r['objective']:.6e}"
                rel = f"{r[key] / inv:.2f}x" if inv else ""
                spd = f"{zip_s / r[key]:.2f}x" if zip_s and what != "inverse" else ""
                lines.append(f"{shape:<14} {what:<15} {r['seconds']:>9.3f} {r['cpu_seconds']:>9.3f} {obj:>16} {rel:>10} {spd:>8}")
        print("\n".join(lines))

    request.addfinalizer(show)
    return rows
