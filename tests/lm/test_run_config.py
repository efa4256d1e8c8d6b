"""LMRunConfig validation (before any model load), targets, run_lm and the CLI on a tiny model."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from osscar.lm.sources import models as lm_models
from osscar.lm.evaluation.measure import flops_per_token, fractions_for_speedup
from osscar.lm.run import run_lm
from osscar.lm.run_config import LMRunConfig, check_model
from osscar.lm.targets import removed_count

from .conftest import tiny_llama_config, tiny_opt_config


@pytest.mark.parametrize("kw, match", [
    ({"model": "no such model"}, "model="),
    ({"method": "osscarr"}, "method=.*allowed"),
    ({"calib_corpus": "brown"}, "corpus 'brown'.*allowed"),
    ({"eval_corpora": ("wikitext3",)}, "corpus 'wikitext3'"),
    ({"zero_shot_tasks": ("mmlu",)}, "zero_shot_tasks"),
    ({"head_fraction": 1.0}, "head_fraction"),
    ({"neuron_fraction": -0.1}, "neuron_fraction"),
    ({"speedup": 1.0}, "speedup"),
    ({"speedup": 2.0, "head_fraction": 0.5}, "not both"),
    ({"method_params": {"t_hatt": 3}}, "t_hatt"),
    ({"n_samples": 0}, "n_samples"),
    ({"seqlen": 100000}, "max_position_embeddings"),
    ({"layers": (7,)}, "layers"),
    ({"device": "tpu"}, "device must be 'cpu', 'cuda' or 'cuda:N'"),
    ({"dtype": "int8"}, "dtype must be one of float32, float16, bfloat16"),
    ({"calibration_inputs": "teacher"}, "calibration_inputs='teacher' is unknown; allowed: pruned, dense"),
])
def test_bad_config(kw, match, tiny_llama_dir, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("weights must not be loaded during validation")

    monkeypatch.setattr(lm_models, "load_model", boom)
    kw = {"model": str(tiny_llama_dir), **kw}
    with pytest.raises(ValueError, match=match):
        check_model(LMRunConfig(**kw))  # each check in one of the two steps, both before any load


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_device_without_cuda_fails_where_the_run_executes(tiny_llama_dir, capsys):
    """A cuda config validates on a machine without GPUs (sweeps are planned on login nodes);
    run_lm and the CLI reject it before any data or weights load."""
    cfg = LMRunConfig(model=str(tiny_llama_dir), device="cuda")
    with pytest.raises(ValueError, match="device='cuda'.*is_available"):
        run_lm(cfg)
    from osscar.lm.cli import main

    assert main(["--model", str(tiny_llama_dir), "--device", "cuda"]) == 2
    assert "--device='cuda'" in capsys.readouterr().err


def test_corpus_too_short_fails_before_loading_weights(tiny_llama_dir, monkeypatch):
    cfg = LMRunConfig(model=str(tiny_llama_dir), n_samples=100000, seqlen=200)

    def boom(*a, **k):
        raise AssertionError("weights must not be loaded before the corpus check")

    monkeypatch.setattr(lm_models, "load_model", boom)
    with pytest.raises(ValueError, match="fewer than n_samples"):
        run_lm(cfg)


def test_removed_count_rounding():
    assert removed_count(0.5, 3) == 1  # 1.5 -> ties down
    assert removed_count(0.3, 3) == 1
    assert removed_count(0.7, 3) == 2
    assert removed_count(0.99, 3) == 2  # at least one group kept
    assert removed_count(0.3, 1536) == 461
    assert removed_count(0.0, 10) == 0


def test_flops_model_and_speedup():
    for cfg in (tiny_opt_config(), tiny_llama_config()):
        dense = flops_per_token(cfg)
        from osscar.lm.adapters import get_adapter

        a = get_adapter(cfg)
        half = flops_per_token(cfg, a.n_attn_groups // 2 if a.n_attn_groups % 2 == 0 else a.n_attn_groups, a.ffn_dim // 2)
        assert half["mlp"] * 2 == dense["mlp"]
    assert fractions_for_speedup(2.0) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        fractions_for_speedup(1.0)
    # Llama: d=48, q=o=48, k=v=24 per block; mlp 3·48·64
    f = flops_per_token(tiny_llama_config())
    assert f["attn"] == 2 * (2 * 48 * (2 * 48 + 2 * 24))
    assert f["mlp"] == 2 * (2 * 48 * 64 * 3)


def test_run_lm_end_to_end_tiny(tiny_llama_dir, tmp_path):
    cfg = LMRunConfig(model=str(tiny_llama_dir), method="osscar", head_fraction=0.34, neuron_fraction=0.5,
                      n_samples=4, seqlen=32, eval_windows=2, latency_points=((1, 16),), latency_repeats=1)
    out = run_lm(cfg, save_to=str(tmp_path / "m"))
    # 6 query heads in 3 KV groups: 34% of 2 per group rounds to 1 removed -> 1 kept in each
    assert out["applied"]["attn_groups_kept"] == 3 and out["applied"]["heads_kept_per_kv_group"] == 1
    assert out["applied"]["neurons_kept"] == 32
    assert out["slicing"]["sliced"] and out["slicing"]["max_abs_logit_diff_vs_unsliced"] < 1e-4
    ppl = out["pruned"]["wiki-gensim"]
    assert ppl["ppl"] > 0 and ppl["windows"] == 2 and len(ppl["window_nll"]) == 2
    assert sum(ppl["window_nll"]) / 2 == pytest.approx(ppl["nll"]) and math.exp(ppl["nll"]) == pytest.approx(ppl["ppl"])
    assert out["size"]["params_pruned"] < out["size"]["params_dense"]
    assert out["latency"][0]["threads"] == 1
    assert isinstance(out["latency_cache"]["cached"], bool) and out["latency_cache"]["path"].endswith(".json")
    assert out["provenance"]["calib_corpus"] == "wiki-gensim" and "versions" not in out["provenance"]  # the caller's
    assert len(out["layers"]) == 4
    from osscar.lm.slicing import load_pruned

    assert load_pruned(tmp_path / "m").config.intermediate_size == 32


def test_run_lm_bfloat16_model(tiny_llama_dir):
    """A half-precision model: calibration forwards in bf16, H and the solver in float64."""
    kw = dict(model=str(tiny_llama_dir), method="osscar", head_fraction=0.34, neuron_fraction=0.5,
              n_samples=4, seqlen=32, eval_windows=2)
    out = run_lm(LMRunConfig(dtype="bfloat16", **kw))
    ref = run_lm(LMRunConfig(**kw))
    assert out["provenance"]["dtype"] == "bfloat16" and out["provenance"]["device"].startswith("cpu")
    assert out["slicing"]["sliced"] and out["size"]["params_pruned"] == ref["size"]["params_pruned"]
    ppl, ref_ppl = out["pruned"]["wiki-gensim"]["ppl"], ref["pruned"]["wiki-gensim"]["ppl"]
    assert abs(ppl - ref_ppl) < 0.05 * ref_ppl  # bf16 rounding, not a different model


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_run_lm_on_cuda_matches_cpu(tiny_llama_dir):
    kw = dict(model=str(tiny_llama_dir), method="osscar", head_fraction=0.34, neuron_fraction=0.5,
              n_samples=4, seqlen=32, eval_windows=2, latency_points=((1, 16),), latency_repeats=1)
    gpu, cpu = run_lm(LMRunConfig(device="cuda", **kw)), run_lm(LMRunConfig(**kw))
    assert [r["kept"] for r in gpu["layers"]] == [r["kept"] for r in cpu["layers"]]
    assert gpu["pruned"]["wiki-gensim"]["ppl"] == pytest.approx(cpu["pruned"]["wiki-gensim"]["ppl"], rel=1e-3)
    assert gpu["provenance"]["device"].startswith("cuda") and gpu["memory"]["peak_accelerator_mb"] > 0
    assert gpu["latency"][0]["speedup"] > 0


def test_cli_writes_metrics_json(tiny_llama_dir, tmp_path):
    from osscar.lm.cli import main

    rc = main(["--model", str(tiny_llama_dir), "--method", "mp+", "--n-samples", "2", "--seqlen", "16",
               "--eval-windows", "1", "--output-dir", str(tmp_path), "--name", "run", "--no-progress"])
    assert rc == 0
    data = json.loads((tmp_path / "run.json").read_text())
    assert data["provenance"]["method"] == "mp+" and "versions" not in data["provenance"]
    assert "lm-eval" in data["environment"]["versions"] and data["environment"]["git"]  # written once, by the caller
    assert not list(tmp_path.glob("*.tmp*"))
    assert main(["--model", str(tiny_llama_dir), "--head-fraction", "1.5", "--output-dir", str(tmp_path)]) == 2


def test_module_help():
    r = subprocess.run([sys.executable, "-m", "osscar", "lm", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    text = " ".join(r.stdout.split())  # argparse wraps to the terminal's width
    assert "--t-hat" in text and "(default: smollm2-135m)" in text and "SmolLM2-135M-Instruct" in text


def test_fraction_that_removes_nothing_is_said_and_not_solved(tiny_llama_dir, tmp_path, capsys):
    """3 KV groups: --head-fraction 0.1 rounds to 0 groups removed; the console says so and the
    attention consumers are not solved (their weights stay)."""
    from osscar.lm.cli import main

    assert main(["--model", str(tiny_llama_dir), "--head-fraction", "0.1", "--neuron-fraction", "0.5", "--n-samples", "2",
                 "--seqlen", "16", "--eval-windows", "1", "--output-dir", str(tmp_path), "--name", "run",
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "--head-fraction 0.1 removes nothing from attention" in err
    out = json.loads((tmp_path / "run.json").read_text())
    attn = [r for r in out["layers"] if r["part"] == "attn"]
    assert attn and all(r["info"].get("skipped_nothing_to_remove") == 1 and r["seconds"] == 0.0 for r in attn)
    assert out["applied"]["head_fraction_applied"] == 0.0


def test_cli_summary_prints_dense_beside_pruned(tiny_llama_dir, tmp_path, capsys):
    from osscar.lm.cli import main

    assert main(["--model", str(tiny_llama_dir), "--method", "mp+", "--n-samples", "2", "--seqlen", "16",
                 "--eval-windows", "1", "--dense", "--output-dir", str(tmp_path), "--name", "run", "--no-progress"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("memory plan (")  # every run prints its plan first (osscar.lm.plan)
    head, row = next(line for line in lines if line.startswith("metric")), next(
        line for line in lines if line.startswith("ppl wiki-gensim"))
    assert head.split() == ["metric", "dense", "pruned"]
    import json

    assert json.loads((tmp_path / "run.json").read_text())["memory_plan"]["offload"] == "none"
    dense, pruned = (float(v) for v in row.split()[-2:])
    assert dense > 0 and pruned > 0 and dense != pruned


def test_lm_record_states_the_threads_it_used_after_another_count(tiny_llama_dir, tmp_path):
    from benchmarks.sweep import RunSpec
    from benchmarks.worker import execute
    from benchmarks.store import ResultStore

    torch.set_num_threads(1)
    cfg = LMRunConfig(model=str(tiny_llama_dir), method="mp", n_samples=2, seqlen=16, eval_windows=1, threads=2)
    spec = RunSpec("toy_lm", "lm", cfg, {"model": "tiny", "threads": 2})
    rec, ran = execute(spec, ResultStore(tmp_path))
    assert ran and rec.provenance["device"]["torch_threads"] == 2
    assert rec.metrics["provenance"]["threads_used"] == 2 and torch.get_num_threads() == 1
    # one memory monitor: the run's phases in the worker's monitor, no second summary beside them
    assert "memory_run" not in rec.metrics and "versions" not in rec.metrics["provenance"]
    assert list(rec.metrics["memory"]["phases"]) == ["load_and_dense_eval", "prune", "slice_and_evaluate"]


def test_building_a_config_reads_no_model_file_and_check_model_does(tiny_llama_dir, monkeypatch):
    from osscar.lm.run_config import check_model

    def boom(*a, **k):
        raise AssertionError("the model's config must not be read while the run config is built")

    monkeypatch.setattr(lm_models, "load_config", boom)
    cfg = LMRunConfig(model=str(tiny_llama_dir), seqlen=100000)  # too long for the model: only check_model knows
    with pytest.raises(ValueError, match="cannot read its config .*AssertionError"):
        check_model(cfg)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="seqlen=100000 exceeds the model's max_position_embeddings=256"):
        check_model(cfg)


def test_a_sweep_runs_the_model_checks_while_it_validates(tiny_llama_dir, tmp_path):
    from benchmarks.sweep import SweepError, load_sweep

    path = tmp_path / "s.toml"
    path.write_text(f'name = "toy"\npipeline = "lm"\n[profiles.cpu.base]\nmodel = "{tiny_llama_dir}"\n'
                    "[profiles.cpu.grid]\nseqlen = [16, 100000]\n")
    with pytest.raises(SweepError, match=r"run \(seqlen=100000\): seqlen=100000 exceeds the model's "
                                         "max_position_embeddings=256"):
        load_sweep(path, "cpu").runs()
