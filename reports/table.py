"""One report table: raw numbers, ranking rules and noise, written as Markdown, LaTeX and CSV.

A :class:`Table` holds raw numbers (the CSV is exactly those), which value columns are ranked and
in which direction (``"min"``: lower is better — perplexity, time, objective; ``"max"``: higher is
better — accuracy, speedup), and the rows the best is chosen within (``group_by``; e.g. one
target speedup). Reference rows (the dense model) are shown but never ranked.

A value is bold only when it is the best of its column (within its group) by more than the
column's noise: ``margins`` gives, per column, a function of (best, runner-up) values → the
smallest difference that counts (e.g. a binomial 95% half-width for accuracies, a relative
margin for single wall-time measurements); ``significant`` gives an explicit mask instead (the
paired perplexity table: a 95% range that excludes 1). Without a margin the best must be strictly
unique. Ties, or a best inside the noise of the runner-up, bold nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from osscar.io import atomic_write_text as write_text_atomic

LOWER, HIGHER = "min", "max"
DIRECTION_WORDS = {LOWER: "lower is better", HIGHER: "higher is better"}

Margin = Callable[[float, float], float]  # (best, runner-up) -> smallest difference that counts


def relative_margin(rel: float) -> Margin:
    """Noise proportional to the value (single timings: ``rel`` = the run-to-run spread)."""
    return lambda best, other: rel * max(abs(best), abs(other))


def binomial_margin(n: float, scale: float = 100.0, z: float = 1.96) -> Margin:
    """95% half-width of the difference of two accuracies on ``n`` examples (in units of ``scale``)."""
    def margin(best: float, other: float) -> float:
        p, q = best / scale, other / scale
        var = (p * (1 - p) + q * (1 - q)) / max(n, 1)
        return scale * z * math.sqrt(max(var, 0.0))
    return margin


def compact(v: float, spec: str) -> str:
    """``format(v, spec)``, but large values of fixed-point formats get 3 significant digits (41.7 k, 6.68 M)."""
    if spec.endswith("f") and abs(v) >= 1e3 and math.isfinite(v):
        for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(v) >= div:
                return f"{v / div:#.3g}".rstrip(".") + f" {unit}"
    return format(v, spec)


def _fmt(spec: str) -> Callable[[Any], str]:
    def f(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "—"
        if isinstance(v, (int, float, np.integer, np.floating)):
            return compact(float(v), spec)
        return str(v)
    return f


def clear_best(values: np.ndarray, direction: str, margin: Margin | None) -> np.ndarray:
    """Mask of the one value better than every other by more than its margin (all False otherwise)."""
    out = np.zeros(len(values), dtype=bool)
    finite = np.flatnonzero(np.isfinite(values))
    if len(finite) == 0:
        return out
    order = finite[np.argsort(values[finite] if direction == LOWER else -values[finite], kind="stable")]
    best = order[0]
    if len(order) == 1:
        out[best] = True
        return out
    runner = order[1]
    gap = abs(values[best] - values[runner])
    need = margin(values[best], values[runner]) if margin else 0.0
    if gap > need and not np.isclose(values[best], values[runner], rtol=1e-12, atol=0):
        out[best] = True
    return out


@dataclass
class Table:
    """One table: raw values + ranking rules + caption. ``data`` columns = label_cols + value_cols."""

    name: str
    title: str
    caption: str
    data: pd.DataFrame
    label_cols: list[str]
    value_cols: list[str]
    directions: dict[str, str] = field(default_factory=dict)  # value col -> LOWER / HIGHER
    formats: dict[str, str] = field(default_factory=dict)  # value col -> format spec (default .4g)
    group_by: list[str] = field(default_factory=list)  # rank within groups of these label cols
    scope: str = "column"  # "column": best per column (per group); "table": one best over all ranked cells
    reference: pd.Series | None = None  # bool per row: shown, never ranked (dense)
    notes: list[str] = field(default_factory=list)
    margins: dict[str, Margin] = field(default_factory=dict)  # value col -> noise (see module docstring)
    margin_note: str = ""  # how the margins were set, for the caption
    significant: pd.DataFrame | None = None  # explicit bold mask over value_cols (overrides the ranking)
    significant_note: str = "Bold: significantly better than the reference"  # what that mask means

    def __post_init__(self) -> None:
        self.data = self.data.reset_index(drop=True)
        if self.reference is None:
            self.reference = pd.Series(False, index=self.data.index)
        else:
            self.reference = pd.Series(list(self.reference), index=self.data.index, dtype=bool)
        for c in self.directions:
            if c not in self.value_cols or self.directions[c] not in (LOWER, HIGHER):
                raise ValueError(f"table {self.name}: bad direction for {c!r}")

    # -- ranking -----------------------------------------------------------------------------------
    def best_mask(self) -> pd.DataFrame:
        """Bool frame over value_cols: True where the cell is clearly the best of its column (and group)."""
        if self.significant is not None:
            return self.significant.reindex(index=self.data.index, columns=self.value_cols).fillna(False).astype(bool)
        mask = pd.DataFrame(False, index=self.data.index, columns=self.value_cols)
        ranked = [c for c in self.value_cols if c in self.directions]
        if not ranked or self.data.empty:
            return mask
        rankable = ~self.reference
        groups = [self.data.index[rankable]] if not self.group_by else [
            sub.index.intersection(self.data.index[rankable])
            for _, sub in self.data.groupby(self.group_by, sort=False, dropna=False)]
        for idx in groups:
            if len(idx) == 0:
                continue
            if self.scope == "table":
                direction = {self.directions[c] for c in ranked}
                if len(direction) != 1:
                    continue
                vals = self.data.loc[idx, ranked].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
                flat = clear_best(vals.ravel(), direction.pop(), self.margins.get(ranked[0]))
                mask.loc[idx, ranked] = flat.reshape(vals.shape)
                continue
            for c in ranked:
                col = pd.to_numeric(self.data.loc[idx, c], errors="coerce").to_numpy(dtype=float)
                mask.loc[idx, c] = clear_best(col, self.directions[c], self.margins.get(c))
        return mask

    def formatted(self) -> pd.DataFrame:
        """Cells as strings (labels verbatim, values with their format)."""
        out = pd.DataFrame(index=self.data.index)
        for c in self.label_cols:
            out[c] = self.data[c].map(lambda v: "—" if v is None or (isinstance(v, float) and math.isnan(v))
                                      else f"{v:g}" if isinstance(v, float) else str(v))
        for c in self.value_cols:
            out[c] = self.data[c].map(_fmt(self.formats.get(c, ".4g")))
        return out

    def direction_note(self) -> str:
        if not self.directions and self.significant is None:
            return ""
        by: dict[str, list[str]] = {}
        for c, d in self.directions.items():
            by.setdefault(d, []).append(c)
        parts = [f"{DIRECTION_WORDS[d]}: {', '.join(cs) if len(cs) < len(self.directions) else 'all ranked columns'}"
                 for d, cs in by.items()]
        if self.significant is not None:
            scope = self.significant_note
        else:
            where = ("over the whole grid" if self.scope == "table" else
                     f"per column{' within each ' + ' / '.join(self.group_by) if self.group_by else ''}")
            scope = (f"Bold: the best {where}, only when it beats the runner-up by more than its noise "
                     f"({self.margin_note or 'no noise estimate: strictly unique best'}); ties and differences "
                     "inside the noise bold nothing")
        ref = "; dense rows are references, not ranked" if bool(self.reference.any()) else ""
        return f"{scope} ({'; '.join(parts)}){ref}." if parts else f"{scope}{ref}."

    def full_caption(self) -> str:
        return " ".join(p for p in (self.caption, self.direction_note(), *self.notes) if p)

    # -- writers -----------------------------------------------------------------------------------
    def to_markdown(self) -> str:
        cells = self.formatted()
        best = self.best_mask()
        for c in self.value_cols:
            cells.loc[best[c], c] = "**" + cells.loc[best[c], c] + "**"
        cols = self.label_cols + self.value_cols

        def esc(s: Any) -> str:
            return str(s).replace("|", "\\|")

        lines = ["| " + " | ".join(esc(c) for c in cols) + " |",
                 "|" + "|".join(":--" if c in self.label_cols else "--:" for c in cols) + "|"]
        lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in cells[cols].itertuples(index=False)]
        return "\n".join(lines) + "\n"

    def to_latex(self) -> str:
        cells = self.formatted()
        best = self.best_mask()
        for c in cells.columns:
            cells[c] = cells[c].map(latex_escape)
        for c in self.value_cols:
            cells.loc[best[c], c] = "\\textbf{" + cells.loc[best[c], c] + "}"
        cols = self.label_cols + self.value_cols
        cells = cells[cols]
        cells.columns = [latex_escape(c) for c in cols]
        styler = cells.style.hide(axis="index")
        return styler.to_latex(hrules=True, column_format="l" * len(self.label_cols) + "r" * len(self.value_cols),
                               caption=latex_escape(self.full_caption()), label=f"tab:{self.name}",
                               position="htbp", position_float="centering")

    def to_csv(self) -> str:
        return self.data[self.label_cols + self.value_cols].to_csv(index=False)

    def write(self, folder: str | Path) -> dict[str, Path]:
        folder = Path(folder)
        out = {}
        for ext, text in (("md", f"**{self.title}.** {self.full_caption()}\n\n{self.to_markdown()}"),
                          ("tex", self.to_latex()), ("csv", self.to_csv())):
            out[ext] = write_text_atomic(folder / f"{self.name}.{ext}", text)
        return out


_LATEX_WORDS = {"t̂": r"$\hat{t}$", "p̂": r"$\hat{p}$", "Ŵ": r"$\hat{W}$", "⁻¹": r"$^{-1}$", "ᵀ": r"$^\top$",
                "½": r"$\frac{1}{2}$", "−": "-", "→": r"$\to$", "↓": r"$\downarrow$", "↑": r"$\uparrow$",
                "‖": r"$\|$", "·": r"$\cdot$"}
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "×": r"$\times$", "—": "--", "–": "--", "≥": r"$\geq$", "≤": r"$\leq$"}


def latex_escape(s: Any) -> str:
    """Escape LaTeX specials; the few non-ASCII symbols the captions use become math."""
    s = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(s))
    for word, tex in _LATEX_WORDS.items():
        s = s.replace(word, tex)
    return s
