"""Calibration capture in the model's own dtype (bfloat16, float32): H is accumulated from float32 inputs, the
no-rerun step's shifted outputs come back in the model's dtype, and solver weights are written in it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from osscar.lm.adapters import get_adapter
from osscar.lm.calibrate.calibration import prune_model_sequential
from osscar.lm.calibrate.capture import HessianAccumulator, shift_outputs, write_consumer
from osscar.methods import make_method

from .conftest import make_model, tiny_llama_config

SEGS = torch.randint(0, 300, (4, 16), generator=torch.Generator().manual_seed(2))


def test_hessian_of_bfloat16_inputs_is_the_float32_products():
    lin = nn.Linear(8, 3).to(torch.bfloat16)
    acc = HessianAccumulator(lin, chunk_rows=5, keep_inputs=True)
    x = torch.randn(2, 7, 8).to(torch.bfloat16)
    lin(x)
    X = x.reshape(-1, 8).float()
    H = acc.remove()
    expected = sum((X[c:c + 5].T @ X[c:c + 5]).double() for c in range(0, 14, 5))  # float32 chunk products
    assert H.dtype == torch.float64 and torch.equal(H, expected) and acc.n == 14
    assert len(acc.inputs) == 1 and acc.inputs[0].dtype == torch.float32 and torch.equal(acc.inputs[0], X)
    assert HessianAccumulator(nn.Linear(8, 3)).inputs is None  # inputs are kept only when asked
    for bad in (0, "3", True, 2.0):
        with pytest.raises(ValueError, match="chunk_rows must be a positive integer"):
            HessianAccumulator(lin, chunk_rows=bad)


def test_shifted_outputs_keep_the_block_dtype():
    y = torch.randn(2, 3, 4).to(torch.bfloat16)
    X = torch.randn(6, 5)  # float32 consumer inputs, as kept
    dW = torch.randn(4, 5, dtype=torch.float64)
    (got, kw), = shift_outputs([(y, {"k": 1})], [X], dW)
    assert got.dtype == torch.bfloat16 and kw == {"k": 1}
    assert torch.equal(got, y + (X @ dW.T.float()).reshape(2, 3, 4).to(torch.bfloat16))


def test_written_weights_take_the_consumer_dtype():
    lin = nn.Linear(5, 4).to(torch.bfloat16)
    W = torch.randn(5, 4, dtype=torch.float64)
    write_consumer(lin, W)
    assert lin.weight.dtype == torch.bfloat16 and torch.equal(lin.weight, W.T.to(torch.bfloat16))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_the_no_rerun_step_gives_the_rerun_blocks_inputs(dtype):
    """Sequential pruning of a bfloat16 / float32 model: the next block's inputs formed as y + XΔWᵀ (the
    shortcut) or by running the pruned block again give the same kept groups."""
    outs = []
    for shortcut_bytes in (1 << 30, 0):
        model = make_model(tiny_llama_config()).to(dtype)
        out = prune_model_sequential(model, SEGS, make_method("mp"), 3, 32, batch_size=2,
                                     shortcut_bytes=shortcut_bytes, adapter=get_adapter(model, "head"))
        outs.append({i: {p: t.tolist() for p, t in parts.items()} for i, parts in out.kept.items()})
        assert {p.dtype for p in model.parameters()} == {dtype}
    assert outs[0] == outs[1]
