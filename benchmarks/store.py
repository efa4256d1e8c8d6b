"""The result store: one JSON record per run, keyed by a hash of the run's full configuration.

Layout: ``<root>/<experiment>/<key>.json``. A record is written to a temporary file in the same
folder, flushed and fsynced, then renamed over the final name: a reader never sees half a
record, and a killed sweep loses only the run that was in progress.

Every read is validated (:func:`validate_record`): a truncated, empty or schema-invalid file is a
:class:`BadRecord` naming its path. :meth:`ResultStore.has` moves such a file to
``<root>/_quarantine/<experiment>/`` (with the reason beside it) and answers False, so the run is
redone; :meth:`ResultStore.records` skips bad files and reports them to ``on_bad``. A record the
user cannot read (permissions) is an :class:`UnreadableRecord`: named and skipped, never moved.

Names become paths: an experiment name must be a safe slug (:func:`check_name`), and every path
the store builds is resolved and checked to stay inside its root (:func:`inside`). Folders are
created 0755 and records written 0644 whatever the umask (:func:`make_dirs`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from osscar.io import atomic_write_text

RECORD_VERSION = 1
QUARANTINE = "_quarantine"
DIR_MODE = 0o755
_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
SLUG_RULE = "letters, digits, '_', '-' and '.', starting with a letter or digit, no '..'"


def check_name(name: object) -> str | None:
    """Why ``name`` cannot be an experiment (a folder of the store), or None when it can."""
    if not isinstance(name, str):
        return f"must be a string, got {type(name).__name__} {name!r}"
    if not _SLUG.fullmatch(name) or ".." in name:
        return f"must be a safe name ({SLUG_RULE}), got {name!r}"
    return None


def inside(root: Path, path: Path) -> Path:
    """``path``, after checking that it resolves to a place under ``root``; ValueError otherwise."""
    base = Path(os.path.realpath(root))
    real = Path(os.path.realpath(path))
    if real != base and base not in real.parents:
        raise ValueError(f"path {str(path)!r} leaves the store {str(root)!r}")
    return path


def store_problem(root: str | os.PathLike, writable: bool = True, experiments: tuple[str, ...] = ()) -> str | None:
    """Why ``root`` cannot serve as a store (one line), or None: a file, or (``writable``) a folder this
    user cannot write, or a path whose nearest existing folder cannot be written to create it, or an
    existing folder of one of ``experiments`` (records, leases, failures) this user cannot write."""
    path = Path(root)
    if path.exists() and not path.is_dir():
        return f"--store {str(root)!r} is a file, not a folder"
    if not writable:
        return None
    for name in experiments:
        for folder in (path / name, path / "_leases" / name, path / "_failures" / name):
            if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
                return f"--store {str(root)!r}: folder {str(folder)!r} is read-only for this user; give a store you can write"
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        return f"--store {str(root)!r} cannot be created: {str(probe)!r} is a file"
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "is read-only for this user" if probe == path else f"cannot be created: {str(probe)!r} is read-only"
        return f"--store {str(root)!r} {what}; give a folder you can write (--store), or use --dry-run"
    return None


def make_dirs(folder: Path, root: Path, mode: int = DIR_MODE) -> None:
    """Create ``folder`` (under ``root``) and its missing parents with ``mode``, whatever the umask."""
    folder = inside(root, folder)
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            continue  # made by another worker meanwhile: its mode is that worker's business
        os.chmod(path, mode)


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


class UnreadableRecord(BadRecord):
    """A record file this user may not read (permissions): skipped and named, never quarantined."""


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
        """``<root>/<experiment>/<key>.json``; ValueError for a name that is not a safe slug."""
        for what, name in (("experiment", experiment), ("key", key)):
            why = check_name(name)
            if why:
                raise ValueError(f"{what} name {why}")
        return inside(self.root, self.root / experiment / f"{key}.json")

    def read(self, path: Path) -> RunRecord:
        """The record in ``path``; :class:`BadRecord` when it is invalid, :class:`UnreadableRecord`
        when this user may not read it."""
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            raise BadRecord(path, "not UTF-8 text") from None
        except PermissionError:
            raise UnreadableRecord(path, "permission denied (fix its permissions; it is left in place)") from None
        except IsADirectoryError:
            raise BadRecord(path, "is a folder, not a record file") from None
        return validate_record(path, text)

    def quarantine(self, bad: BadRecord) -> Path:
        """Move a bad record out of the store's experiments; the reason is written beside it."""
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
        dest = self.root / QUARANTINE / bad.path.parent.name / f"{bad.path.stem}.{stamp}.json"
        make_dirs(dest.parent, self.root)
        os.replace(bad.path, dest)
        atomic_write_text(dest.with_suffix(".reason.txt"), bad.reason + "\n")
        return dest

    def has(self, experiment: str, key: str, on_bad: Callable[[BadRecord, Path | None], None] | None = None,
            quarantine: bool = True) -> bool:
        """Whether a valid record exists. A bad one is quarantined (``quarantine=False``: left where it
        is), reported to ``on_bad`` and counts as absent. An unreadable one (permissions) is reported,
        left in place and counts as present: another user's record is not redone over their file."""
        path = self.path(experiment, key)
        if not path.is_file():
            return False
        try:
            self.read(path)
        except UnreadableRecord as bad:
            (on_bad or _report_quarantine)(bad, None)
            return True
        except BadRecord as bad:
            dest = self.quarantine(bad) if quarantine else None
            (on_bad or _report_quarantine)(bad, dest)
            return False
        return True

    def get(self, experiment: str, key: str) -> RunRecord:
        return self.read(self.path(experiment, key))

    def put(self, record: RunRecord) -> Path:
        path = self.path(record.experiment, record.key)
        make_dirs(path.parent, self.root)
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


def _report_quarantine(bad: BadRecord, dest: Path | None) -> None:
    import sys

    if isinstance(bad, UnreadableRecord):
        print(f"warning: cannot read record {bad}; the run is skipped", file=sys.stderr)
    elif dest is None:
        print(f"warning: bad record {bad}; it would be moved to {QUARANTINE}/ and the run redone", file=sys.stderr)
    else:
        print(f"warning: bad record {bad}; moved to {dest}, the run will be redone", file=sys.stderr)
