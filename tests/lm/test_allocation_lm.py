"""Runtime-aware per-layer allocation for LMs: latency tables, loss curves, allocation in run_lm,
non-uniform slicing / reload, and config validation. Tiny random OPT and Llama (GQA) models;
timings are never asserted on (the allocation test uses a synthetic latency table)."""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from osscar.lm.sources import models as lm_models
from osscar.lm.run_config import check_model
from osscar.lm.adapters import get_adapter
from osscar.lm.evaluation.latency import LatencyTable, default_levels, latency_table
from osscar.lm.run import run_lm
from osscar.lm.run_config import LMRunConfig
from osscar.lm.slicing import MANIFEST, load_pruned, save_pruned, slice_model

from .conftest import zero_out_groups as _zero_out

from .conftest import make_model, tiny_llama_config, tiny_opt_config


def _cfg(family):
    return tiny_opt_config() if family == "opt" else tiny_llama_config()


# -- latency table -------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["opt", "llama"])
def test_latency_table_shape_and_cache(family, tmp_path):
    cfg = _cfg(family)
    a = get_adapter(cfg)
    threads = torch.get_num_threads()
    kw = dict(batch=1, seqlen=4, threads=1, repeats=1, warmup=1, mlp_levels=4, cache_dir=tmp_path)
    t1 = latency_table(cfg, **kw)
    assert torch.get_num_threads() == threads
    assert sorted(t1.attn) == list(range(1, a.n_attn_groups + 1))
    assert sorted(t1.mlp) == default_levels(a.ffn_dim, 4) == [16, 32, 48, 64]
    assert all(v > 0 for v in (*t1.attn.values(), *t1.mlp.values()))
    for tab in (t1.attn, t1.mlp):  # narrower is never slower (noise clipped)
        ks = sorted(tab)
        assert all(tab[x] <= tab[y] for x, y in zip(ks, ks[1:]))
    assert t1.fixed_model_s >= 0 and t1.block_rest_s >= 0 and t1.n_layers == 2
    assert t1.mlp_latency(40) == pytest.approx(0.5 * (t1.mlp[32] + t1.mlp[48]))
    assert t1.dense_s() == pytest.approx(t1.fixed_s() + 2 * (t1.attn[a.n_attn_groups] + t1.mlp[64]))
    key = t1.key
    assert (key["threads"], key["batch"], key["seqlen"], key["torch"]) == (1, 1, 4, torch.__version__)
    assert key["device"].startswith("cpu:") and len(key["config_hash"]) == 16
    files = list((tmp_path / "latency").glob("*.json"))
    assert len(files) == 1 and not list((tmp_path / "latency").glob(".*tmp*"))
    assert json.loads(files[0].read_text())["key"] == key
    assert not t1.info["cached"]
    t2 = latency_table(cfg, **kw)  # read back
    assert t2.info["cached"] and t2.attn == t1.attn and t2.mlp == t1.mlp and t2.fixed_model_s == t1.fixed_model_s
    t3 = latency_table(cfg, **{**kw, "seqlen": 6})  # another key: another file
    assert not t3.info["cached"] and len(list((tmp_path / "latency").glob("*.json"))) == 2
    other = _cfg(family)
    other.num_hidden_layers = 3  # another architecture: another key
    assert latency_table(other, **kw).key["config_hash"] != key["config_hash"]


def test_latency_table_env_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("OSSCAR_CACHE", str(tmp_path))
    t = latency_table(tiny_llama_config(), batch=1, seqlen=4, repeats=1, warmup=1, mlp_levels=2)
    assert os.path.dirname(t.info["path"]) == str(tmp_path / "latency")


