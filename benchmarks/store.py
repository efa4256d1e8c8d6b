"""The result store: one JSON record per run, keyed by a hash of the run's full configuration.

Layout: ``<root>/<experiment>/<key>.json``. A record is written to a temporary file in the same
folder, flushed and fsynced, then renamed over the final name: a reader never sees half a
record, and a killed sweep loses only the run that was in progress.

Every read is validated (:func:`validate_record`): a truncated, empty or schema-invalid file is a
:class:`BadRecord` naming its path. :meth:`ResultStore.has` moves such a file to
``<root>/_quarantine/<experiment>/`` (with the reason beside it) and answers False, so the run is
redone; :meth:`ResultStore.records` skips bad files and reports them to ``on_bad``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from osscar.io import atomic_write_text

RECORD_VERSION = 1
QUARANTINE = "_quarantine"


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


class BadRecord(ValueError):
    """A record file that cannot be used; ``str()`` names the file and what is wrong."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "experiment": str, "pipeline": str, "config": dict, "metrics": dict, "provenance": dict,
    "started": str, "finished": str, "version": int, "key": str,
}


def validate_record(path: Path, text: str) -> RunRecord:
    """Parse and check one record file's text; raises :class:`BadRecord` naming ``path``."""
    if not text.strip():
        raise BadRecord(path, "empty file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRecord(path, f"not valid JSON (truncated?): {exc.msg} at line {exc.lineno}") from None
    if not isinstance(data, dict):
        raise BadRecord(path, f"expected a JSON object, got {type(data).__name__}")
    names = {f.name for f in fields(RunRecord)}
    missing = sorted(names - set(data) - {"version", "key"})
    if missing:
        raise BadRecord(path, f"missing field(s) {', '.join(missing)}")
    unknown = sorted(set(data) - names)
    if unknown:
        raise BadRecord(path, f"unknown field(s) {', '.join(unknown)}")
    for name, typ in _SCHEMA.items():
        if name in data and not isinstance(data[name], typ):
            raise BadRecord(path, f"field {name!r} must be {typ.__name__}, got {type(data[name]).__name__}")
    record = RunRecord(**data)
    if record.key != config_key(record.pipeline, record.config):
        raise BadRecord(path, f"key {record.key} does not match its config (hash {config_key(record.pipeline, record.config)})")
    if path.stem != record.key:
        raise BadRecord(path, f"file name does not match the record's key {record.key}")
    if path.parent.name != record.experiment:
        raise BadRecord(path, f"lies in folder {path.parent.name!r} but belongs to experiment {record.experiment!r}")
    return record


def _warn(bad: BadRecord) -> None:
    import sys

    print(f"warning: skipping bad record {bad}", file=sys.stderr)


class ResultStore:
    """Records under ``root``, one folder per experiment (folders starting with ``_`` are not experiments)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, experiment: str, key: str) -> Path:
        return self.root / experiment / f"{key}.json"

    def read(self, path: Path) -> RunRecord:
        """The record in ``path``; :class:`BadRecord` when it is unreadable or invalid."""
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            raise BadRecord(path, "not UTF-8 text") from None
        return validate_record(path, text)

    def quarantine(self, bad: BadRecord) -> Path:
        """Move a bad record out of the store's experiments; the reason is written beside it."""
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
        dest = self.root / QUARANTINE / bad.path.parent.name / f"{bad.path.stem}.{stamp}.json"
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(bad.path, dest)
        atomic_write_text(dest.with_suffix(".reason.txt"), bad.reason + "\n")
        return dest

    def has(self, experiment: str, key: str, on_bad: Callable[[BadRecord, Path], None] | None = None) -> bool:
        """Whether a valid record exists; a bad one is quarantined (and reported) and counts as absent."""
        path = self.path(experiment, key)
        if not path.is_file():
            return False
        try:
            self.read(path)
        except BadRecord as bad:
            dest = self.quarantine(bad)
            (on_bad or _report_quarantine)(bad, dest)
            return False
        return True

    def get(self, experiment: str, key: str) -> RunRecord:
        return self.read(self.path(experiment, key))

    def put(self, record: RunRecord) -> Path:
        path = self.path(record.experiment, record.key)
        atomic_write_text(path, json.dumps(asdict(record), indent=1, sort_keys=True, default=str) + "\n")
        return path

    def experiments(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))

    def records(self, experiment: str | None = None,
                on_bad: Callable[[BadRecord], None] | None = _warn) -> Iterator[RunRecord]:
        """Every valid record (of one experiment, or all); bad files are skipped and given to ``on_bad``."""
        for name in [experiment] if experiment else self.experiments():
            for path in sorted((self.root / name).glob("*.json")):
                try:
                    yield self.read(path)
                except BadRecord as bad:
                    if on_bad is not None:
                        on_bad(bad)


def _report_quarantine(bad: BadRecord, dest: Path) -> None:
    import sys

    print(f"warning: bad record {bad}; moved to {dest}, the run will be redone", file=sys.stderr)
