"""reports/: tables (rows, columns, best marked), figures (files written), index.md (Missing section).

Runs on tests/fixtures/records: hand-written FIXTURE records (lm, vision, ablations) plus solver
records copied from one dev run; see tests/fixtures/records/make_fixtures.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pandas as pd
import pytest

from reports import build_report
from reports.records import load_records
from reports.table import HIGHER, LOWER, Table, latex_escape
from reports.tables_ablation import calibration_tables, tp_tables
from reports.tables_lm import lm_cost_tables, lm_perplexity_tables, lm_zero_shot_tables
from reports.tables_runtime import runtime_tables, speedup_table
from reports.tables_vision import vision_accuracy_tables

FIXTURES = Path(__file__).parent / "fixtures" / "records"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def records():
    recs = load_records(FIXTURES)
    assert recs, "fixture records missing"
    return recs


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    index = build_report(FIXTURES, out)
    return out, index


def best_cells(t: Table) -> set[tuple[str, ...]]:
    """(label values..., column) of every cell marked best."""
    mask = t.best_mask()
    out = set()
    for i, row in t.data.iterrows():
        for c in t.value_cols:
            if mask.loc[i, c]:
                out.add((*[str(row[lc]) for lc in t.label_cols], c))
    return out


def only(tables: list[Table]) -> Table:
    assert len(tables) == 1, [t.name for t in tables]
    return tables[0]


# -- tables ---------------------------------------------------------------------------------------


def test_lm_perplexity_table(records):
    t = only(lm_perplexity_tables(records))
    assert t.label_cols == ["target", "method"]
    assert t.value_cols == ["wiki-gensim", "wikitext2"]
    assert t.directions == {"wiki-gensim": LOWER, "wikitext2": LOWER}
    assert list(t.data["target"]) == ["dense"] + ["1.5× speedup"] * 3 + ["2× speedup"] * 3
    assert list(t.data["method"]) == ["dense", "mp", "ziplm", "osscar", "mp", "ziplm", "osscar"]
    assert t.data.loc[0, "wiki-gensim"] == 20.0  # dense row, from metrics.dense
    # the fixtures carry no per-window NLLs: no paired range, so no perplexity is bold
    assert best_cells(t) == set() and "paired 95% range" in t.full_caption()
    md = t.to_markdown()
    assert "| 2× speedup | osscar | 45.00 | 55.00 |" in md
    assert "| dense | dense | 20.00 | 25.00 |" in md
    assert "smollm2-135m" in t.caption and "wiki-gensim" in t.caption and "32 × 256" in t.caption
    assert "lower is better" in t.full_caption()
    tex = t.to_latex()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert "\\textbf" not in tex
    csv = pd.read_csv(pd.io.common.StringIO(t.to_csv()))
    assert list(csv.columns) == ["target", "method", "wiki-gensim", "wikitext2"] and len(csv) == 7
    assert "**" not in t.to_csv()


def test_zero_shot_tables_acc_and_acc_norm(records):
    tables = lm_zero_shot_tables(records)
    assert len(tables) == 2
    acc = next(t for t in tables if "acc_norm" not in t.name)
    norm = next(t for t in tables if "acc_norm" in t.name)
    for t in (acc, norm):
        assert t.value_cols == ["piqa", "arc_easy", "mean"]
        assert set(t.directions.values()) == {HIGHER}
        assert len(t.data) == 7
    assert acc.data.loc[acc.data["method"] == "osscar", "piqa"].tolist() == pytest.approx([64.0, 60.0])
    # 200 examples per task: a bold value beats the runner-up by more than the binomial 95% half-width
    _assert_bold_beats_runner_up(acc)
    _assert_bold_beats_runner_up(norm)
    # osscar's acc_norm on arc_easy is missing at 1.5×: shown as —, the mean left empty, ziplm best
    row = norm.data[(norm.data["method"] == "osscar") & (norm.data["target"] == "1.5× speedup")].iloc[0]
    assert pd.isna(row["arc_easy"]) and pd.isna(row["mean"])
    assert "| 1.5× speedup | osscar | 61.0 | — | — |" in norm.to_markdown()
    assert "missing" in norm.full_caption().lower()


def test_lm_cost_table(records):
    t = only(lm_cost_tables(records))
    assert {"prune [s]", "peak RSS while pruning [MiB]", "peak RSS, whole run [MiB]", "measured speedup",
            "FLOPs speedup"} <= set(t.value_cols)
    assert t.directions["peak RSS while pruning [MiB]"] == LOWER  # this run alone: ranked
    assert t.directions["prune [s]"] == LOWER and t.directions["measured speedup"] == HIGHER
    _assert_bold_beats_runner_up(t)


def test_vision_accuracy_table(records):
    t = only(vision_accuracy_tables(records))
    assert t.value_cols == ["FLOPs −30%", "FLOPs −50%"]
    assert list(t.data["method"]) == ["dense", "mp", "chip", "osscar"]
    assert t.data.loc[0, "FLOPs −30%"] == pytest.approx(92.5)
    assert best_cells(t) == {("osscar", "FLOPs −30%"), ("chip", "FLOPs −50%")}
    assert "resnet20" in t.caption and "1024 training images" in t.caption
    assert "higher is better" in t.full_caption()


def test_runtime_table(records):
    t = only(runtime_tables(records))
    assert t.label_cols == ["shape", "method"]
    assert {"prune [s]", "objective", "× one inverse", "ZipLM time / this", "one inverse [s]"} <= set(t.value_cols)
    assert len(t.data) == 9  # 3 shapes × 3 methods
    _assert_bold_beats_runner_up(t)
    zip_rows = t.data[t.data["method"] == "ziplm"]
    assert zip_rows["ZipLM time / this"].tolist() == pytest.approx([1.0] * 3)
    assert "speedup over ZipLM" in t.full_caption()


def test_speedup_table(records):
    t = only(speedup_table(records))
    assert set(t.data["experiment"]) == {"lm_perplexity", "vision_accuracy"}  # ablations left out
    assert t.data["measured speedup"].notna().all()


def test_calibration_table(records):
    tables = calibration_tables(records)
    assert {t.name for t in tables} == {"ablation_calibration_smollm2-135m_wiki-gensim",
                                        "ablation_calibration_smollm2-135m_wikitext2"}
    t = tables[0]
    assert t.value_cols == ["n=8", "n=16", "n=32"]
    assert list(t.data["method"]) == ["mp+", "osscar"]
    assert {c for *_, c in best_cells(t)} == set(t.value_cols)
    assert all(m == "osscar" for _, m, _ in best_cells(t))


def test_tp_table_marks_best_cell_of_grid(records):
    tables = tp_tables(records)
    top1 = next(t for t in tables if t.name.endswith("top1"))
    assert top1.label_cols == ["p̂"] and top1.value_cols == ["t̂=0", "t̂=2", "t̂=4"]
    assert list(top1.data["p̂"]) == ["1", "2"]
    _assert_bold_beats_runner_up(top1)
    time = next(t for t in tables if t.name.endswith("prune_seconds"))
    assert best_cells(time) == set()  # a tie: nothing marked
    assert "$\\hat{t}$=4" in top1.to_latex()


def _assert_bold_beats_runner_up(t: Table) -> None:
    """Every bold cell is its group's best and beats the runner-up by more than the column's margin."""
    mask = t.best_mask()
    groups = [t.data.index[~t.reference]] if not t.group_by else [
        g.index.intersection(t.data.index[~t.reference]) for _, g in t.data.groupby(t.group_by, sort=False)]
    for idx in groups:
        for c in t.value_cols:
            bold = [i for i in idx if mask.loc[i, c]]
            if not bold:
                continue
            assert len(bold) == 1 and c in t.directions
            vals = pd.to_numeric(t.data.loc[idx, c], errors="coerce").dropna()
            vals = vals.sort_values(ascending=t.directions[c] == LOWER)
            assert vals.index[0] == bold[0]
            if len(vals) > 1:
                margin = t.margins.get(c)
                need = margin(vals.iloc[0], vals.iloc[1]) if margin else 0.0
                assert abs(vals.iloc[0] - vals.iloc[1]) > need


def test_best_mask_direction_and_reference():
    data = pd.DataFrame({"method": ["dense", "a", "b"], "ppl": [1.0, 5.0, 3.0], "acc": [0.99, 0.5, 0.4]})
    t = Table("x", "x", "", data, ["method"], ["ppl", "acc"], {"ppl": LOWER, "acc": HIGHER},
              reference=pd.Series([True, False, False]))
    assert best_cells(t) == {("b", "ppl"), ("a", "acc")}
    with pytest.raises(ValueError):
        Table("y", "y", "", data, ["method"], ["ppl"], {"ppl": "down"})


def test_bold_only_beyond_the_noise_and_never_on_ties():
    from reports.table import binomial_margin, relative_margin

    data = pd.DataFrame({"method": ["a", "b", "c"], "acc": [90.0, 89.5, 80.0], "time": [1.0, 1.0, 3.0],
                         "t2": [1.0, 1.5, 3.0]})
    t = Table("x", "x", "", data, ["method"], ["acc", "time", "t2"], {"acc": HIGHER, "time": LOWER, "t2": LOWER},
              margins={"acc": binomial_margin(10000), "t2": relative_margin(0.3)})
    assert best_cells(t) == {("a", "t2")}  # 0.5 points < the 0.83-point binomial margin; time ties
    wide = Table("y", "y", "", data.assign(acc=[92.0, 89.5, 80.0]), ["method"], ["acc"], {"acc": HIGHER},
                 margins={"acc": binomial_margin(10000)})
    assert best_cells(wide) == {("a", "acc")}
    assert "beats the runner-up by more than its noise" in t.full_caption()


def test_large_values_get_three_significant_digits():
    from reports.table import compact

    assert compact(6676918.38, ".2f") == "6.68 M" and compact(41701.2, ".2f") == "41.7 k"
    assert compact(3000.0, ".0f") == "3.00 k" and compact(106000.0, ".1f") == "106 k"
    assert compact(97.0, ".2f") == "97.00" and compact(-98183.797, ".6g") == "-98183.8"


def test_latex_escape():
    assert latex_escape("a_b & 50% #1") == r"a\_b \& 50\% \#1"
    assert latex_escape("2×") == r"2$\times$"


# -- figures and the page -------------------------------------------------------------------------


def test_report_files(report):
    out, index = report
    assert index == out / "index.md" and index.is_file()
    pngs = sorted((out / "figures").glob("*.png"))
    names = {p.stem.split("_")[0] for p in pngs}
    assert {"ppl", "accuracy", "runtime", "calibration", "tp", "speedup"} <= names, names
    for p in pngs:
        assert p.stat().st_size > 5000 and p.read_bytes()[:8] == PNG_MAGIC
        assert p.with_suffix(".pdf").is_file() and p.with_suffix(".pdf").read_bytes()[:4] == b"%PDF"
    for ext in ("md", "tex", "csv"):
        assert (out / "tables" / f"pruning_runtime.{ext}").is_file()
    text = index.read_text()
    for p in pngs:
        assert f"](figures/{p.name})" in text  # every figure embedded
    assert "FIXTURE DATA" in text
    assert "Published reference numbers (not ours)" in text
    assert "14.62" in text and "125×" in text  # GPTQ dense OPT-1.3B WikiText-2; the paper's claim
    assert "## Missing" in text


def test_missing_experiment_is_reported(tmp_path):
    store = tmp_path / "store"
    shutil.copytree(FIXTURES, store, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    shutil.rmtree(store / "vision_accuracy")
    shutil.rmtree(store / "ablation_tp")
    # a record without zero-shot or latency: listed as absent, never invented
    path = next((store / "lm_perplexity").glob("*.json"))
    rec = json.loads(path.read_text())
    rec["metrics"]["pruned"].pop("zero_shot")
    rec["metrics"].pop("latency")
    path.write_text(json.dumps(rec))
    text = build_report(store, tmp_path / "out").read_text()
    missing = text.split("## Missing", 1)[1]
    assert "**vision_accuracy** — no records" in missing
    assert "**ablation_tp** — no records" in missing
    assert "lm_perplexity (lm): zero-shot acc" in missing and "1 of 6" in missing
    assert "measured latency" in missing
    assert "Vision: accuracy vs FLOPs" in missing  # its section has no table
    assert not list((tmp_path / "out" / "figures").glob("accuracy_vs_flops*"))


def test_empty_store(tmp_path):
    text = build_report(tmp_path / "nothing", tmp_path / "out").read_text()
    assert "No records found" in text
    for exp in ("lm_perplexity", "vision_accuracy", "pruning_runtime", "ablation_calibration", "ablation_tp"):
        assert f"**{exp}** — no records" in text


def test_stale_outputs_removed(tmp_path):
    out = tmp_path / "out"
    (out / "figures").mkdir(parents=True)
    stale = out / "figures" / "old_figure.png"
    stale.write_bytes(PNG_MAGIC)
    build_report(tmp_path / "nothing", out)
    assert not stale.exists()


def test_degenerate_records_do_not_crash(tmp_path):
    """Records with empty metrics (a pipeline that returned nothing) are reported as missing, not invented."""
    from benchmarks.store import ResultStore, RunRecord

    store = ResultStore(tmp_path / "store")
    lm_cfg = {"model": "smollm2-135m", "method": "osscar", "head_fraction": 0.3, "neuron_fraction": 0.2,
              "eval_corpora": ["wiki-gensim"], "n_samples": 8, "seqlen": 128, "calib_corpus": "wiki-gensim"}
    store.put(RunRecord("lm_perplexity", "lm", lm_cfg, {}, {}, "t0", "t1"))
    store.put(RunRecord("lm_perplexity", "lm", {**lm_cfg, "method": "mp"},
                        {"pruned": {"wiki-gensim": {"ppl": 33.0}}}, {}, "t0", "t2"))
    store.put(RunRecord("vision_accuracy", "vision", {"arch": "resnet20", "method": "mp", "flops_fraction": 0.4},
                        {}, {}, "t0", "t1"))
    store.put(RunRecord("pruning_runtime", "solver", {"shape": "ffn-1536", "method": "osscar", "keep": 0.5}, {}, {},
                        "t0", "t1"))
    opt = {**lm_cfg, "model": "facebook/opt-1.3b", "eval_corpora": ["wikitext2"], "eval_windows": 4, "seqlen": 2048}
    store.put(RunRecord("lm_perplexity", "lm", opt, {"dense": {"wikitext2": {"ppl": 14.7}}}, {}, "t0", "t3"))
    text = build_report(tmp_path / "store", tmp_path / "out").read_text()
    assert "| facebook/opt-1.3b | WikiText-2 | 14.62 | 14.70 | 4 × 2048 tok |" in text  # published beside ours
    assert "| heads 30% / neurons 20% | mp | 33.00 |" in text
    assert "| heads 30% / neurons 20% | osscar | — |" in text
    missing = text.split("## Missing", 1)[1]
    assert "lm_perplexity (lm): perplexity absent from 2 of 3" in missing
    assert "vision_accuracy (vision): top-1 accuracy absent from 1 of 1" in missing
    assert "pruning_runtime (solver): objective absent from 1 of 1" in missing


def test_paired_nll_ratio_is_the_ppl_ratio_with_a_paired_range():
    import math

    from reports.paired import paired_nll_ratio

    ratio, lo, hi = paired_nll_ratio([1.0, 1.2, 1.1], [1.0, 1.0, 1.0])
    se = 0.1 / math.sqrt(3)  # sd of the differences (0, 0.2, 0.1) is 0.1
    assert ratio == pytest.approx(math.exp(0.1)) and ratio == pytest.approx(math.exp(1.1) / math.exp(1.0))
    assert (lo, hi) == pytest.approx((math.exp(0.1 - 1.96 * se), math.exp(0.1 + 1.96 * se)))
    assert paired_nll_ratio([2.0], [1.0])[2] == math.inf  # one window: no range
    with pytest.raises(ValueError, match="paired windows"):
        paired_nll_ratio([1.0, 2.0], [1.0])


def test_lm_paired_table_compares_each_method_with_ziplm_on_the_same_windows(tmp_path):
    import math

    from reports.tables_lm import lm_paired_tables
    from benchmarks.store import ResultStore, RunRecord

    store = ResultStore(tmp_path / "store")
    cfg = {"model": "smollm2-135m", "head_fraction": 0.5, "neuron_fraction": 0.5, "eval_corpora": ["wiki-gensim"],
           "n_samples": 8, "seqlen": 128, "calib_corpus": "wiki-gensim"}
    windows = {"ziplm": [3.0, 3.2, 3.1, 2.9], "osscar": [3.1, 3.2, 3.2, 3.0], "mp+": [5.0, 5.5, 5.2, 4.9],
               "mp": [9.0, 9.0]}  # mp: other windows, left out
    for i, (m, w) in enumerate(windows.items()):
        store.put(RunRecord("lm_perplexity", "lm", {**cfg, "method": m},
                            {"pruned": {"wiki-gensim": {"ppl": math.exp(sum(w) / len(w)), "window_nll": w}}},
                            {}, "t0", f"t{i}"))
    t = only(lm_paired_tables(load_records(tmp_path / "store")))
    assert list(t.data["method"]) == ["ziplm (reference)", "mp+", "osscar"]
    osscar = t.data[t.data["method"] == "osscar"].iloc[0]
    assert osscar["ppl ratio"] == pytest.approx(math.exp(0.075)) and osscar["windows"] == 4
    assert osscar["95% low"] < osscar["ppl ratio"] < osscar["95% high"]
    assert best_cells(t) == set()  # osscar's and mp+'s ranges lie above 1: neither beats the reference
    ref = t.data[t.data["method"] == "ziplm (reference)"].iloc[0]
    assert ref["ppl ratio"] == 1.0 and pd.isna(ref["95% low"])


def test_perplexity_bold_needs_a_paired_range_below_one(tmp_path):
    import math

    from reports.tables_lm import lm_perplexity_tables
    from benchmarks.store import ResultStore, RunRecord

    store = ResultStore(tmp_path / "store")
    cfg = {"model": "smollm2-135m", "head_fraction": 0.5, "neuron_fraction": 0.5, "eval_corpora": ["wiki-gensim"],
           "n_samples": 8, "seqlen": 128, "calib_corpus": "wiki-gensim"}
    windows = {"ziplm": [3.0, 3.2, 3.1, 2.9], "osscar": [2.8, 3.0, 2.95, 2.7], "mp": [3.01, 3.19, 3.12, 2.9]}
    for i, (m, w) in enumerate(windows.items()):
        store.put(RunRecord("lm_perplexity", "lm", {**cfg, "method": m},
                            {"pruned": {"wiki-gensim": {"ppl": math.exp(sum(w) / len(w)), "window_nll": w}}},
                            {}, "t0", f"t{i}"))
    t = only(lm_perplexity_tables(load_records(tmp_path / "store")))
    assert best_cells(t) == {("heads 50% / neurons 50%", "osscar", "wiki-gensim")}  # clearly below ziplm
    (tmp_path / "store" / "lm_perplexity" / f"{RunRecord('lm_perplexity', 'lm', {**cfg, 'method': 'osscar'}, {}, {}, '', '').key}.json").unlink()
    t = only(lm_perplexity_tables(load_records(tmp_path / "store")))
    assert best_cells(t) == set()  # ziplm vs mp: inside the paired range


def test_layer_error_table_means_over_layers_and_ratio(tmp_path):
    from reports.tables_lm import lm_layer_error_tables
    from benchmarks.store import ResultStore, RunRecord

    store = ResultStore(tmp_path / "store")
    cfg = {"model": "smollm2-135m", "head_fraction": 0.5, "neuron_fraction": 0.5, "eval_corpora": ["wiki-gensim"],
           "n_samples": 8, "seqlen": 128, "calib_corpus": "wiki-gensim"}
    # (attn calib, attn held-out, mlp calib, mlp held-out) per block; two blocks
    errs = {"mp": [(0.4, 0.5, 0.2, 0.3), (0.6, 0.7, 0.4, 0.5)], "osscar": [(0.1, 0.2, 0.05, 0.1), (0.3, 0.4, 0.15, 0.2)]}
    for i, (m, blocks) in enumerate(errs.items()):
        layers = [{"part": part, "calib_rel_error": e[2 * j], "heldout_rel_error": e[2 * j + 1]}
                  for e in blocks for j, part in enumerate(("attn", "mlp"))]
        store.put(RunRecord("lm_perplexity", "lm", {**cfg, "method": m},
                            {"pruned": {"wiki-gensim": {"ppl": 30.0}}, "layers": layers}, {}, "t0", f"t{i}"))
    store.put(RunRecord("lm_perplexity", "lm", {**cfg, "method": "ziplm"},  # an older record: no held-out errors
                        {"pruned": {"wiki-gensim": {"ppl": 30.0}}, "layers": [{"part": "attn", "objective": -1.0}]},
                        {}, "t0", "t9"))
    t = only(lm_layer_error_tables(load_records(tmp_path / "store")))
    rows = t.data.set_index("method")
    assert rows.loc["osscar", "attention calibration"] == pytest.approx(0.2)
    assert rows.loc["osscar", "attention held-out"] == pytest.approx(0.3)
    assert rows.loc["osscar", "attention ratio"] == pytest.approx(1.5)
    assert rows.loc["mp", "MLP held-out"] == pytest.approx(0.4)
    assert rows.loc["mp", "MLP ratio"] == pytest.approx(0.4 / 0.3)
    assert pd.isna(rows.loc["ziplm", "attention held-out"])
    assert ("heads 50% / neurons 50%", "osscar", "attention held-out") in best_cells(t)
    assert any("Missing values" in n for n in t.notes)


def test_report_is_deterministic(report, tmp_path):
    """Two builds from the same records give byte-identical files (no timestamps), so a rebuild is no diff."""
    out, _ = report
    again = tmp_path / "again"
    build_report(FIXTURES, again)
    first = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    second = {p.relative_to(again): p.read_bytes() for p in sorted(again.rglob("*")) if p.is_file()}
    assert first.keys() == second.keys()
    differ = [str(k) for k in first if first[k] != second[k]]
    assert differ == []
