"""Perplexity against an independent ground truth: exp of the model's own Hugging Face ``labels=`` loss.

HF's causal-LM loss shifts the labels itself (token t+1 scored from the logits at t, mean over all
predicted tokens), so ``exp(model(ids, labels=ids).loss)`` is the GPTQ perplexity of equal-length
windows, computed by code that is not ours. Checked for the resident evaluator
(:func:`osscar.lm.evaluation.evaluate.perplexity`, one and several windows per batch) and the
streaming one (:func:`osscar.lm.offloading.streaming_eval.streamed_perplexity`, block by block, one
chunk and one window per chunk), on tiny random models with random biases and norms; Gemma 2 adds
final-logit soft-capping, which the streaming evaluator must leave to the model's own head.
"""

from __future__ import annotations

import math

import pytest
import torch

from osscar.lm.evaluation.evaluate import perplexity
from osscar.lm.offloading.offload import HostBlocks, ResidentBlocks
from osscar.lm.offloading.streaming_eval import streamed_perplexity

from .conftest import make_model, tiny_llama_config, tiny_opt_config
from .test_families import family_config

CPU = torch.device("cpu")
WINDOWS = torch.randint(0, 300, (3, 24), generator=torch.Generator().manual_seed(11))  # (n, seqlen)
CONFIGS = {"opt": tiny_opt_config, "llama-bias": lambda: tiny_llama_config(attention_bias=True, mlp_bias=True),
           "gemma2": lambda: family_config("gemma2")}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def model(request):
    return make_model(CONFIGS[request.param]())


def hf_nll(model, ids: torch.Tensor) -> float:
    """Mean next-token NLL over every predicted token of ``ids: (b, seqlen)``, by the model's own loss."""
    with torch.no_grad():
        return float(model(ids, labels=ids, use_cache=False).loss)


def assert_matches_hf(model, got: dict) -> None:
    """``got`` (a perplexity result for WINDOWS) agrees with HF's loss, in total and per window."""
    truth = hf_nll(model, WINDOWS)
    assert got["nll"] == pytest.approx(truth, rel=1e-5, abs=1e-6)
    assert got["ppl"] == pytest.approx(math.exp(truth), rel=1e-5)
    per_window = [hf_nll(model, WINDOWS[i:i + 1]) for i in range(len(WINDOWS))]
    assert got["window_nll"] == pytest.approx(per_window, rel=1e-5, abs=1e-6)
    assert (got["windows"], got["seqlen"], got["tokens"]) == (3, 24, 3 * 23)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_resident_perplexity_is_exp_of_the_models_own_loss(model, batch_size):
    assert_matches_hf(model, perplexity(model, WINDOWS, batch_size=batch_size))


@pytest.mark.parametrize("store, host_bytes", [("resident", None), ("host", 1)], ids=["one-chunk", "window-per-chunk"])
def test_streamed_perplexity_is_exp_of_the_models_own_loss(model, store, host_bytes):
    blocks = ResidentBlocks(model, CPU) if store == "resident" else HostBlocks(model, CPU)
    kw = {} if host_bytes is None else {"host_bytes": host_bytes}
    assert_matches_hf(model, streamed_perplexity(model, blocks, WINDOWS, **kw))
