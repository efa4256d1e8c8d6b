"""What a worker does with one run, whichever executor started it (local loop, Ray task, SLURM job).

:func:`run_claimed`: skip the run when a valid record exists; claim its lease (or leave it to the
live worker holding it); run it in its thread scope; write the record atomically (or a failure
entry with the error and the log path); release the lease. Returns an :class:`Outcome`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import time
from dataclasses import dataclass
from typing import Any

from benchmarks.pipelines import get_pipeline
from benchmarks.sweep import RunSpec
from benchmarks.leases import DEFAULT_EXPIRY_S, Coordinator, worker_id
from benchmarks.store import ResultStore, RunRecord, config_key


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Outcome:
    """What became of one run: ``ran``, ``done`` (a record existed), ``held`` (a live worker runs
    it), or ``failed`` (``error``: the first line of the exception)."""

    experiment: str
    key: str
    status: str
    seconds: float = 0.0
    worker: str = ""
    error: str = ""
    log: str | None = None
    took_over: str = ""


def execute(spec: RunSpec, store: ResultStore, executor: dict[str, Any] | None = None) -> tuple[RunRecord, bool]:
    """Run one spec unless a valid record exists. Returns (record, ran).

    The run and its provenance are read inside one thread scope, so the record states the thread
    count the run used. ``executor`` (name, worker, job id, log) is added to the provenance.
    """
    from osscar.devices import torch_threads
    from osscar.provenance import environment

    key = config_key(spec.pipeline, spec.key_config)
    if store.has(spec.experiment, key):
        return store.get(spec.experiment, key), False
    started = _now()
    t0 = time.perf_counter()
    from osscar.memory import run_monitor

    threads = getattr(spec.config, "threads", None)
    with torch_threads(threads) if threads else contextlib.nullcontext(), \
            run_monitor(getattr(spec.config, "device", None)) as mem:  # the run's phases join this monitor
        pipeline = get_pipeline(spec.pipeline)
        say = lambda text: print(f"    {spec.experiment}/{key}: {text}", flush=True)  # noqa: E731
        metrics = dict(pipeline.run_function()(spec.config, **pipeline.progress_kwargs(say)))
        if not mem.phases:  # a run that measures no phases of its own is one phase
            mem.phase("run")
        prov = environment()
    if "phases" not in (metrics.get("memory") or {}):  # else the run's own "memory" holds this monitor's summary
        metrics["memory_run"] = mem.summary()  # this run alone (the process may have run others before)
    if executor:
        prov["executor"] = dict(executor)
    metrics["wall_seconds"] = time.perf_counter() - t0
    record = RunRecord(experiment=spec.experiment, pipeline=spec.pipeline, config=spec.key_config,
                       metrics=metrics, provenance=prov, started=started, finished=_now(), key=key)
    store.put(record)
    return record, True


def run_claimed(spec: RunSpec, store_root: str, expiry_s: float = DEFAULT_EXPIRY_S, executor: str = "local",
                log: str | None = None, job_id: str | None = None) -> Outcome:
    """One run under a lease (see the module docstring). Never raises for a failing run."""
    store, coord = ResultStore(store_root), Coordinator(store_root, expiry_s)
    key = config_key(spec.pipeline, spec.key_config)
    me = worker_id()
    if store.has(spec.experiment, key):
        return Outcome(spec.experiment, key, "done", worker=me)
    lease, holder = coord.claim(spec.experiment, key, me)
    if lease is None:
        return Outcome(spec.experiment, key, "held", worker=holder.worker if holder else "")
    took_over = holder.worker if holder else ""
    t0 = time.perf_counter()
    with lease:
        if store.has(spec.experiment, key):  # finished by another worker between the check and the claim
            return Outcome(spec.experiment, key, "done", worker=me)
        info = {"name": executor, "worker": me, "host": os.uname().nodename, "job_id": job_id, "log": log,
                "took_over_lease_of": took_over or None}
        try:
            execute(spec, store, executor=info)
        except Exception as exc:  # noqa: BLE001 — a failing run is recorded, not raised
            coord.record_failure(spec.experiment, key, spec.pipeline, spec.key_config, exc, log=log, worker=me)
            first = (str(exc).strip().splitlines() or [""])[0]
            return Outcome(spec.experiment, key, "failed", time.perf_counter() - t0, me,
                           f"{type(exc).__name__}: {first}", log, took_over)
        coord.clear_failure(spec.experiment, key)
    return Outcome(spec.experiment, key, "ran", time.perf_counter() - t0, me, log=log, took_over=took_over)
