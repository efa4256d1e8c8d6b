"""Edges of the LM FLOPs model and perplexity summary: a removed attention counts nothing, one window's mean is
its own NLL, a speedup of 1 or less is refused by name."""

from __future__ import annotations

import math

import pytest
import torch

from osscar.lm.adapters import get_adapter
from osscar.lm.evaluation.evaluate import perplexity_summary
from osscar.lm.evaluation.measure import flops_per_token, fractions_for_speedup

from .conftest import tiny_llama_config


def test_a_removed_attention_counts_no_flops():
    a = get_adapter(tiny_llama_config(), "head")  # 2 blocks
    per = a.layer_flops(6, 64)
    got = flops_per_token(a, [0, 6], [64, 32])
    assert got["attn"] == per["attn"] and got["mlp"] == per["mlp"] + a.layer_flops(6, 32)["mlp"]
    assert flops_per_token(a, [0, 0], [64, 64])["attn"] == 0


def test_perplexity_summary_of_one_and_of_no_window():
    one = perplexity_summary([2.0], torch.zeros(1, 9, dtype=torch.long))
    assert (one["nll"], one["ppl"], one["tokens"], one["windows"], one["seqlen"]) == (2.0, math.exp(2.0), 8, 1, 9)
    two = perplexity_summary([1.0, 3.0], torch.zeros(2, 5, dtype=torch.long))
    assert (two["nll"], two["tokens"], two["window_nll"]) == (2.0, 8, [1.0, 3.0])
    assert perplexity_summary([], torch.zeros(0, 5, dtype=torch.long))["nll"] == 0.0


def test_fractions_for_speedup():
    assert fractions_for_speedup(2.0) == 0.5 and fractions_for_speedup(4.0) == 0.75
    for bad in (1.0, 0.5):
        with pytest.raises(ValueError, match=f"speedup must be > 1, got {bad}"):
            fractions_for_speedup(bad)
