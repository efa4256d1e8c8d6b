"""Tiny random vision models with non-trivial batch norms, and one thread per test."""

from __future__ import annotations

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def randomize_norms(model: nn.Module, gen: torch.Generator) -> nn.Module:
    """Random BN weights, biases and running statistics (and conv / linear biases where a layer has
    one): with PyTorch's defaults (weight 1, bias 0, mean 0, var 1) a wrong channel mapping of a
    batch norm or a bias leaves the outputs unchanged."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    return model


def random_model(arch: str, seed: int = 0, **kwargs) -> nn.Module:
    """``load_model(arch, random_init=True, **kwargs)`` with :func:`randomize_norms` (seeded by ``seed``)."""
    from osscar.vision.models import load_model

    torch.manual_seed(seed)
    model, _ = load_model(arch, random_init=True, **kwargs)
    return randomize_norms(model, torch.Generator().manual_seed(seed))
