"""benchmarks.retime: each finished run's sliced architecture rebuilt from its record and timed again, stored as
records of its own. The rebuilt architecture is checked against the run's own saved model (load_pruned)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from benchmarks import retime
from benchmarks.store import ResultStore, RunRecord
from osscar.lm.adapters import get_adapter
from osscar.lm.run import run_lm
from osscar.lm.run_config import LMRunConfig
from osscar.lm.slicing import load_pruned


@pytest.fixture
def timed(monkeypatch):
    """compare_latency replaced by a recorder of the (dense, sliced) pairs it gets; rows as the real blocks-only."""
    calls = []

    def fake(dense, sliced, points, repeats, warmup, blocks_only=False):
        calls.append((dense, sliced, points, repeats, warmup, blocks_only, torch.get_num_threads()))
        return [{"batch": b, "seqlen": s, "blocks_speedup": 1.5} for b, s in points]

    monkeypatch.setattr("osscar.lm.evaluation.measure.compare_latency", fake)
    return calls


def _shapes(model):
    """Every block's parameter names and shapes (a removed module has none)."""
    return [tuple((n, tuple(p.shape)) for n, p in layer.named_parameters()) for layer in get_adapter(model).layers(model)]


def test_retime_rebuilds_each_runs_architecture_and_resumes(tiny_llama_dir, tmp_path, timed, capsys):
    common = dict(model=str(tiny_llama_dir), method="mp+", n_samples=3, seqlen=16, eval_windows=1, heldout_samples=2,
                  latency_points=((1, 8),), latency_repeats=1, cache_dir=str(tmp_path / "cache"), threads=1)
    store = ResultStore(tmp_path / "records")
    saved = {}
    for name, extra in {"spdy": dict(allocation="spdy", speedup=1.6, allocation_mlp_levels=4,
                                     allocation_params={"max_evaluations": 4}),
                        "uniform": dict(head_fraction=0.5, neuron_fraction=0.5),
                        "uniform-seed1": dict(head_fraction=0.5, neuron_fraction=0.5, seed=1)}.items():
        out = run_lm(LMRunConfig(**common, **extra), save_to=str(tmp_path / name))
        record = RunRecord(experiment="claim_lm", pipeline="lm", config=out["config"], metrics=out, provenance={},
                           started="", finished="")
        store.put(record)
        saved[record.key] = load_pruned(tmp_path / name)
    timed.clear()  # the runs' own latency measurements
    assert retime.main(["claim_lm", "--store", str(store.root), "--repeats", "3", "--warmup", "1", "--rounds", "2"]) == 0
    assert len(timed) == 2 * 2, "the two uniform runs have the same widths: one measurement per round"
    for dense, _sliced, points, repeats, warmup, blocks_only, threads in timed:
        assert (points, repeats, warmup, blocks_only, threads) == ([(1, 8)], 3, 1, True, 1)
        assert _shapes(dense) == _shapes(AutoModelForCausalLM.from_pretrained(tiny_llama_dir))
    rebuilt = {tuple(_shapes(sliced)) for _, sliced, *_ in timed}
    assert rebuilt == {tuple(_shapes(m)) for m in saved.values()}  # each run's own sliced shapes
    retimed = list(store.records("claim_lm" + retime.SUFFIX))
    assert sorted(r.config["source_key"] for r in retimed) == sorted(saved)
    assert all(r.metrics["rows"][0]["blocks_speedup"] == 1.5 and r.provenance["device"] for r in retimed)
    assert all(r.metrics["rows"][0]["rounds_blocks_speedup"] == [1.5, 1.5] for r in retimed)
    again = ["claim_lm", "--store", str(store.root), "--repeats", "3", "--warmup", "1", "--rounds", "2"]
    assert retime.main(again) == 0 and len(timed) == 4  # resumed: nothing new
    assert "0 measurement(s)" in capsys.readouterr().out


def test_the_median_round_is_kept_per_point():
    """Three rounds of two points; a burst of load slowed the dense blocks in round 2 at the first point only."""
    rounds = [[{"blocks_speedup": 1.50, "round": 1}, {"blocks_speedup": 2.00, "round": 1}],
              [{"blocks_speedup": 1.80, "round": 2}, {"blocks_speedup": 1.90, "round": 2}],
              [{"blocks_speedup": 1.55, "round": 3}, {"blocks_speedup": 2.10, "round": 3}]]
    first, second = retime.median_rows(rounds)
    assert (first["blocks_speedup"], first["round"]) == (1.55, 3) and first["rounds_blocks_speedup"] == [1.5, 1.8, 1.55]
    assert (second["blocks_speedup"], second["round"]) == (2.00, 1)
    assert retime.median_rows(rounds[:2])[0]["blocks_speedup"] == 1.50  # an even count: the lower median


def test_retime_names_an_unknown_experiment(tmp_path, capsys):
    ResultStore(tmp_path).root.mkdir(parents=True, exist_ok=True)
    assert retime.main(["no_such", "--store", str(tmp_path)]) == 2
    assert "experiments ['no_such'] not in" in capsys.readouterr().err