# -- loss curves (pass 1) ------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["opt", "llama"])
def test_loss_curves_normalised_and_monotone(family):
    from osscar.lm.calibrate.calibration import collect_loss_curves

    model = make_model(_cfg(family))
    a = get_adapter(model)
    ref = {n: p.clone() for n, p in model.state_dict().items()}
    segs = torch.randint(0, 300, (3, 12), generator=torch.Generator().manual_seed(0))
    levels = {"attn": list(range(1, a.n_attn_groups + 1)), "mlp": [8, 16, 32, 64]}
    curves = collect_loss_curves(model, segs, levels, layers=[0, 1])
    assert all(torch.equal(p, ref[n]) for n, p in model.state_dict().items())  # nothing pruned
    for i in (0, 1):
        for part, lv in levels.items():
            c = curves[i][part]
            assert sorted(c) == lv
            assert c[lv[-1]] == pytest.approx(0.0, abs=1e-9)  # all kept: no loss
            assert all(0 <= v <= 1 + 1e-9 for v in c.values())
            assert all(c[x] >= c[y] - 1e-9 for x, y in zip(lv, lv[1:]))  # fewer kept, more loss
            assert c[lv[0]] > 0


# -- runtime allocation in run_lm ----------------------------------------------------------------
def _synthetic_table(config, **kw):
    """Latency ∝ FLOPs plus a fixed part: deterministic, so the budget check is exact."""
    a = get_adapter(getattr(config, "config", config))
    return LatencyTable(key={"synthetic": True}, attn={k: 1e-3 * k for k in range(1, a.n_attn_groups + 1)},
                        mlp={m: 4e-5 * m for m in default_levels(a.ffn_dim, kw.get("mlp_levels", 16))},
                        block_rest_s=1e-4, fixed_model_s=5e-4, n_layers=int(config.num_hidden_layers),
                        n_attn_groups=a.n_attn_groups, ffn_dim=a.ffn_dim, info={"cached": False, "path": None})


@pytest.fixture(scope="module")
def tiny_opt_dir(tmp_path_factory, tiny_tokenizer_dir):
    path = tmp_path_factory.mktemp("tiny_opt")
    make_model(tiny_opt_config(max_position_embeddings=256, num_hidden_layers=3)).save_pretrained(path)
    for f in os.listdir(tiny_tokenizer_dir):
        shutil.copy(os.path.join(tiny_tokenizer_dir, f), path)
    return path


@pytest.mark.parametrize("family, method, min_keep", [("llama", "osscar", 0.0), ("opt", "mp+", 0.3)])
def test_runtime_allocation_meets_predicted_budget(family, method, min_keep, request, tmp_path, monkeypatch):
    import osscar.lm.evaluation.latency as lat

    monkeypatch.setattr(lat, "latency_table", _synthetic_table)
    folder = request.getfixturevalue("tiny_llama_dir" if family == "llama" else "tiny_opt_dir")
    cfg = LMRunConfig(model=str(folder), method=method, speedup=1.6, allocation="runtime", allocation_mlp_levels=8,
                      allocation_min_keep=min_keep, n_samples=3, seqlen=16, eval_windows=1)
    out = run_lm(cfg, save_to=str(tmp_path / "m"))
    al = out["allocation"]
    assert al["predicted_latency_s"] <= al["target_latency_s"] * (1 + 1e-9)
    # the target is a decoder-block speedup: embeddings and LM head are not counted
    fixed_model = al["latency_table"]["fixed_model_s"]
    assert al["target_latency_s"] == pytest.approx(fixed_model + (al["dense_latency_pred_s"] - fixed_model) / 1.6)
    assert al["predicted_block_speedup"] >= 1.6 * (1 - 1e-9)
    table = _synthetic_table(AutoModelForCausalLM.from_pretrained(folder).config, mlp_levels=8)
    assert al["predicted_latency_s"] == pytest.approx(table.predict(al["kept_attn_groups"], al["kept_neurons"]))
    n = table.n_layers
    assert len(al["kept_attn_groups"]) == len(al["kept_neurons"]) == n
    assert all(k in table.attn for k in al["kept_attn_groups"]) and all(k in table.mlp for k in al["kept_neurons"])
    assert min(al["kept_attn_groups"]) >= max(1, math.ceil(min_keep * table.n_attn_groups))
    assert min(al["kept_neurons"]) >= max(1, math.ceil(min_keep * table.ffn_dim))
    app = out["applied"]
    assert app["attn_groups_kept_per_block"] == al["kept_attn_groups"]
    assert app["neurons_kept_per_block"] == al["kept_neurons"] and app["allocation"] == "runtime"
    ks = [(r["part"], r["k"]) for r in out["layers"]]  # the pruning used the allocated counts
    assert ks == [p for i in range(n) for p in (("attn", al["kept_attn_groups"][i]), ("mlp", al["kept_neurons"][i]))]
    assert out["slicing"]["sliced"] and out["slicing"]["max_abs_logit_diff_vs_unsliced"] < 1e-4
    assert out["size"]["flops_pruned"]["mlp"] < out["size"]["flops_dense"]["mlp"]
    assert al["uniform_predicted_latency_s"] > 0 and "loss_curves" in al
    reloaded = load_pruned(tmp_path / "m")
    man = json.loads((tmp_path / "m" / MANIFEST).read_text())
    if not man["uniform"]:
        assert [w["neurons"] for w in man["per_layer"]] == al["kept_neurons"]
    assert [l.mlp.down_proj.in_features if family == "llama" else l.fc2.in_features
            for l in get_adapter(reloaded).layers(reloaded)] == al["kept_neurons"]


