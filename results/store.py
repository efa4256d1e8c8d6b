"""The result store: one JSON record per run, keyed by a hash of the run's full configuration.

Layout: ``<root>/<experiment>/<key>.json``. A record is written to a temporary file in the same
folder, flushed and fsynced, then renamed over the final name: a reader never sees half a
record, and a killed sweep loses only the run that was in progress.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Iterator

from osscar.io import atomic_write_text

RECORD_VERSION = 1


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_key(pipeline: str, config: dict[str, Any]) -> str:
    """Stable 16-hex-digit key of (pipeline, config)."""
    return hashlib.sha256(canonical_json({"pipeline": pipeline, "config": config}).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunRecord:
    """One finished run: its configuration, metrics and provenance."""

    experiment: str
    pipeline: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    provenance: dict[str, Any]
    started: str
    finished: str
    version: int = RECORD_VERSION
    key: str = field(default="")

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", config_key(self.pipeline, self.config))


class ResultStore:
    """Records under ``root``, one folder per experiment."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, experiment: str, key: str) -> Path:
        return self.root / experiment / f"{key}.json"

    def has(self, experiment: str, key: str) -> bool:
        return self.path(experiment, key).is_file()

    def get(self, experiment: str, key: str) -> RunRecord:
        return RunRecord(**json.loads(self.path(experiment, key).read_text()))

    def put(self, record: RunRecord) -> Path:
        path = self.path(record.experiment, record.key)
        atomic_write_text(path, json.dumps(asdict(record), indent=1, sort_keys=True, default=str) + "\n")
        return path

    def records(self, experiment: str | None = None) -> Iterator[RunRecord]:
        folders = [self.root / experiment] if experiment else sorted(p for p in self.root.glob("*") if p.is_dir())
        for folder in folders:
            for path in sorted(folder.glob("*.json")):
                yield RunRecord(**json.loads(path.read_text()))
