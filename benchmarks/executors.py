"""Where the runs of a sweep execute: this process, a Ray cluster, or SLURM (via submitit).

Every executor hands each run to :func:`benchmarks.worker.run_claimed`, which claims the run's
lease in the shared store, so several submissions (and executors) on one store never run a
config twice at once, and records reach the store from the workers themselves.

* ``local`` — one run after another in this process (the default).
* ``ray`` — one Ray task per run, with the CPUs / GPUs / memory of its :class:`Resources`;
  ``--ray-address`` joins a running cluster (``ray start --head`` on a node), none starts a
  local one.
* ``slurm`` — SLURM job arrays through submitit (one array per distinct resource request);
  each job's pickled call and its stdout/stderr stay under ``<job dir>/<job id>/`` and are linked
  from its record (``provenance.executor.log``) or failure entry. The job dir is a private folder
  of the submitting user (0700, default ``~/.cache/osscar/jobs``; ``--job-dir``), not the shared
  store: whoever could write the pickles could make the next job run their code. On a cluster it
  must be on a file system the compute nodes mount (home folders usually are).
* ``submitit-local`` — the same submitit code path with local subprocesses instead of SLURM
  (for a workstation, and for testing the SLURM path without a cluster).

Ray and submitit are the optional extra ``cluster`` (``pip install -e '.[cluster]'``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.resources import Resources, resources_for  # noqa: F401  (re-exported)
from benchmarks.sweep import RunSpec
from benchmarks.leases import Coordinator
from benchmarks.worker import Outcome, run_claimed
from benchmarks.store import config_key

EXECUTORS = ("local", "ray", "slurm", "submitit-local")
EXTRA = "pip install -e '.[cluster]'  (ray, submitit)"


class ExecutorError(ValueError):
    """An executor that cannot start; raised before any run."""


@dataclass
class Options:
    store: str
    expiry_s: float
    ray_address: str | None = None
    report: Callable[[str], None] = print
    log_dir: str = ""  # submitit's job files and logs: private to the user (default: default_job_dir())

    def __post_init__(self) -> None:
        self.log_dir = self.log_dir or str(default_job_dir())


def default_job_dir() -> Path:
    """``$XDG_CACHE_HOME/osscar/jobs`` (``~/.cache/osscar/jobs``): the user's own, outside any shared store."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "osscar" / "jobs"


