"""``allocation="uniform-latency"`` (one kept fraction in every block, chosen on the measured latency table),
the search settings of ``spdy`` / ``evolutionary`` (``allocation_params``), and the block-only prefill timing.
Tiny random Llama (GQA); no timing is asserted on."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.pipelines import PIPELINES
from osscar.lm.adapters import get_adapter
from osscar.lm.allocation.levels import ladder, latency_costs
from osscar.lm.allocation.run_step import search_settings
from osscar.lm.evaluation.latency import LatencyTable
from osscar.lm.evaluation.measure import compare_latency
from osscar.lm.run import run_lm
from osscar.lm.run_config import LMRunConfig
from osscar.lm.slicing import load_pruned, slice_model

from .conftest import make_model, tiny_llama_config


def _largest_uniform_pair(levels, costs, n_blocks, limit):
    """The definition, written out: for kept fractions f from 1 down (every level / largest level), each part keeps
    its largest level ≤ f · largest; the first f whose summed cost over the blocks meets ``limit``."""
    top = {p: max(levels[p]) for p in levels}
    fractions = sorted({k / top[p] for p in levels for k in levels[p]}, reverse=True)
    for f in fractions:
        pair = {p: max(k for k in levels[p] if k <= f * top[p] + 1e-12) for p in levels}
        if n_blocks * (costs["attn"][pair["attn"]] + costs["mlp"][pair["mlp"]]) <= limit * (1 + 1e-9):
            return pair["attn"], pair["mlp"]
    raise AssertionError("no fraction meets the limit")


@pytest.mark.parametrize("speedup", [1.3, 2.0])
def test_uniform_latency_keeps_the_largest_common_fraction_that_meets_the_table(speedup, tiny_llama_dir, tmp_path):
    cache = tmp_path / "cache"
    cfg = LMRunConfig(model=str(tiny_llama_dir), method="mp+", allocation="uniform-latency", speedup=speedup,
                      allocation_mlp_levels=4, n_samples=3, seqlen=16, eval_windows=1, latency_repeats=1,
                      cache_dir=str(cache))
    out = run_lm(cfg, save_to=str(tmp_path / "m"))
    al = out["allocation"]
    assert len(set(al["kept_attn_groups"])) == 1 and len(set(al["kept_neurons"])) == 1  # uniform
    model = make_model(tiny_llama_config())
    adapter = get_adapter(model, "head")
    levels = ladder(adapter, 4)
    (path,) = (cache / "latency").glob("*-b1-s16-*.json")  # the run's own table (the only one it measured)
    table = LatencyTable.from_dict(json.loads(path.read_text()))
    costs = latency_costs(table, levels)
    n = len(adapter.layers(model))
    dense = n * (costs["attn"][max(levels["attn"])] + costs["mlp"][max(levels["mlp"])])
    assert al["limit"] == pytest.approx(dense / speedup)
    expected = _largest_uniform_pair(levels, costs, n, dense / speedup)
    assert (al["kept_attn_groups"][0], al["kept_neurons"][0]) == expected
    assert al["predicted_speedup"] >= speedup * (1 - 1e-9)
    assert [(r["part"], r["k"]) for r in out["layers"]][:2] == [("attn", expected[0]), ("mlp", expected[1])]
    reloaded = load_pruned(tmp_path / "m")
    assert {l.mlp.down_proj.in_features for l in get_adapter(reloaded).layers(reloaded)} == {expected[1]}


def test_spdy_search_settings_reach_the_search(tiny_llama_dir, tmp_path):
    """allocation_params: max_evaluations caps the stitched-model evaluations, the run's seed seeds the search,
    fitness_samples limits the rows scored. ZipLM: its database ladder through the run's per-consumer router."""
    cfg = LMRunConfig(model=str(tiny_llama_dir), method="ziplm", allocation="spdy", speedup=1.5, seed=3,
                      allocation_params={"max_evaluations": 2, "fitness_samples": 1, "random_inits": 4},
                      allocation_mlp_levels=4, n_samples=3, seqlen=16, eval_windows=1, latency_repeats=1,
                      cache_dir=str(tmp_path / "cache"))
    search = run_lm(cfg)["allocation"]["search"]
    assert search["stitched_evaluations"] == 2
    assert search["config"]["max_evaluations"] == 2 and search["config"]["seed"] == 3


