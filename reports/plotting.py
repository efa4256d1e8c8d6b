"""What every report figure shares: the publication style, per-method colours, markers and line
styles, log axes with one tick format, file writing (PNG + PDF, atomic) and the legend.

Colours, markers and line styles are fixed per method, so a method looks the same in every
figure; two methods never share a (marker, line style) pair, so overlapping lines stay apart.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib as mpl
import pandas as pd
from matplotlib.figure import Figure as MplFigure

from reports.tables_common import METHOD_ORDER, method_rank

STYLE: dict[str, Any] = {
    "figure.dpi": 100, "savefig.dpi": 200, "savefig.bbox": "tight", "savefig.pad_inches": 0.05,
    "font.size": 9, "axes.titlesize": 9.5, "axes.labelsize": 9, "legend.fontsize": 7.5, "xtick.labelsize": 8,
    "ytick.labelsize": 8, "figure.titlesize": 10, "font.family": "DejaVu Sans",
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
    "grid.linewidth": 0.5, "lines.linewidth": 1.5, "lines.markersize": 5, "legend.frameon": False,
    "pdf.fonttype": 42, "ps.fonttype": 42,  # embed TrueType (editable text in the PDF)
}

_PALETTE = mpl.colormaps["tab10"].colors
_OSSCAR_RED = "#d62728"
_OTHERS = [c for c in _PALETTE if mpl.colors.to_hex(c) != _OSSCAR_RED]  # red is OSSCAR's alone
_LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1)), (0, (3, 1)), (0, (1, 2)))
METHOD_STYLE: dict[str, tuple[Any, str, Any]] = {  # method -> (colour, marker, line style)
    m: (_OTHERS[i % len(_OTHERS)], "os^vD<>ph"[i % 9], _LINESTYLES[i % len(_LINESTYLES)])
    for i, m in enumerate(METHOD_ORDER[1:])
}
METHOD_STYLE["osscar"] = (_OSSCAR_RED, "*", "-")
HOLLOW = ("ziplm",)  # drawn with open markers: where OSSCAR's star sits on them, both stay visible


def method_style(label: str) -> dict[str, Any]:
    """Line/marker keyword arguments of a method (its label may carry parameters in brackets)."""
    base = str(label).split(" (", 1)[0]
    color, marker, ls = METHOD_STYLE.get(base, ("0.35", "x", "-"))
    style = {"color": color, "marker": marker, "ls": ls, "markersize": 9 if marker == "*" else 5.5}
    if base in HOLLOW:
        style.update(mfc="white", mew=1.4, markersize=8)
    return style


def marker_style(label: str) -> dict[str, Any]:
    """:func:`method_style` for ``ax.scatter`` / ``ax.errorbar`` without a line."""
    return {k: v for k, v in method_style(label).items() if k != "ls"}


def jitter(methods: list[str], width: float) -> dict[str, float]:
    """Small x offsets per method (centred on 0, total spread ``width``) so markers at one x do not hide each other."""
    n = len(methods)
    return {m: (i - (n - 1) / 2) * (width / max(n - 1, 1)) for i, m in enumerate(methods)}


@contextlib.contextmanager
def publication_style() -> Iterator[None]:
    """The one style every figure of the report is drawn in (rcParams restored on exit)."""
    with mpl.rc_context(STYLE):
        yield


def subplots(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (4.2, 3.0), **kw: Any) -> tuple[Any, Any]:
    """A pyplot-free figure (no GUI backend, no global figure registry): safe in any process."""
    fig = MplFigure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(nrows, ncols, **kw)


@dataclass
class Figure:
    name: str
    title: str
    caption: str
    paths: dict[str, Path] = field(default_factory=dict)


def save(fig: Any, folder: Path, name: str) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for ext in ("png", "pdf"):
        path = folder / f"{name}.{ext}"
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=f".{ext}")
        os.close(fd)
        try:
            # no creation date in the PDF: the same records give the same bytes
            fig.savefig(tmp, format=ext, metadata={"CreationDate": None} if ext == "pdf" else None)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        out[ext] = path
    return out


def titles(fig: Any, title: str, subtitle: str) -> None:
    fig.suptitle(f"{title}\n{subtitle}", fontsize=9.5)


def log_axis(ax: Any, axis: str = "y", base: float = 10) -> None:
    """Log scale with one tick format per axis: plain numbers (20, 50, 100) on short axes, powers of
    ten (10³, 10⁴, …) for every decade on long ones — never a mix."""
    from matplotlib import ticker

    getattr(ax, f"set_{axis}scale")("log", base=base)
    a = getattr(ax, f"{axis}axis")
    if base != 10:
        a.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        return
    lo, hi = (ax.get_ylim() if axis == "y" else ax.get_xlim())
    decades = math.log10(max(hi, 1e-300) / max(lo, 1e-300)) if lo > 0 else 0.0
    if decades > 2.5 or hi >= 1e4:
        a.set_major_locator(ticker.LogLocator(base=10, numticks=12))
        a.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"$10^{{{round(math.log10(v))}}}$" if v > 0 else ""))
        a.set_minor_formatter(ticker.NullFormatter())
        return
    a.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    # label 2 and 5 between decades on short axes
    a.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.1e}"[0] in "25" else ""))


def methods_of(df: pd.DataFrame, col: str = "method_label") -> list[str]:
    return sorted(df[col].dropna().unique(), key=method_rank)


def fixture_tag(df: pd.DataFrame) -> str:
    return " [FIXTURE DATA]" if "fixture" in df and df["fixture"].any() else ""


def figure_legend(fig: Any, axes: list[Any]) -> None:
    handles, labels = {}, []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    if handles:
        fig.legend([handles[lab] for lab in labels], labels, loc="outside lower center",
                   ncol=min(len(labels), 5), frameon=False)


