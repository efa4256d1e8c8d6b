"""Coordination of workers that share one record store: leases on runs and failure entries.

Layout, beside the experiments of a store (a folder every worker mounts; no server)::

    <root>/_leases/<experiment>/<key>.lease     who runs it now: JSON {worker, host, pid, started, expiry_s};
                                                its mtime is the heartbeat
    <root>/_failures/<experiment>/<key>.json    the last failure of a run: config, error, traceback, log

A run is claimed by creating its lease file exclusively (``O_CREAT | O_EXCL``), so of two workers
that try at once exactly one gets it. The holder touches the file every ``expiry_s / 4`` seconds.
A lease is stale when its heartbeat is older than ``expiry_s``, or at once when its holder ran on
this host and its process is gone; a stale lease is taken over by renaming it aside (one rename
wins) and claiming anew. A lease cannot stop a process that is frozen for longer than its expiry
(SIGSTOP): choose an expiry above the longest pause a worker may have.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from osscar.io import atomic_write_text

LEASES, FAILURES = "_leases", "_failures"
DEFAULT_EXPIRY_S = 600.0


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def worker_id() -> str:
    """host:pid — unique among live processes of a cluster."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class LeaseInfo:
    worker: str
    host: str
    pid: int
    started: str
    expiry_s: float
    heartbeat_age_s: float = 0.0

    def stale(self) -> bool:
        if self.heartbeat_age_s > self.expiry_s:
            return True
        return self.host == socket.gethostname() and not _pid_alive(self.pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lease:
    """A claimed run; :meth:`heartbeat` keeps it fresh (a background thread), :meth:`release` ends it."""

    def __init__(self, path: Path, info: LeaseInfo) -> None:
        self.path, self.info = path, info
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _beat(self) -> None:
        period = max(0.05, self.info.expiry_s / 4)
        while not self._stop.wait(period):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def heartbeat(self) -> Lease:
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.path.stem}", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(FileNotFoundError):
            held = read_lease(self.path)
            if held is not None and held.worker == self.info.worker:
                self.path.unlink()

    def __enter__(self) -> Lease:
        return self.heartbeat()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def read_lease(path: Path) -> LeaseInfo | None:
    """The lease in ``path`` (None when there is none); an unreadable lease file counts as stale."""
    try:
        st = path.stat()
        data = json.loads(path.read_text())
        return LeaseInfo(**{k: data[k] for k in ("worker", "host", "pid", "started", "expiry_s")},
                         heartbeat_age_s=time.time() - st.st_mtime)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return LeaseInfo("unreadable", "", -1, "", 0.0, heartbeat_age_s=float("inf"))


def _create_exclusive(path: Path, body: str) -> None:
    """Create ``path`` holding ``body``, or raise FileExistsError: written to a private file first and
    hard-linked into place, so no other worker ever reads a lease that exists but is still empty
    (with O_EXCL + write, a concurrent claim could read it half-written, call it stale and take it)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class Coordinator:
    """Leases and failure entries of one store root."""

    def __init__(self, root: str | os.PathLike, expiry_s: float = DEFAULT_EXPIRY_S) -> None:
        if not expiry_s > 0:
            raise ValueError(f"lease expiry must be > 0 seconds, got {expiry_s!r}")
        self.root, self.expiry_s = Path(root), float(expiry_s)

    def lease_path(self, experiment: str, key: str) -> Path:
        return self.root / LEASES / experiment / f"{key}.lease"

    def failure_path(self, experiment: str, key: str) -> Path:
        return self.root / FAILURES / experiment / f"{key}.json"

    # -- leases ----------------------------------------------------------------------------------
    def claim(self, experiment: str, key: str, worker: str | None = None) -> tuple[Lease | None, LeaseInfo | None]:
        """(lease, None) when this worker now holds the run; (None, holder) when a live worker does.

        A stale lease is taken over: (lease, the stale holder's info)."""
        path = self.lease_path(experiment, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        info = LeaseInfo(worker or worker_id(), socket.gethostname(), os.getpid(), _now(), self.expiry_s)
        taken_over = None
        body = json.dumps({k: v for k, v in asdict(info).items() if k != "heartbeat_age_s"})
        for _ in range(3):
            try:
                _create_exclusive(path, body)
            except FileExistsError:
                held = read_lease(path)
                if held is None:
                    continue  # released meanwhile: try again
                if not held.stale():
                    return None, held
                aside = path.with_name(f"{path.name}.stale.{uuid.uuid4().hex[:8]}")
                try:
                    os.rename(path, aside)  # one of the workers taking over wins this rename
                except FileNotFoundError:
                    continue
                aside.unlink(missing_ok=True)
                taken_over = held
                continue
            return Lease(path, info), taken_over
        held = read_lease(path)
        return None, held

    def leases(self) -> dict[tuple[str, str], LeaseInfo]:
        out = {}
        for path in sorted((self.root / LEASES).glob("*/*.lease")):
            info = read_lease(path)
            if info is not None:
                out[(path.parent.name, path.stem)] = info
        return out

    # -- failures ----------------------------------------------------------------------------------
    def record_failure(self, experiment: str, key: str, pipeline: str, config: dict[str, Any], exc: BaseException,
                       log: str | None = None, worker: str | None = None) -> Path:
        entry = {"experiment": experiment, "key": key, "pipeline": pipeline, "config": config,
                 "error": f"{type(exc).__name__}: {exc}",
                 "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
                 "log": log, "worker": worker or worker_id(), "time": _now()}
        return atomic_write_text(self.failure_path(experiment, key), json.dumps(entry, indent=1, default=str) + "\n")

    def clear_failure(self, experiment: str, key: str) -> None:
        self.failure_path(experiment, key).unlink(missing_ok=True)

    def failure(self, experiment: str, key: str) -> dict[str, Any] | None:
        path = self.failure_path(experiment, key)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"error": f"unreadable failure entry {path}", "log": None}

    def failures(self) -> Iterator[dict[str, Any]]:
        for path in sorted((self.root / FAILURES).glob("*/*.json")):
            entry = self.failure(path.parent.name, path.stem)
            if entry is not None:
                yield entry
