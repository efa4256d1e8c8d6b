"""Paired perplexity comparison of two runs on the same evaluation windows (per-window NLLs).

Used by the LM tables (ratio to ZipLM, bold perplexities) and figures (ratio panels), and by the LM
ablations (one ratio per calibration seed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from reports.tables_common import method_sorted

def paired_nll_ratio(a: Sequence[float], b: Sequence[float], z: float = 1.96) -> tuple[float, float, float]:
    """Perplexity ratio of run a over run b on the same windows, paired: exp(mean_w d_w) with
    d_w = nll_a,w − nll_b,w (mean token NLL of window w), and exp(mean ± z·SE) with SE = sd(d)/√n.

    Equal-length windows make exp(mean d) exactly ppl_a / ppl_b. n = 1 gives an unbounded range.
    """
    if len(a) != len(b) or not len(a):
        raise ValueError(f"paired windows needed: got {len(a)} and {len(b)} values")
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    mean = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.inf
    return math.exp(mean), math.exp(mean - z * se), math.exp(mean + z * se)


def paired_ratios(sub: pd.DataFrame, corpus: str, reference: str = "ziplm") -> pd.DataFrame:
    """Per target, each method's perplexity over ``reference``'s on the same windows of ``corpus``.

    sub: lm rows with ``method_label`` and ``window_nll:<corpus>``. Returns rows (target, method_label,
    src: the row's index in ``sub``, ratio, lo, hi, windows, is_reference); the reference's own row
    has ratio 1 and no range. Rows whose windows differ from the reference's are left out."""
    col = f"window_nll:{corpus}"
    rows = []
    for target, tsub in sub.groupby("target", sort=False):
        ref = tsub[(tsub["method"] == reference) & tsub[col].map(lambda v: isinstance(v, list) and len(v) > 0)]
        if ref.empty:
            continue
        ref_w = ref[col].iloc[-1]
        rows.append({"target": target, "method_label": f"{reference} (reference)", "src": ref.index[-1],
                     "ratio": 1.0, "lo": np.nan, "hi": np.nan, "windows": len(ref_w), "is_reference": True})
        for i, r in method_sorted(tsub, ["target_sort"]).iterrows():
            w = r[col]
            if r["method"] == reference or not isinstance(w, list) or len(w) != len(ref_w):
                continue
            ratio, lo, hi = paired_nll_ratio(w, ref_w)
            rows.append({"target": target, "method_label": r["method_label"], "src": i, "ratio": ratio, "lo": lo,
                         "hi": hi, "windows": len(w), "is_reference": False})
    return pd.DataFrame(rows)
