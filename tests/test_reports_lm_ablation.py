"""The LM ablation sections of the report (#16): calibration size and damping over calibration seeds.

Records are synthetic: copies of a committed lm_perplexity record (results/records) with the sweep's
config fields and seeded random per-window NLLs and layer errors. Every number checked here is
recomputed by hand from the windows written into the store.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from reports import build_report
from reports.lm_ablation import CALIBRATION, DAMPING, ablation_runs, seed_verdict
from reports.records import load_records
from reports.tables_lm import lm_calibration_tables, lm_damping_tables, lm_layer_error_section
from benchmarks.store import ResultStore, RunRecord

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "results" / "records" / "lm_perplexity" / "1d4892c8cee27ae6.json"  # osscar, 50% heads+neurons
CORPUS = "wiki-gensim"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def synthetic_store(root: Path, seed: int = 0, windows: int = 32, skip: tuple = (), far_mp: bool = True,
                    damping_runs: bool = True, calib_runs: bool = True, calib_config: dict | None = None) -> dict:
    """Write ablation_calibration_lm (osscar/ziplm/mp+ × n 16/64/256 × seeds 0-2) and ablation_damping_lm
    (osscar/ziplm × λ 0.001/0.1/1 × seeds 0-2, n 16) records under ``root``; ``skip`` holds
    (experiment, method, n_samples, damping, seed) tuples left out; ``calib_config`` overrides config fields of
    the calibration sweep's runs. Returns {(exp, method, n, λ, seed): windows}."""
    rng = np.random.default_rng(seed)
    tpl = json.loads(TEMPLATE.read_text())
    base = 4.9 + 0.3 * rng.standard_normal(windows)  # the evaluation windows, shared by every run
    store, out = ResultStore(root), {}
    grid = []
    if calib_runs:
        grid += [("ablation_calibration_lm", m, n, 0.01) for m in ("osscar", "ziplm", "mp+") for n in (16, 64, 256)]
    if damping_runs:
        grid += [("ablation_damping_lm", m, 16, lam) for m in ("osscar", "ziplm") for lam in (0.001, 0.1, 1.0)]
    for i, (exp, method, n, lam) in enumerate(grid):
        for s in (0, 1, 2):
            if (exp, method, n, lam, s) in skip:
                continue
            level = 0.4 / math.log2(n) + 0.05 * abs(math.log10(lam / 0.01)) + 0.03 * s
            shift = {"ziplm": 0.0, "osscar": 0.03 - 0.004 * math.log2(n), "mp+": 6.0 if far_mp else 0.2}[method]
            w = base + level + shift + 0.02 * rng.standard_normal(windows)
            cfg = {**tpl["config"], "method": method, "n_samples": n, "damping": lam, "seed": s,
                   "eval_windows": windows, "head_fraction": 0.5, "neuron_fraction": 0.5, "heldout_samples": 4}
            if exp == "ablation_calibration_lm":
                cfg.update(calib_config or {})
            m = copy.deepcopy(tpl["metrics"])
            m["pruned"][CORPUS].update(window_nll=[float(v) for v in w], nll=float(w.mean()), ppl=float(np.exp(w.mean())),
                                       windows=windows)
            for L in m["layers"]:
                L["calib_rel_error"] = float(0.1 + 0.05 * rng.random())
                L["heldout_rel_error"] = float(L["calib_rel_error"] * (1 + 2.0 / math.log2(n) + 0.1 * rng.random()))
            store.put(RunRecord(exp, "lm", cfg, m, {**tpl["provenance"], "fixture": True}, "t0",
                                f"2026-01-01T00:{i:02d}:{s:02d}"))
            out[(exp, method, n, lam, s)] = w
    return out


def by_label(t, label_value: str, method: str):
    label = t.label_cols[0]
    rows = t.data[(t.data[label] == label_value) & (t.data["method"] == method)]
    assert len(rows) == 1, (label_value, method, t.data[[label, "method"]])
    return rows.iloc[0]


def test_tie_rule():
    assert seed_verdict([0.98, 0.99, 0.995]) == "lower"
    assert seed_verdict([1.01, 1.2]) == "higher"
    assert seed_verdict([0.98, 1.01, 0.99]) == "tie"
    assert seed_verdict([0.9]) == "1 seed" and seed_verdict([]) == "—"