def test_search_settings_errors_and_key_neutrality():
    spdy, rows = search_settings("spdy", {"patience": 5, "fitness_samples": 2}, seed=7)
    assert (spdy.patience, spdy.seed, rows) == (5, 7, 2)
    evo, rows = search_settings("evolutionary", {"tokens": [512, 1024], "survivors": [2, 1], "seed": 1}, seed=7)
    assert evo.tokens == (512, 1024) and evo.seed == 1 and rows is None
    with pytest.raises(ValueError, match=r"\['bogus'\] unknown for allocation='spdy'; allowed: seed, "):
        search_settings("spdy", {"bogus": 1}, seed=0)
    with pytest.raises(ValueError, match="fitness_samples"):
        search_settings("evolutionary", {"fitness_samples": 2}, seed=0)
    with pytest.raises(ValueError, match="fitness_samples must be a positive integer"):
        search_settings("spdy", {"fitness_samples": 0}, seed=0)
    with pytest.raises(ValueError, match="allocation='uniform' takes none"):
        LMRunConfig(allocation_params={"max_evaluations": 3})
    with pytest.raises(ValueError, match="max_evaluations must be an integer"):
        LMRunConfig(allocation="spdy", speedup=2.0, allocation_params={"max_evaluations": 0})
    with pytest.raises(ValueError, match="allocates every block"):
        LMRunConfig(allocation="uniform-latency", speedup=2.0, layers=(0,))
    key = PIPELINES["lm"].key_config
    assert "allocation_params" not in key({"allocation_params": {}, "method": "osscar"})
    assert key({"allocation_params": {"max_evaluations": 3}})["allocation_params"] == {"max_evaluations": 3}


def test_block_timing_leaves_the_lm_head_out():
    """compare_latency times the whole model and its backbone: the LM head runs only in the whole-model passes."""
    cfg = tiny_llama_config()
    dense, sliced = make_model(cfg), make_model(cfg)
    n = len(get_adapter(sliced).layers(sliced))
    slice_model(sliced, {i: {"attn": torch.tensor([0, 2]), "mlp": torch.arange(16)} for i in range(n)})
    calls = {"head": 0, "blocks": 0}
    for m in (dense, sliced):
        m.lm_head.register_forward_hook(lambda *_: calls.__setitem__("head", calls["head"] + 1))
        m.model.layers[0].register_forward_hook(lambda *_: calls.__setitem__("blocks", calls["blocks"] + 1))
    (row,) = compare_latency(dense, sliced, [(1, 8)], repeats=3, warmup=1)
    assert calls == {"head": 2 * (3 + 1), "blocks": 4 * (3 + 1)}
    assert row["blocks_speedup"] == pytest.approx(row["dense_blocks_s"] / row["sliced_blocks_s"])
    assert row["speedup"] == pytest.approx(row["dense_s"] / row["sliced_s"])


def test_blocks_only_timing_never_runs_the_lm_head():
    cfg = tiny_llama_config()
    dense, sliced = make_model(cfg), make_model(cfg)
    calls = {"head": 0, "blocks": 0}
    for m in (dense, sliced):
        m.lm_head.register_forward_hook(lambda *_: calls.__setitem__("head", calls["head"] + 1))
        m.model.layers[0].register_forward_hook(lambda *_: calls.__setitem__("blocks", calls["blocks"] + 1))
    (row,) = compare_latency(dense, sliced, [(1, 8)], repeats=3, warmup=1, blocks_only=True)
    assert calls == {"head": 0, "blocks": 2 * (3 + 1)} and "speedup" not in row
    assert row["blocks_speedup"] == pytest.approx(row["dense_blocks_s"] / row["sliced_blocks_s"])