def test_runtime_allocation_unreachable_target(tiny_llama_dir, monkeypatch):
    import osscar.lm.evaluation.latency as lat

    monkeypatch.setattr(lat, "latency_table", _synthetic_table)
    cfg = LMRunConfig(model=str(tiny_llama_dir), speedup=50.0, allocation="runtime", n_samples=2, seqlen=16,
                      eval_windows=1)
    with pytest.raises(ValueError, match="lower the speedup"):
        run_lm(cfg)


# -- non-uniform slicing and reload --------------------------------------------------------------
def _nonuniform_kept(model):
    a = get_adapter(model)
    g = torch.Generator().manual_seed(3)
    widths = [(a.n_attn_groups - 1, a.ffn_dim // 2), (1, a.ffn_dim // 4 + 3)]
    return {i: {"attn": torch.randperm(a.n_attn_groups, generator=g)[:ka].sort().values,
                "mlp": torch.randperm(a.ffn_dim, generator=g)[:km].sort().values}
            for i, (ka, km) in enumerate(widths)}, widths



def test_non_uniform_slicing_preserves_logits_and_reloads(tiny_model, tmp_path):
    ids = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(1))
    kept, widths = _nonuniform_kept(tiny_model)
    _zero_out(tiny_model, kept)
    with torch.no_grad():
        pruned = tiny_model(ids).logits
    dense_cfg = tiny_model.config.to_dict()
    man = slice_model(tiny_model, kept)
    assert not man["uniform"] and man["needs_load_pruned"]
    assert [(w["attn_groups"], w["neurons"]) for w in man["per_layer"]] == widths
    a = get_adapter(tiny_model)
    for layer, (ka, km) in zip(a.layers(tiny_model), widths):
        assert a.consumer(layer, "attn").in_features == ka * a.attn_group_size
        assert a.consumer(layer, "mlp").in_features == km
    for k in ("num_attention_heads", "num_key_value_heads", "intermediate_size", "ffn_dim"):  # dense config kept
        assert tiny_model.config.to_dict().get(k) == dense_cfg.get(k)
    with torch.no_grad():
        sliced = tiny_model(ids).logits
    torch.testing.assert_close(sliced, pruned, atol=1e-5, rtol=1e-5)
    save_pruned(tiny_model, None, tmp_path / "m")
    reloaded = load_pruned(tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, sliced, atol=1e-5, rtol=1e-5)
    assert lm_models.load_model.__doc__  # load_model routes folders with a manifest to load_pruned
    with pytest.raises((RuntimeError, ValueError)):  # plain loading must refuse (size mismatch), not load garbage
        AutoModelForCausalLM.from_pretrained(tmp_path / "m")


# -- validation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, match", [
    ({"allocation": "foo"}, "allocation='foo'.*allowed: uniform, uniform-latency, runtime"),
    ({"allocation": "runtime"}, "needs a target speedup"),
    ({"allocation": "runtime", "head_fraction": 0.3}, "needs a target speedup"),
    ({"allocation": "runtime", "speedup": 1.5, "allocation_point": (1, 0)}, "allocation_point"),
    ({"allocation": "runtime", "speedup": 1.5, "allocation_point": (1, 100000)}, "max_position_embeddings"),
    ({"allocation_mlp_levels": 0}, "allocation_mlp_levels"),
    ({"allocation": "runtime", "speedup": 1.5, "allocation_min_keep": 1.0}, "allocation_min_keep"),
])
def test_bad_allocation_config(kw, match, tiny_llama_dir, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("weights must not be loaded during validation")

    monkeypatch.setattr(lm_models, "load_model", boom)
    with pytest.raises(ValueError, match=match):
        check_model(LMRunConfig(model=str(tiny_llama_dir), **kw))


def test_uniform_is_default(tiny_llama_dir):
    assert LMRunConfig(model=str(tiny_llama_dir)).allocation == "uniform"


def test_cli_allocation_flag(tiny_llama_dir, tmp_path, monkeypatch):
    import osscar.lm.evaluation.latency as lat
    from osscar.lm.cli import build_parser, config_from_args, main

    args = build_parser().parse_args(["--model", str(tiny_llama_dir), "--speedup", "1.5", "--allocation", "runtime",
                                      "--allocation-point", "2x8"])
    cfg = config_from_args(args)
    assert cfg.allocation == "runtime" and cfg.allocation_point == (2, 8)
    assert "--allocation" in build_parser().format_help()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--allocation", "foo"])
    assert main(["--model", str(tiny_llama_dir), "--allocation", "runtime", "--output-dir", str(tmp_path)]) == 2
    monkeypatch.setattr(lat, "latency_table", _synthetic_table)
    rc = main(["--model", str(tiny_llama_dir), "--speedup", "1.5", "--allocation", "runtime", "--method", "mp",
               "--n-samples", "2", "--seqlen", "16", "--eval-windows", "1", "--output-dir", str(tmp_path),
               "--no-progress"])
    assert rc == 0
    (path,) = tmp_path.glob("*_runtime_s1.5.json")
    assert json.loads(path.read_text())["allocation"]["predicted_latency_s"] > 0


def test_prefill_comparison_cached_per_architecture(tmp_path):
    """Same dense config + widths + threads + points: measured once, then read back without the dense model."""
    from osscar.lm.evaluation.latency import prefill_comparison


    cfg = tiny_llama_config()
    sliced = make_model(cfg)
    a = get_adapter(sliced)
    n = len(a.layers(sliced))
    slice_model(sliced, {i: {"attn": torch.tensor([0, 2]), "mlp": torch.arange(32)} for i in range(n)})
    widths = ([2] * n, [32] * n)
    loads = []

    def load_dense():
        loads.append(1)
        return make_model(cfg)

    kw = dict(points=[(1, 8), (2, 4)], load_dense=load_dense, repeats=1, warmup=1, cache_dir=tmp_path)
    rows, info = prefill_comparison(cfg, sliced, widths, **kw)
    assert not info["cached"] and len(loads) == 1 and [(r["batch"], r["seqlen"]) for r in rows] == [(1, 8), (2, 4)]
    rows2, info2 = prefill_comparison(cfg, sliced, widths, **kw)
    assert info2["cached"] and rows2 == rows and len(loads) == 1 and info2["path"] == info["path"]
    _, info3 = prefill_comparison(cfg, sliced, ([2] * n, [31] * n), **kw)  # other widths: measured again
    assert not info3["cached"] and len(loads) == 2 and info3["path"] != info["path"]
    with pytest.raises(ValueError, match="widths"):
        prefill_comparison(cfg, sliced, ([2] * n, [32] * (n - 1)), **kw)


@pytest.mark.parametrize("allocator", ["spdy", "evolutionary"])
def test_global_allocation_run_prunes_at_the_searched_widths_and_reloads(allocator, tiny_llama_dir, tmp_path):
    """run_lm with allocation=spdy|evolutionary: the searched widths (level 0 allowed) meet the predicted latency
    budget, the sequential pruning uses them, the sliced model reloads with its logits, and a second run with
    another target reuses the candidate database (no solver call while building it)."""
    cfg = dict(model=str(tiny_llama_dir), method="mp+", allocation=allocator, allocation_mlp_levels=4, n_samples=3,
               seqlen=16, eval_windows=1, heldout_samples=2, latency_repeats=1, cache_dir=str(tmp_path / "cache"))
    out = run_lm(LMRunConfig(speedup=1.5, **cfg), save_to=str(tmp_path / "m"))
    al = out["allocation"]
    assert al["budget"]["predicted_cost"] <= al["budget"]["limit"] * (1 + 1e-9)
    assert al["budget"]["predicted_speedup"] >= 1.5 * (1 - 1e-9) and al["search"]["trace"]
    ks = [(r["part"], r["k"]) for r in out["layers"]]
    n = len(al["kept_attn_groups"])
    assert ks == [p for i in range(n) for p in (("attn", al["kept_attn_groups"][i]), ("mlp", al["kept_neurons"][i]))]
    assert out["applied"]["attn_groups_kept_per_block"] == al["kept_attn_groups"]
    assert out["slicing"]["sliced"] and out["slicing"]["max_abs_logit_diff_vs_unsliced"] < 1e-4
    reloaded = load_pruned(tmp_path / "m")
    assert [l.mlp.down_proj.in_features for l in get_adapter(reloaded).layers(reloaded)] == al["kept_neurons"]
    again = run_lm(LMRunConfig(speedup=2.0, **cfg))["allocation"]
    assert again["database"]["key"] == al["database"]["key"] and again["database"]["build"]["solver_calls"] == 0


def test_global_allocation_config_errors():
    with pytest.raises(ValueError, match="allocation='spdy' needs a target speedup"):
        LMRunConfig(allocation="spdy")
    with pytest.raises(ValueError, match="heldout_samples must be > 0"):
        LMRunConfig(allocation="evolutionary", speedup=2.0, heldout_samples=0)
    with pytest.raises(ValueError, match="allocates every block"):
        LMRunConfig(allocation="spdy", speedup=2.0, layers=(0,))


def test_a_burst_of_load_during_one_round_is_not_an_outlier_of_the_table(monkeypatch, tmp_path):
    """The dense MLP width timed 40% slow in one round (other load): the table's time of that level is the median
    over the rounds, not the burst; with one round it would be the burst."""
    from osscar.lm.evaluation import latency as lat

    cfg = tiny_llama_config()
    n_mlp = get_adapter(cfg).ffn_dim
    calls = {"round": 0}
    real = lat._time_levels

    def one_round(*args, **kwargs):
        attn, mlp, rests = real(*args, **kwargs)
        calls["round"] += 1
        base = {m: 1e-3 * m / n_mlp for m in mlp}  # a smooth truth; round 1 has the burst at the dense width
        return attn, {m: v * (1.4 if (calls["round"] == 1 and m == n_mlp) else 1.0) for m, v in base.items()}, rests

    monkeypatch.setattr(lat, "_time_levels", one_round)
    table = latency_table(cfg, batch=1, seqlen=4, threads=1, repeats=1, warmup=0, mlp_levels=4, cache_dir=tmp_path)
    assert calls["round"] == lat.ROUNDS == table.key["rounds"] == table.info["rounds"]
    assert table.mlp[n_mlp] == pytest.approx(1e-3)  # the median over rounds ignores the burst
    monkeypatch.setattr(lat, "ROUNDS", 1)
    calls["round"] = 0
    one = latency_table(cfg, batch=1, seqlen=4, threads=1, repeats=1, warmup=0, mlp_levels=4, cache_dir=tmp_path)
    assert one.mlp[n_mlp] == pytest.approx(1.4e-3)  # a single round keeps it (the failure the rounds prevent)
