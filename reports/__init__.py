"""Tables and figures from result-store records: ``python -m reports --store results/records --out reports/output``.

``reports.build.build_report(store_root, out_dir) -> Path`` builds everything into one ``index.md``.
"""

from reports.build import build_report

__all__ = ["build_report"]