def test_calibration_table_numbers_by_hand(tmp_path):
    w = synthetic_store(tmp_path / "s")
    t = lm_calibration_tables(load_records(tmp_path / "s"))
    assert [x.name for x in t] == ["lm_calibration"]
    t = t[0]
    assert t.label_cols == ["calibration tokens", "method"]
    assert list(t.data["calibration tokens"].unique()) == ["4096 (16 × 256)", "16384 (64 × 256)", "65536 (256 × 256)"]
    assert list(t.data["method"][:3]) == ["mp+", "ziplm", "osscar"]
    for n in (16, 64, 256):
        row = by_label(t, f"{n * 256} ({n} × 256)", "osscar")
        ppl = [math.exp(w["ablation_calibration_lm", "osscar", n, 0.01, s].mean()) for s in (0, 1, 2)]
        assert row["ppl mean"] == pytest.approx(np.mean(ppl)) and row["seeds"] == 3
        assert (row["ppl min"], row["ppl max"]) == pytest.approx((min(ppl), max(ppl)))
        ratios = [math.exp(np.mean(w["ablation_calibration_lm", "osscar", n, 0.01, s]
                                   - w["ablation_calibration_lm", "ziplm", n, 0.01, s])) for s in (0, 1, 2)]
        assert [row[f"ratio s={s}"] for s in (0, 1, 2)] == pytest.approx(ratios)
        assert row["ratio (geo. mean)"] == pytest.approx(math.exp(np.mean(np.log(ratios))))
        expect = "lower" if max(ratios) < 1 else "higher" if min(ratios) > 1 else "tie"
        assert row["vs ziplm"] == expect
        ref = by_label(t, f"{n * 256} ({n} × 256)", "ziplm")
        assert ref["vs ziplm"] == "reference" and ref["ratio (geo. mean)"] == 1.0
    # osscar's synthetic shift is +0.014 nats at n=16 (all seeds above ZipLM), −0.002 at n=256 (inside the noise)
    assert by_label(t, "4096 (16 × 256)", "osscar")["vs ziplm"] == "higher"
    assert by_label(t, "4096 (16 × 256)", "mp+")["vs ziplm"] == "higher"
    # the layer errors: the mean over every layer of the run, then over seeds
    recs = [r for r in load_records(tmp_path / "s") if r.experiment == "ablation_calibration_lm"
            and r.config["method"] == "osscar" and r.config["n_samples"] == 64]
    held = np.mean([np.mean([L["heldout_rel_error"] for L in r.metrics["layers"]]) for r in recs])
    row = by_label(t, "16384 (64 × 256)", "osscar")
    assert row["held-out error"] == pytest.approx(held)
    assert "tie when 1 lies inside the spread" in t.full_caption()


def test_bold_only_where_every_seed_is_below_ziplm(tmp_path):
    synthetic_store(tmp_path / "s", far_mp=False)
    t = lm_calibration_tables(load_records(tmp_path / "s"))[0]
    mask = t.best_mask()
    for i, row in t.data.iterrows():
        assert mask.loc[i, "ratio (geo. mean)"] == (row["vs ziplm"] == "lower")


def test_partial_records_and_missing_seed_pairs(tmp_path):
    skip = (("ablation_calibration_lm", "ziplm", 64, 0.01, 1), ("ablation_calibration_lm", "osscar", 256, 0.01, 0),
            ("ablation_calibration_lm", "osscar", 256, 0.01, 2))
    synthetic_store(tmp_path / "s", skip=skip)
    t = lm_calibration_tables(load_records(tmp_path / "s"))[0]
    row = by_label(t, "16384 (64 × 256)", "osscar")
    assert math.isnan(row["ratio s=1"]) and not math.isnan(row["ratio s=0"])  # no ZipLM run of seed 1 to pair with
    assert by_label(t, "16384 (64 × 256)", "ziplm")["seeds"] == 2
    row = by_label(t, "65536 (256 × 256)", "osscar")
    assert row["seeds"] == 1 and row["vs ziplm"] == "1 seed"