def private_dir(path: Path, flag: str = "--job-dir") -> Path:
    """Create ``path`` (and parents) and make it 0700; ExecutorError when it is not this user's folder."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        st = path.stat()
        if st.st_uid != os.getuid():
            raise ExecutorError(f"{flag} {str(path)!r} belongs to another user (uid {st.st_uid}); job files must be "
                                "private: give a folder of your own")
        os.chmod(path, 0o700)
    except (FileExistsError, NotADirectoryError):
        raise ExecutorError(f"{flag} {str(path)!r} is not a folder") from None
    except PermissionError as exc:
        raise ExecutorError(f"{flag} {str(path)!r} cannot be made a private folder ({exc.strerror})") from None
    return path


@dataclass
class Executor:
    """Base: ``check`` (before any run: libraries, cluster, resources) and ``run`` (every spec)."""

    options: Options
    name: str = "local"
    notes: list[str] = field(default_factory=list)

    def check(self, specs: Sequence[tuple[RunSpec, Resources]]) -> None:
        pass

    def run(self, specs: Sequence[tuple[RunSpec, Resources]]) -> list[Outcome]:
        raise NotImplementedError

    def _crashed(self, spec: RunSpec, exc: BaseException, log: str | None = None) -> Outcome:
        """The outcome of a task whose worker died (killed, out of memory) before it could report:
        a failure entry is written for it, as :func:`run_claimed` does for a run that raises."""
        key = config_key(spec.pipeline, spec.key_config)
        error = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"
        try:
            Coordinator(self.options.store, self.options.expiry_s).record_failure(
                spec.experiment, key, spec.pipeline, spec.key_config, exc, log=log, worker=f"{self.name} task (died)")
        except OSError as err:  # the store went away: the outcome still says what happened
            error += f" (no failure entry: {err})"
        return Outcome(spec.experiment, key, "failed", error=error, log=log)

    def _say(self, i: int, n: int, spec: RunSpec, outcome: Outcome) -> None:
        short = spec.label() or config_key(spec.pipeline, spec.key_config)
        extra = {"ran": f"in {outcome.seconds:.1f}s", "failed": f"FAILED: {outcome.error}",
                 "held": f"skipped: running on {outcome.worker}", "done": "skipped: done"}[outcome.status]
        if outcome.took_over:
            extra += f" (took over the stale lease of {outcome.took_over})"
        self.options.report(f"[{i}/{n}] {spec.experiment}: {short} {extra}")


class LocalExecutor(Executor):
    def run(self, specs: Sequence[tuple[RunSpec, Resources]]) -> list[Outcome]:
        out = []
        for i, (spec, _res) in enumerate(specs, 1):
            self.options.report(f"[{i}/{len(specs)}] {spec.experiment}: starting "
                                f"{config_key(spec.pipeline, spec.key_config)} {spec.label()}".rstrip())
            outcome = run_claimed(spec, self.options.store, self.options.expiry_s, "local")
            self._say(i, len(specs), spec, outcome)
            out.append(outcome)
        return out


def _import(module: str, executor: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExecutorError(f"--executor {executor} needs the '{module}' package: {EXTRA}") from None


def _probe(address: str, timeout_s: float = 5.0) -> None:
    """A TCP connect to a Ray address (``host:port`` or ``ray://host:port``); ExecutorError when it fails."""
    import socket

    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ExecutorError(f"--ray-address must be HOST:PORT, ray://HOST:PORT or 'auto', got {address!r}")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise ExecutorError(f"--ray-address {address!r} does not answer ({exc.strerror or exc}); start the head "
                            "with `ray start --head` or leave --ray-address out for a local cluster") from None


class RayExecutor(Executor):
    def check(self, specs: Sequence[tuple[RunSpec, Resources]]) -> None:
        ray = _import("ray", "ray")
        address = self.options.ray_address
        if address and address != "auto":
            _probe(address)  # ray.init itself retries a dead address for minutes
        try:
            if address:
                ray.init(address=address, log_to_driver=False, ignore_reinit_error=True)
            else:
                import os

                ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                         ignore_reinit_error=True, _node_ip_address="127.0.0.1")
        except Exception as exc:  # noqa: BLE001 — ConnectionError, RuntimeError, TimeoutError, by version
            first = (str(exc).strip().splitlines() or [""])[0]
            if not address:
                raise ExecutorError(f"--executor ray: starting a local Ray cluster failed ({type(exc).__name__}: "
                                    f"{first}); start one with `ray start --head` and pass --ray-address auto, or "
                                    "use --executor local") from None
            raise ExecutorError(f"--ray-address {address!r} does not answer: {type(exc).__name__}: {first}") from None
        total = ray.cluster_resources()
        for spec, res in specs:
            need = {"CPU": res.cpus, "GPU": res.gpus}
            for kind, n in need.items():
                if n > total.get(kind, 0):
                    ray.shutdown()
                    raise ExecutorError(
                        f"run {spec.experiment}/{config_key(spec.pipeline, spec.key_config)} asks for {n} {kind}(s) "
                        f"but the Ray cluster has {total.get(kind, 0):g}; lower resources.{kind.lower()}s in the "
                        "sweep profile or add nodes")
        self.notes.append(f"ray cluster: {total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs")

    def run(self, specs: Sequence[tuple[RunSpec, Resources]]) -> list[Outcome]:
        import ray

        task = ray.remote(max_retries=0)(run_claimed)
        pending = {}
        for spec, res in specs:
            opts: dict[str, Any] = {"num_cpus": res.cpus, "num_gpus": res.gpus}
            if res.memory_gb:
                opts["memory"] = int(res.memory_gb * 2**30)
            ref = task.options(**opts).remote(spec, self.options.store, self.options.expiry_s, "ray")
            pending[ref] = spec
        out, done = [], 0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            spec = pending.pop(ready[0])
            done += 1
            try:
                outcome = ray.get(ready[0])
            except Exception as exc:  # noqa: BLE001 — the worker process died (killed, OOM)
                outcome = self._crashed(spec, exc)
            self._say(done, len(specs), spec, outcome)
            out.append(outcome)
        return out


