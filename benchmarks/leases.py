"""Coordination of workers that share one record store: leases on runs and failure entries.

Layout, beside the experiments of a store (a folder every worker mounts; no server)::

    <root>/_leases/<experiment>/<key>.<gen>.lease   who runs it now: JSON {worker, host, pid, started,
                                                    expiry_s, nonce}; its mtime is the heartbeat
    <root>/_failures/<experiment>/<key>.json    the last failure of a run: config, error, traceback, log

A lease is a chain of generation-numbered files ``<key>.<gen>.lease``; the holder is the worker
whose file has the highest generation. A run is claimed by creating the next generation's file
exclusively (a private file hard-linked into place: one ``link`` wins, and no reader ever sees a
half-written lease). The holder touches its file every ``expiry_s / 4`` seconds. A lease is stale
when its heartbeat is older than ``expiry_s``, or at once when its holder ran on this host and its
process is gone. A stale generation ``g`` is taken over by creating ``g + 1``; the new file counts
only if, after it exists, no higher generation exists and generation ``g`` still holds the very
lease judged stale (its body carries a random nonce, so a file re-created under the same name, or
with a recycled inode, does not pass), and still stale. Only then are the lower generations
removed. So of any interleaving of claims, at most one worker holds the run: a worker that read
the lease, paused, and resumed after someone else took over or released it, finds its generation
taken, or the file it judged stale gone, and gives up. A lease cannot stop a process that is
frozen for longer than its expiry (SIGSTOP): choose an expiry above the longest pause a worker may
have.

Lease files are created with mode 0644 and their folders 0755 whatever the umask
(:func:`benchmarks.store.make_dirs`).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.store import inside, make_dirs
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
    nonce: str = ""  # random, per claim: tells this lease from a later one under the same file name

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
            if held is not None and held.nonce == self.info.nonce:
                self.path.unlink()

    def __enter__(self) -> Lease:
        return self.heartbeat()

    def __exit__(self, *exc: Any) -> None:
        self.release()


_FIELDS = ("worker", "host", "pid", "started", "expiry_s")


def read_lease(path: Path) -> LeaseInfo | None:
    """The lease in ``path`` (None when there is none); an unreadable lease file counts as stale."""
    try:
        st = path.stat()
        data = json.loads(path.read_text())
        return LeaseInfo(**{k: data[k] for k in _FIELDS}, heartbeat_age_s=time.time() - st.st_mtime,
                         nonce=str(data.get("nonce", "")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return LeaseInfo("unreadable", "", -1, "", 0.0, heartbeat_age_s=float("inf"), nonce=f"unreadable:{path.name}")


def _create_exclusive(path: Path, body: str) -> None:
    """Create ``path`` (mode 0644) holding ``body``, or raise FileExistsError: written to a private
    file first and hard-linked into place, so no other worker ever reads a lease that exists but is
    still empty (with O_EXCL + write, a concurrent claim could read it half-written)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o644)  # explicit: the umask does not decide who may read a lease
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _generations(folder: Path, key: str) -> dict[int, Path]:
    """{generation: path} of the lease files of ``key`` in ``folder``."""
    out = {}
    for path in folder.glob(f"{key}.*.lease"):
        gen = path.name[len(key) + 1:-len(".lease")]
        if gen.isdigit():
            out[int(gen)] = path
    return out


class Coordinator:
    """Leases and failure entries of one store root."""

    def __init__(self, root: str | os.PathLike, expiry_s: float = DEFAULT_EXPIRY_S) -> None:
        if not expiry_s > 0:
            raise ValueError(f"lease expiry must be > 0 seconds, got {expiry_s!r}")
        self.root, self.expiry_s = Path(root), float(expiry_s)

    def lease_path(self, experiment: str, key: str, generation: int = 0) -> Path:
        return inside(self.root, self.root / LEASES / experiment / f"{key}.{generation}.lease")

    def failure_path(self, experiment: str, key: str) -> Path:
        return inside(self.root, self.root / FAILURES / experiment / f"{key}.json")

    # -- leases ----------------------------------------------------------------------------------
    def current(self, experiment: str, key: str) -> tuple[int, LeaseInfo | None]:
        """(highest generation, its lease); (-1, None) when the run has no lease."""
        gens = _generations(self.lease_path(experiment, key).parent, key)
        if not gens:
            return -1, None
        top = max(gens)
        return top, read_lease(gens[top])

    def claim(self, experiment: str, key: str, worker: str | None = None) -> tuple[Lease | None, LeaseInfo | None]:
        """(lease, None) when this worker now holds the run; (None, holder) when a live worker does.

        A stale lease is taken over: (lease, the stale holder's info)."""
        folder = self.lease_path(experiment, key).parent
        make_dirs(folder, self.root)
        info = LeaseInfo(worker or worker_id(), socket.gethostname(), os.getpid(), _now(), self.expiry_s,
                         nonce=uuid.uuid4().hex)
        body = json.dumps({**{k: getattr(info, k) for k in _FIELDS}, "nonce": info.nonce})
        for _ in range(5):
            top, held = self.current(experiment, key)
            if top >= 0 and held is None:
                continue  # released meanwhile: look again
            if held is not None and not held.stale():
                return None, held
            path = self.lease_path(experiment, key, top + 1)
            try:
                _create_exclusive(path, body)
            except FileExistsError:
                continue  # another worker took this generation: look again
            if not self._verify(experiment, key, top + 1, held):
                path.unlink(missing_ok=True)
                continue
            for gen, old in sorted(_generations(folder, key).items()):  # lowest first
                if gen < top + 1:
                    old.unlink(missing_ok=True)
            return Lease(path, info), held
        return None, self.current(experiment, key)[1]

    def _verify(self, experiment: str, key: str, mine: int, judged: LeaseInfo | None) -> bool:
        """After creating generation ``mine``: no higher generation exists, and the one below is
        still the very lease judged stale (same nonce), still stale; or, for a first claim, none."""
        gens = _generations(self.lease_path(experiment, key).parent, key)
        if max(gens, default=-1) != mine:
            return False
        if judged is None:
            return True
        below = read_lease(gens[mine - 1]) if mine - 1 in gens else None
        return below is not None and below.nonce == judged.nonce and below.stale()

    def leases(self) -> dict[tuple[str, str], LeaseInfo]:
        out = {}
        for folder in sorted(p for p in (self.root / LEASES).glob("*") if p.is_dir()):
            for key in sorted({p.name.split(".", 1)[0] for p in folder.glob("*.lease")}):
                _, info = self.current(folder.name, key)
                if info is not None:
                    out[(folder.name, key)] = info
        return out

    # -- failures ----------------------------------------------------------------------------------
    def record_failure(self, experiment: str, key: str, pipeline: str, config: dict[str, Any], exc: BaseException,
                       log: str | None = None, worker: str | None = None) -> Path:
        entry = {"experiment": experiment, "key": key, "pipeline": pipeline, "config": config,
                 "error": f"{type(exc).__name__}: {exc}",
                 "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
                 "log": log, "worker": worker or worker_id(), "time": _now()}
        path = self.failure_path(experiment, key)
        make_dirs(path.parent, self.root)
        return atomic_write_text(path, json.dumps(entry, indent=1, default=str) + "\n")

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