def test_damping_borrows_the_default_point_from_the_calibration_sweep(tmp_path):
    w = synthetic_store(tmp_path / "s")
    recs = load_records(tmp_path / "s")
    df, notes = ablation_runs(recs, DAMPING)
    assert sorted(df["damping"].unique()) == [0.001, 0.01, 0.1, 1.0]
    borrowed = df[df["borrowed"]]
    assert len(borrowed) == 6 and set(borrowed["method"]) == {"osscar", "ziplm"} and set(borrowed["n_samples"]) == {16}
    assert "6 run(s) of ablation_calibration_lm" in notes[0]
    t = lm_damping_tables(recs)
    assert [x.name for x in t] == ["lm_damping"]
    t = t[0]
    assert list(t.data["damping λ"].unique()) == ["0.001", "0.01 *", "0.1", "1"]
    row = by_label(t, "0.01 *", "osscar")
    ratios = [math.exp(np.mean(w["ablation_calibration_lm", "osscar", 16, 0.01, s]
                               - w["ablation_calibration_lm", "ziplm", 16, 0.01, s])) for s in (0, 1, 2)]
    assert [row[f"ratio s={s}"] for s in (0, 1, 2)] == pytest.approx(ratios)
    assert set(t.data["method"]) == {"ziplm", "osscar"}  # mp+ of the calibration sweep is not borrowed


def test_damping_without_the_calibration_sweep_says_so(tmp_path):
    synthetic_store(tmp_path / "s", calib_runs=False)
    recs = load_records(tmp_path / "s")
    df, notes = ablation_runs(recs, DAMPING)
    assert sorted(df["damping"].unique()) == [0.001, 0.1, 1.0] and not df["borrowed"].any()
    assert "default-λ points are absent" in notes[0]
    assert "absent" in lm_damping_tables(recs)[0].full_caption()


def test_borrowed_runs_must_match_the_config(tmp_path):
    synthetic_store(tmp_path / "s", calib_config={"heldout_samples": 8})  # another held-out set: not comparable
    df, notes = ablation_runs(load_records(tmp_path / "s"), DAMPING)
    assert not df["borrowed"].any() and "differ in: heldout_samples" in notes[0]


def test_layer_error_section_covers_the_ablations(tmp_path):
    synthetic_store(tmp_path / "s")
    recs = load_records(tmp_path / "s")
    tables = lm_layer_error_section(recs)
    names = [t.name for t in tables]
    assert names == ["lm_layer_error_ablation_calibration_lm_smollm2-135m_wiki-gensim",
                     "lm_layer_error_ablation_damping_lm_smollm2-135m_wiki-gensim"]
    t = tables[0]
    row = by_label(t, "4096 (16 × 256)", "ziplm")
    rs = [r for r in recs if r.experiment == "ablation_calibration_lm" and r.config["method"] == "ziplm"
          and r.config["n_samples"] == 16]
    attn = [np.mean([L["heldout_rel_error"] for L in r.metrics["layers"] if L["part"] == "attn"]) for r in rs]
    assert row["attention held-out"] == pytest.approx(np.mean(attn)) and row["seeds"] == 3


def test_report_sections_and_figures(tmp_path):
    synthetic_store(tmp_path / "s", skip=(("ablation_damping_lm", "ziplm", 16, 1.0, 2),))
    index = build_report(tmp_path / "s", tmp_path / "out")
    text = index.read_text()
    for name in ("lm_calibration", "lm_damping"):
        png = tmp_path / "out" / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 20000
        assert png.with_suffix(".pdf").is_file()
        assert f"](figures/{name}.png)" in text
        assert (tmp_path / "out" / "tables" / f"{name}.csv").is_file()
    assert "## Ablation: calibration size, language model" in text
    assert "**ablation_calibration_lm** — no records" not in text


def test_missing_ablations_are_listed(tmp_path):
    synthetic_store(tmp_path / "s", calib_runs=False, damping_runs=False)
    text = build_report(tmp_path / "s", tmp_path / "out").read_text()
    assert "**ablation_calibration_lm** — no records" in text and "**ablation_damping_lm** — no records" in text
    assert not list((tmp_path / "out" / "figures").glob("lm_*"))
    assert lm_calibration_tables([]) == [] and CALIBRATION.experiment == "ablation_calibration_lm"
