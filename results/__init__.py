"""Result records (one JSON file per run, keyed by its configuration) and their provenance.

The records themselves live in ``results/records/`` (the default store root).
"""

from results.store import ResultStore, RunRecord, config_key

__all__ = ["ResultStore", "RunRecord", "config_key"]