def _submitit_job(spec: RunSpec, store: str, expiry_s: float, executor: str, folder: str) -> Outcome:
    """The body of one submitit job: :func:`run_claimed` with the job's id and log path."""
    import submitit
    from submitit.core.utils import JobPaths

    env = submitit.JobEnvironment()
    paths = JobPaths(folder, job_id=env.job_id, task_id=env.global_rank)
    return run_claimed(spec, store, expiry_s, executor, log=str(paths.stdout), job_id=str(env.job_id))


class SubmititExecutor(Executor):
    def check(self, specs: Sequence[tuple[RunSpec, Resources]]) -> None:
        _import("submitit", self.name)
        if self.name == "slurm" and shutil.which("sbatch") is None:
            raise ExecutorError("--executor slurm: 'sbatch' is not on PATH; run the sweep from a SLURM login node, "
                                "or use --executor ray / local / submitit-local")
        if self.name == "slurm" and shutil.which("sinfo"):
            import subprocess

            for part in sorted({r.partition for _, r in specs if r.partition}):
                r = subprocess.run(["sinfo", "-h", "-p", part, "-o", "%P"], capture_output=True, text=True, timeout=30)
                if r.returncode != 0 or not r.stdout.strip():
                    raise ExecutorError(f"resources.partition {part!r} is not a SLURM partition here (sinfo -p)")
        private_dir(Path(self.options.log_dir))  # last: a check that fails leaves nothing behind

    def run(self, specs: Sequence[tuple[RunSpec, Resources]]) -> list[Outcome]:
        import submitit

        folder = str(Path(self.options.log_dir) / "%j")
        by_res: dict[Resources, list[RunSpec]] = {}
        for spec, res in specs:
            by_res.setdefault(res, []).append(spec)
        jobs = []
        for res, group in by_res.items():
            ex = submitit.AutoExecutor(folder=folder, cluster="local" if self.name == "submitit-local" else "slurm")
            params: dict[str, Any] = {"timeout_min": res.time_min, "cpus_per_task": res.cpus,
                                      "gpus_per_node": res.gpus, "slurm_array_parallelism": 64}
            if res.memory_gb:
                params["mem_gb"] = res.memory_gb
            if res.partition:
                params["slurm_partition"] = res.partition
            ex.update_parameters(**params)
            n = len(group)
            submitted = ex.map_array(_submitit_job, group, [self.options.store] * n, [self.options.expiry_s] * n,
                                     [self.name] * n, [folder] * n)
            jobs.extend(zip(group, submitted))
            self.notes.append(f"submitted array of {n} job(s) ({res}); logs: {self.options.log_dir}")
        out = []
        for i, (spec, job) in enumerate(jobs, 1):
            try:
                outcome = job.result()
            except Exception as exc:  # noqa: BLE001 — job killed, timed out or crashed
                outcome = self._crashed(spec, exc, log=str(job.paths.stdout))
            self._say(i, len(jobs), spec, outcome)
            out.append(outcome)
        return out


def make_executor(name: str, options: Options) -> Executor:
    if name not in EXECUTORS:
        raise ExecutorError(f"--executor must be one of {', '.join(EXECUTORS)}, got {name!r}")
    cls = {"local": LocalExecutor, "ray": RayExecutor, "slurm": SubmititExecutor,
           "submitit-local": SubmititExecutor}[name]
    return cls(options=options, name=name)


def summarize(name: str, outcomes: Sequence[Outcome], skipped_done: int, skipped_failed: int, seconds: float) -> str:
    counts = {s: sum(o.status == s for o in outcomes) for s in ("ran", "done", "held", "failed")}
    return (f"executor {name}: {counts['ran']} ran, {skipped_done + counts['done']} skipped (done), "
            f"{counts['held']} left to other workers, {counts['failed']} failed"
            + (f", {skipped_failed} earlier failure(s) not retried (--retry-failed reruns them)" if skipped_failed else "")
            + f"; wall {seconds:.1f}s")
