"""Tables and figures from result-store records: ``python -m reports --store results/records --out reports/output``.

``reports.build.build_report(store_root, out_dir) -> Path`` builds everything into one ``index.md``
(loaded on first use, so ``python -m reports --help`` does not import pandas or matplotlib).
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_report"]


def __getattr__(name: str) -> Any:
    if name == "build_report":
        from reports.build import build_report

        return build_report
    raise AttributeError(f"module 'reports' has no attribute {name!r}")
