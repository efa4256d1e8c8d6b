"""Every report table, by report section: ``all_tables(records) -> {section: [Table, ...]}``.

The builders live by what they tabulate (imports flow one way: this registry → ``tables_*`` →
``tables_common`` / ``paired`` → ``records`` / ``table``): :mod:`reports.tables_lm` (language models),
:mod:`reports.tables_vision`, :mod:`reports.tables_runtime` (solver time, measured speedup) and
:mod:`reports.tables_ablation` (calibration size, t̂/p̂).
"""

from __future__ import annotations

from collections.abc import Callable

from reports.table import Table
from reports.tables_ablation import calibration_tables, tp_tables
from reports.tables_claim import allocation_tables, claim_tables
from reports.tables_lm import (lm_calibration_tables, lm_cost_tables, lm_damping_tables, lm_layer_error_section,
                               lm_paired_tables, lm_perplexity_tables, lm_zero_shot_tables)
from reports.tables_runtime import runtime_tables, speedup_table
from reports.tables_vision import vision_accuracy_tables

BUILDERS: dict[str, Callable[..., list[Table]]] = {
    "lm_perplexity": lm_perplexity_tables,
    "lm_paired": lm_paired_tables,
    "lm_zeroshot": lm_zero_shot_tables,
    "lm_cost": lm_cost_tables,
    "lm_layer_error": lm_layer_error_section,
    "vision_accuracy": vision_accuracy_tables,
    "speedup": speedup_table,
    "pruning_runtime": runtime_tables,
    "ablation_calibration": calibration_tables,
    "ablation_tp": tp_tables,
    "lm_calibration": lm_calibration_tables,
    "lm_damping": lm_damping_tables,
    "claim": claim_tables,
    "allocation_global": allocation_tables,
}


def all_tables(records) -> dict[str, list[Table]]:
    """Section name → its tables (possibly empty), in report order."""
    return {name: build(records) for name, build in BUILDERS.items()}
