"""Paired perplexity ratios (reports/paired.py) against an independent computation.

Ground truth: the ratio of two perplexities is exp of the mean per-window NLL difference, its 95% range
exp(mean ± 1.96·s/√n) with ``statistics.stdev`` (the sample standard deviation); which rows
``paired_ratios`` compares (same target, same windows, the reference's latest row) is written out by hand.
"""

from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd
import pytest

from reports.paired import paired_nll_ratio, paired_ratios

COL = "window_nll:wikitext2"


def _truth(a: list[float], b: list[float]) -> tuple[float, float, float]:
    d = [x - y for x, y in zip(a, b)]
    mean, half = statistics.fmean(d), 1.96 * statistics.stdev(d) / math.sqrt(len(d))
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def test_two_windows_already_give_a_finite_range():
    a, b = [2.0, 2.5], [1.5, 1.75]
    assert paired_nll_ratio(a, b) == pytest.approx(_truth(a, b), rel=1e-12)
    assert math.isfinite(paired_nll_ratio(a, b)[2])


def _rows(*rows: tuple) -> pd.DataFrame:
    """Rows (target, method, windows) in store order, as the LM tables hand them over."""
    df = pd.DataFrame([{"target": t, "target_sort": t, "method": m, "method_label": m, COL: w} for t, m, w in rows])
    df.index = [f"r{i}" for i in range(len(df))]
    return df


def test_ratios_to_the_default_reference_ziplm_with_its_own_row():
    df = _rows((0.5, "ziplm", [1.0, 1.2, 0.9]), (0.5, "osscar", [0.8, 1.0, 0.85]))
    out = paired_ratios(df, "wikitext2")  # the reference is ziplm unless given
    ref, os_ = out.iloc[0].to_dict(), out.iloc[1].to_dict()
    assert ref["target"] == 0.5 and ref["method_label"] == "ziplm (reference)" and ref["src"] == "r0"
    assert ref["ratio"] == 1.0 and np.isnan(ref["lo"]) and np.isnan(ref["hi"]) and ref["windows"] == 3
    assert ref["is_reference"] and not os_["is_reference"]
    assert (os_["ratio"], os_["lo"], os_["hi"]) == pytest.approx(_truth([0.8, 1.0, 0.85], [1.0, 1.2, 0.9]))
    assert os_["src"] == "r1" and os_["windows"] == 3


def test_targets_keep_their_order_and_one_without_a_reference_does_not_stop_the_rest():
    df = _rows((0.7, "ziplm", [1.0, 2.0]), (0.7, "mp", [1.5, 2.5]),
               (0.3, "mp", [1.0, 1.0]),                      # no reference at this target: left out
               (0.5, "ziplm", [1.0, 1.0]), (0.5, "mp", [1.2, 1.1]))
    out = paired_ratios(df, "wikitext2")
    assert list(out["target"]) == [0.7, 0.7, 0.5, 0.5]  # the store's order of targets, not sorted


def test_the_references_windows_must_be_a_non_empty_list():
    # an empty list is no reference; one window is one (a ratio with an unbounded range)
    empty = paired_ratios(_rows((0.5, "ziplm", []), (0.5, "mp", [])), "wikitext2")
    assert empty.empty
    one = paired_ratios(_rows((0.5, "ziplm", [1.0]), (0.5, "mp", [1.5])), "wikitext2")
    assert list(one["windows"]) == [1, 1] and one.iloc[1]["ratio"] == pytest.approx(math.exp(0.5))
    assert one.iloc[1]["hi"] == math.inf
    alone = paired_ratios(_rows((0.5, "ziplm", [1.0, 2.0])), "wikitext2")  # the reference's row alone: every column
    assert list(alone.columns) == ["target", "method_label", "src", "ratio", "lo", "hi", "windows", "is_reference"]


def test_a_method_on_other_windows_is_left_out_and_the_latest_reference_counts():
    df = _rows((0.5, "ziplm", [9.0, 9.0]), (0.5, "ziplm", [1.0, 1.0, 1.0]),
               (0.5, "mp", [1.0, 1.0]), (0.5, "osscar", [0.5, 0.5, 0.6]))
    out = paired_ratios(df, "wikitext2", reference="ziplm")
    assert list(out["method_label"]) == ["ziplm (reference)", "osscar"]
    assert out.iloc[0]["src"] == "r1"
    assert out.iloc[1]["ratio"] == pytest.approx(math.exp(statistics.fmean([-0.5, -0.5, -0.4])))
