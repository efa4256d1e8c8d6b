"""``drift=True``: per-block output error and final KL of the pruned model against the dense one on the held-out
windows, checked against forward hooks on the decoder layers and torch's own KL on the reloaded models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from osscar.lm.adapters import get_adapter
from osscar.lm.run import run_lm
from osscar.lm.run_config import LMRunConfig
from osscar.lm.slicing import load_pruned


def _block_outputs(model, ids):
    outs, hooks = [], []
    for layer in get_adapter(model).layers(model):
        hooks.append(layer.register_forward_hook(lambda m, i, o: outs.append((o[0] if isinstance(o, tuple) else o).detach())))
    with torch.no_grad():
        logits = model(ids, use_cache=False).logits
    for h in hooks:
        h.remove()
    return outs, logits


def test_drift_is_the_block_output_error_and_kl_of_the_reloaded_models(tiny_llama_dir, tmp_path, monkeypatch):
    from osscar.lm.evaluation import drift as drift_module

    seen = {}
    original = drift_module.dense_reference
    monkeypatch.setattr(drift_module, "dense_reference", lambda model, ids, **kw: (seen.setdefault("ids", ids),
                                                                                      original(model, ids, **kw))[1])
    cfg = LMRunConfig(model=str(tiny_llama_dir), method="mp+", head_fraction=0.5, neuron_fraction=0.5, n_samples=3,
                      seqlen=16, eval_windows=1, heldout_samples=3, drift=True)
    out = run_lm(cfg, save_to=str(tmp_path / "m"))
    d = out["drift"]
    ids = seen["ids"]
    assert ids.shape == (3, 16) and len(d["block_rel_error"]) == len(d["growth"])
    dense = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    pruned = load_pruned(tmp_path / "m").eval()
    hd, ld = _block_outputs(dense, ids)
    hp, lp = _block_outputs(pruned, ids)
    for i in range(len(hd) - 1):  # the last hidden state HF returns is after the final norm
        assert d["block_rel_error"][i] == pytest.approx(float((hp[i] - hd[i]).norm() / hd[i].norm()), rel=1e-4)
    kl = F.kl_div(torch.log_softmax(lp[:, :-1], -1), torch.log_softmax(ld[:, :-1], -1), log_target=True,
                  reduction="none").sum(-1).mean()
    assert d["kl"] == pytest.approx(float(kl), rel=1e-4) and d["kl"] > 0
    assert d["growth"][1] == pytest.approx(d["block_rel_error"][1] / d["block_rel_error"][0])


def test_drift_needs_heldout_windows_and_no_offload():
    with pytest.raises(ValueError, match="heldout_samples > 0 and offload='none'"):
        LMRunConfig(drift=True, heldout_samples=0)
