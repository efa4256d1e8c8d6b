"""The reproduction check: records matched by key, tolerances per metric, two tiers, exit status."""

from __future__ import annotations

import copy
import dataclasses

import pytest

from benchmarks.compare import TOLERANCES, compare_pair, compare_stores, main, update_reference
from benchmarks.store import ResultStore, RunRecord


def lm_record(ppl: float = 100.0, kept=(0, 1), objective: float = -10.0, acc: float = 0.5, wall: float = 10.0,
              seed: int = 0) -> RunRecord:
    metrics = {
        "dense": {"wiki": {"ppl": 20.0}},
        "pruned": {"wiki": {"ppl": ppl}, "zero_shot": {"tasks": {"piqa": {"acc": acc, "acc_norm": acc}}}},
        "size": {"params_dense": 1000, "params_pruned": 600},
        "layers": [{"name": "l0.attn", "kept": list(kept), "objective": objective},
                   {"name": "l0.mlp", "kept": [2, 3], "objective": objective * 2}],
        "wall_seconds": wall, "timings": {"prune_solver_s": wall / 2},
    }
    return RunRecord(experiment="lm_perplexity", pipeline="lm", config={"method": "osscar", "seed": seed},
                     metrics=metrics, provenance={}, started="s", finished="f")


def test_identical_records_reproduce():
    c = compare_pair(lm_record(wall=20.0), lm_record())  # (new, reference)
    assert c.status == "reproduced" and not c.failures and c.layers_differing == 0
    assert c.time_ratio == pytest.approx(2.0)  # reported, never checked


def test_summation_order_noise_is_within_the_same_selection_tolerance():
    c = compare_pair(lm_record(ppl=100.0 * (1 + 5e-5), objective=-10.0 * (1 + 1e-7)), lm_record())
    assert c.status == "reproduced"


def test_ppl_beyond_tolerance_drifts():
    c = compare_pair(lm_record(ppl=100.5), lm_record())
    assert c.status == "DRIFTED" and any("pruned ppl wiki" in f for f in c.failures)


def test_flipped_selection_uses_the_flip_tolerance():
    flip, ref = lm_record(ppl=102.5, kept=(0, 2), objective=-10.1), lm_record()
    c = compare_pair(flip, ref)
    assert c.status == "reproduced (selection drift)" and c.layers_differing == 1 and c.layers == 2
    far = compare_pair(lm_record(ppl=110.0, kept=(0, 2)), ref)  # 10% > the 5% flip tolerance
    assert far.status == "DRIFTED"


def test_sizes_are_exact_in_both_tiers():
    rec = lm_record(kept=(0, 2))
    rec.metrics["size"]["params_pruned"] = 601
    assert compare_pair(rec, lm_record()).status == "DRIFTED"
    assert TOLERANCES["size"][1].holds(600, 600) and not TOLERANCES["size"][1].holds(601, 600)


def test_stores_missing_new_and_exit_status(tmp_path, capsys):
    new, ref = ResultStore(tmp_path / "new"), ResultStore(tmp_path / "ref")
    for store in (new, ref):
        store.put(lm_record())
    ref.put(lm_record(seed=1))  # only in the reference: missing
    new.put(lm_record(seed=2))  # only in the new run: new
    statuses = sorted(c.status for c in compare_stores(new.root, ref.root))
    assert statuses == ["missing", "new", "reproduced"]
    out = tmp_path / "reproduction.md"
    assert main([str(new.root), str(ref.root), "--out", str(out)]) == 1
    text = out.read_text()
    assert "1 reproduced" in text and "1 missing" in text and "1 new" in text
    assert "did not reproduce" in capsys.readouterr().err
    drifted = copy.deepcopy(lm_record())
    drifted.metrics["pruned"]["wiki"]["ppl"] = 150.0
    new.put(drifted)
    ref.put(lm_record(seed=2))
    (ref.root / "lm_perplexity" / f"{lm_record(seed=1).key}.json").unlink()
    assert main([str(new.root), str(ref.root)]) == 1  # DRIFTED
    new.put(lm_record())
    assert main([str(new.root), str(ref.root)]) == 0


def test_experiments_restricts_both_stores(tmp_path):
    """reproduce compares only its own sweeps: a long ablation's reference records are not 'missing'."""
    new, ref = ResultStore(tmp_path / "new"), ResultStore(tmp_path / "ref")
    for store in (new, ref):
        store.put(lm_record())
    long_run = dataclasses.replace(lm_record(seed=7), experiment="ablation_calibration_lm")
    ref.put(long_run)  # in the reference only, under another experiment
    assert sorted(c.status for c in compare_stores(new.root, ref.root)) == ["missing", "reproduced"]
    assert [c.status for c in compare_stores(new.root, ref.root, ["lm_perplexity"])] == ["reproduced"]
    assert main([str(new.root), str(ref.root), "--experiments", "lm_perplexity"]) == 0
    assert main([str(new.root), str(ref.root)]) == 1
    assert main([str(new.root), str(ref.root), "--experiments", "lm_perplexity", "--update-reference"]) == 0
    assert {r.experiment for r in ref.records()} == {"lm_perplexity", "ablation_calibration_lm"}  # left alone


def test_update_reference_replaces_the_experiments(tmp_path):
    new, ref = ResultStore(tmp_path / "new"), ResultStore(tmp_path / "ref")
    new.put(lm_record())
    ref.put(lm_record(seed=5))  # stale: gone after the update
    assert update_reference(new.root, ref.root) == 1
    assert [r.key for r in ref.records()] == [lm_record().key]


def test_missing_store_is_a_clear_error(tmp_path, capsys):
    assert main([str(tmp_path / "nope"), str(tmp_path)]) == 2
    assert "new store" in capsys.readouterr().err


def test_the_report_names_the_processors_and_why_a_selection_may_flip():
    from benchmarks.compare import format_report

    def on(record, cpu, gpu=None):
        return dataclasses.replace(record, provenance={"device": {"cpu": cpu, **({"gpu": gpu} if gpu else {})}})

    same = compare_pair(on(lm_record(), "AMD EPYC"), on(lm_record(), "AMD EPYC"))
    text = format_report([same], "new", "ref")
    assert "**Machines:** 1 run new on AMD EPYC, reference on AMD EPYC." in text and "may flip" not in text
    flip = compare_pair(on(lm_record(kept=(0, 2), seed=1), "Intel Xeon", "H200"), on(lm_record(seed=1), "AMD EPYC"))
    text = format_report([same, flip], "new", "ref")
    assert "1 run new on Intel Xeon + H200, reference on AMD EPYC" in text and "may flip (selection drift)" in text
    assert "**Machines:**" not in format_report([compare_pair(lm_record(), lm_record())], "new", "ref")
