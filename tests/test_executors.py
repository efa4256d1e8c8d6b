"""Sweeps through Ray and submitit, leases between workers, failures, and the status command."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.run import main as run_main
from benchmarks.status import main as status_main
from benchmarks.leases import Coordinator
from benchmarks.store import ResultStore

ROOT = Path(__file__).resolve().parent.parent
SOLVER_SWEEP = """
name = "toy"
pipeline = "solver"
[profiles.cpu.base]
shape = "{shape}"
[profiles.cpu.grid]
method = {methods}
seed = {seeds}
"""
TIMING = {"wall_seconds", "prune_seconds", "inverse_seconds", "seconds", "timings", "latency", "memory",
          "latency_cache", "calib_seconds", "solve_seconds", "local_search_objective", "memory_run"}


def _sweep(tmp_path: Path, methods='["mp", "mp+"]', seeds="[0, 1]", shape="heads-9x64", name="s.toml") -> Path:
    path = tmp_path / name
    path.write_text(SOLVER_SWEEP.format(methods=methods, seeds=seeds, shape=shape))
    return path


def _strip(obj):
    """A record's metrics without timing fields (which differ between any two runs)."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _metrics(store: Path) -> dict[str, dict]:
    return {r.key: _strip(r.metrics) for r in ResultStore(store).records()}


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


needs_ray = pytest.mark.skipif(not _have("ray"), reason="ray not installed (pip install -e '.[cluster]')")
needs_submitit = pytest.mark.skipif(not _have("submitit"), reason="submitit not installed (pip install -e '.[cluster]')")


def _lm_sweep(tmp_path: Path, model_dir: Path) -> Path:
    path = tmp_path / "lm.toml"
    path.write_text(f"""
name = "toy_lm"
pipeline = "lm"
[profiles.cpu.base]
model = "{model_dir}"
n_samples = 2
seqlen = 16
eval_windows = 1
[profiles.cpu.grid]
method = ["mp+", "osscar"]
""")
    return path


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory):
    """A tiny random-init Llama (GQA) saved with a tiny tokenizer: an explicit random model, no hub."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny_lm")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=48, num_attention_heads=6, num_key_value_heads=3, head_dim=8,
                         intermediate_size=64, num_hidden_layers=2, max_position_embeddings=256,
                         attn_implementation="eager")
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # random RMSNorm weights (HF's are all ones), as tests/lm/conftest.make_model
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.3 * torch.randn_like(p))
    model.save_pretrained(path)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["The quick brown fox jumps over the lazy dog. " * 5], vocab_size=300, min_frequency=1,
                            special_tokens=["<|endoftext|>"])
    PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                            pad_token="<|endoftext|>").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def serial(tmp_path_factory, tiny_lm_dir):
    """The reference: the solver and LM sweeps run serially in this process."""
    tmp = tmp_path_factory.mktemp("serial")
    store = tmp / "store"
    assert run_main([str(_sweep(tmp)), str(_lm_sweep(tmp, tiny_lm_dir)), "--store", str(store)]) == 0
    return _metrics(store)


@needs_ray
@pytest.mark.integration
def test_ray_executor_records_equal_the_serial_run(tmp_path, serial, tiny_lm_dir, capsys):
    import ray

    store = tmp_path / "store"
    try:
        assert run_main([str(_sweep(tmp_path)), str(_lm_sweep(tmp_path, tiny_lm_dir)), "--store", str(store),
                         "--executor", "ray"]) == 0
    finally:
        ray.shutdown()
    assert _metrics(store) == serial
    recs = list(ResultStore(store).records())
    assert {r.provenance["executor"]["name"] for r in recs} == {"ray"}
    assert "executor ray: 6 ran, 0 skipped" in capsys.readouterr().out


@needs_submitit
@pytest.mark.integration
def test_submitit_local_executor_records_equal_the_serial_run_and_keep_logs(tmp_path, serial, tiny_lm_dir):
    store, jobs = tmp_path / "store", tmp_path / "jobs"
    assert run_main([str(_sweep(tmp_path)), str(_lm_sweep(tmp_path, tiny_lm_dir)), "--store", str(store),
                     "--executor", "submitit-local", "--job-dir", str(jobs)]) == 0
    assert _metrics(store) == serial
    for r in ResultStore(store).records():
        ex = r.provenance["executor"]
        assert ex["name"] == "submitit-local" and ex["job_id"] and Path(ex["log"]).is_file()
        assert jobs in Path(ex["log"]).parents
    assert stat.S_IMODE(jobs.stat().st_mode) == 0o700
    assert not list(store.rglob("*.pkl")), "job pickles must stay out of the shared store"


def test_killed_run_leaves_a_stale_lease_that_the_next_submission_takes_over(tmp_path):
    sweep = _sweep(tmp_path, methods='["osscar", "ziplm"]', seeds="[0, 1, 2]", shape="ffn-1536")
    store = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.run", str(sweep), "--store", str(store)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    leases = store / "_leases" / "toy"
    deadline = time.time() + 120
    while time.time() < deadline and not (leases.is_dir() and any(leases.glob("*.lease"))
                                          and (store / "toy").is_dir() and any((store / "toy").glob("*.json"))):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    held = list(leases.glob("*.lease"))
    assert len(held) == 1, "the killed run's lease stays behind"
    killed_key = held[0].name.split(".", 1)[0]  # <key>.<generation>.lease
    done_before = len(list((store / "toy").glob("*.json")))
    assert done_before < 6
    r = subprocess.run([sys.executable, "-m", "benchmarks.run", str(sweep), "--store", str(store)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "took over the stale lease" in r.stdout
    recs = list(ResultStore(store).records(on_bad=lambda b: pytest.fail(str(b))))
    assert len(recs) == 6 and len({x.key for x in recs}) == 6
    assert not list(leases.glob("*.lease"))
    taken = next(x for x in recs if x.key == killed_key)
    assert taken.provenance["executor"]["took_over_lease_of"]


def test_two_submissions_at_once_run_each_config_exactly_once(tmp_path):
    sweep = _sweep(tmp_path, methods='["mp", "mp+", "ziplm"]', seeds="[0, 1, 2, 3]", shape="heads-12x64")
    store = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "benchmarks.run", str(sweep), "--store", str(store)]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    recs = list(ResultStore(store).records())
    assert len(recs) == 12
    workers = [r.provenance["executor"]["worker"] for r in recs]
    ran = [sum(" in " in line and line.startswith("[") for line in o.splitlines()) for o in outs]
    assert sum(ran) == 12, outs  # every config ran once, in one of the two processes
    assert {w.rsplit(":", 1)[1] for w in workers} <= {str(p.pid) for p in procs}


def test_failed_run_is_recorded_shown_and_retried_on_request(tmp_path, monkeypatch, capsys):
    import benchmarks.solver_pipeline as sp

    sweep = _sweep(tmp_path, methods='["mp"]', seeds="[0, 1]")
    store = tmp_path / "store"
    real = sp.run_solver

    def flaky(config, progress=False):
        if config.seed == 1:
            raise RuntimeError("out of memory on purpose\nsecond line")
        return real(config)

    monkeypatch.setattr(sp, "run_solver", flaky)
    assert run_main([str(sweep), "--store", str(store)]) == 1
    assert "FAILED: RuntimeError: out of memory on purpose" in capsys.readouterr().out
    failures = list(Coordinator(store).failures())
    assert len(failures) == 1 and "Traceback" in failures[0]["traceback"] and failures[0]["config"]["seed"] == 1
    assert status_main([str(store), str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "failed       toy/" in out and "RuntimeError: out of memory on purpose" in out
    assert "2 run(s): 1 done, 0 running, 0 stale, 1 failed, 0 not started" in out
    assert run_main([str(sweep), "--store", str(store)]) == 0
    assert "1 failed earlier (not retried; --retry-failed)" in capsys.readouterr().out
    monkeypatch.setattr(sp, "run_solver", real)
    assert run_main([str(sweep), "--store", str(store), "--retry-failed"]) == 0
    assert not list(Coordinator(store).failures()) and len(list(ResultStore(store).records())) == 2


def test_status_shows_running_stale_and_not_started(tmp_path, capsys):
    sweep = _sweep(tmp_path, methods='["mp", "mp+", "ziplm"]', seeds="[0]")
    store = tmp_path / "store"
    store.mkdir()
    from benchmarks.sweep import load_sweep
    from benchmarks.store import config_key

    specs = load_sweep(sweep).runs()
    keys = [config_key(s.pipeline, s.key_config) for s in specs]
    coord = Coordinator(store, expiry_s=60)
    live, _ = coord.claim("toy", keys[0])
    dead = coord.lease_path("toy", keys[1])
    dead.write_text(json.dumps({"worker": "otherhost:1", "host": "otherhost", "pid": 1, "started": "t",
                                "expiry_s": 1.0}))
    os.utime(dead, (time.time() - 100, time.time() - 100))
    assert status_main([str(store), str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "running " in out and "stale " in out and "not started" in out
    assert "3 run(s): 0 done, 1 running, 1 stale, 0 failed, 1 not started" in out
    other, holder = Coordinator(store).claim("toy", keys[0], "w2")
    assert other is None and holder.worker == live.info.worker  # a live lease is never taken
    took, stale = Coordinator(store).claim("toy", keys[1], "w2")
    assert took is not None and stale.worker == "otherhost:1"
    live.release()
    took.release()


@pytest.mark.parametrize("argv, match", [
    (["--executor", "slurm"], "'sbatch' is not on PATH"),
    (["--executor", "ray", "--ray-address", "127.0.0.1:9"], "--ray-address '127.0.0.1:9' does not answer"),
    (["--executor", "ray", "--ray-address", "nonsense"], "--ray-address must be HOST:PORT"),
    (["--lease-expiry", "0"], "--lease-expiry must be > 0"),
])
def test_executor_errors_before_any_run(tmp_path, capsys, monkeypatch, argv, match):
    if "slurm" in argv and not _have("submitit"):
        pytest.skip("submitit not installed")
    if "ray" in argv and not _have("ray"):
        pytest.skip("ray not installed")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    store = tmp_path / "store"
    assert run_main([str(_sweep(tmp_path)), "--store", str(store), *argv]) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1
    assert not (store / "toy").exists() and not (tmp_path / "cache").exists()  # nor the job folder


def test_unknown_executor_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run_main([str(_sweep(tmp_path)), "--executor", "k8s"])
    assert e.value.code == 2 and "invalid choice: 'k8s'" in capsys.readouterr().err


@needs_ray
@pytest.mark.integration
def test_resources_the_ray_cluster_cannot_give_are_an_error_before_any_run(tmp_path, capsys):
    import ray

    sweep = _sweep(tmp_path)
    sweep.write_text(sweep.read_text() + "[profiles.cpu.resources]\ngpus = 1\n")
    try:
        assert run_main([str(sweep), "--store", str(tmp_path / "store"), "--executor", "ray"]) == 2
    finally:
        ray.shutdown()
    assert "asks for 1 GPU(s) but the Ray cluster has 0" in capsys.readouterr().err


def test_bad_resources_in_a_sweep_are_named(tmp_path, capsys):
    sweep = _sweep(tmp_path)
    sweep.write_text(sweep.read_text() + "[profiles.cpu.resources]\ngpu = 1\n")
    assert run_main([str(sweep), "--store", str(tmp_path / "store")]) == 2
    assert "unknown key 'gpu' (did you mean 'gpus'?)" in capsys.readouterr().err


def test_paper_profile_validates_without_a_gpu_and_local_runs_check_devices(tmp_path, capsys):
    """--profile paper (device = cuda) can be planned on a login node without GPUs; running it
    here with the local executor is an error before any run."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    sweep = ROOT / "benchmarks" / "sweeps" / "pruning_runtime.toml"
    assert run_main([str(sweep), "--profile", "paper", "--dry-run", "--store", str(tmp_path / "s")]) == 0
    capsys.readouterr()
    assert run_main([str(sweep), "--profile", "paper", "--store", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "pruning_runtime: device='cuda'" in err and "is_available() is False" in err
    assert not (tmp_path / "s" / "pruning_runtime").exists()


def test_progress_lines_show_every_swept_field(tmp_path, capsys):
    """Runs that differ only by seed print different labels: every grid axis of the sweep file
    (read back from the TOML itself) is in every progress line, with this run's value."""
    import tomllib

    sweep = _sweep(tmp_path, methods='["mp", "mp+"]', seeds="[0, 1]")
    assert run_main([str(sweep), "--store", str(tmp_path / "store")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[") and " in " in line]
    grid = tomllib.loads(sweep.read_text())["profiles"]["cpu"]["grid"]
    combos = [frozenset({f"method={m}", f"seed={s}"}) for m in grid["method"] for s in grid["seed"]]
    assert len(lines) == 4
    shown = [[c for c in combos if all(f" {t} " in f" {line} " for t in c)] for line in lines]
    assert all(len(c) == 1 for c in shown), lines  # each line names exactly one run
    assert {c[0] for c in shown} == set(combos), lines


class _FakeRay:
    """Ray's surface as RayExecutor.run uses it, with every task's worker dying (ray.get raises)."""

    def __init__(self) -> None:
        self.submitted: list[tuple] = []

    def remote(self, **_kw):
        fake = self

        class Task:
            def options(self, **_opts):
                return self

            def remote(self, *args):
                fake.submitted.append(args)
                return len(fake.submitted) - 1

        return lambda fn: Task()

    @staticmethod
    def wait(refs, num_returns=1):
        return refs[:num_returns], refs[num_returns:]

    @staticmethod
    def get(ref):
        raise RuntimeError("The worker died unexpectedly while executing this task (SIGKILL)\nmore")


def test_a_task_whose_worker_dies_leaves_a_failure_entry(tmp_path, monkeypatch, capsys):
    from benchmarks.executors import Options, make_executor
    from benchmarks.resources import resources_for
    from benchmarks.sweep import load_sweep
    from benchmarks.store import config_key

    monkeypatch.setitem(sys.modules, "ray", _FakeRay())
    store = tmp_path / "store"
    specs = load_sweep(_sweep(tmp_path, methods='["mp"]', seeds="[0, 1]")).runs()
    ex = make_executor("ray", Options(store=str(store), expiry_s=60))
    outcomes = ex.run([(s, resources_for(s, s.resources)) for s in specs])
    assert [o.status for o in outcomes] == ["failed", "failed"]
    for s in specs:
        entry = Coordinator(store).failure("toy", config_key(s.pipeline, s.key_config))
        assert entry is not None and entry["error"].startswith("RuntimeError: The worker died unexpectedly")
        assert entry["config"] == s.key_config
    capsys.readouterr()
    assert status_main([str(store), str(_sweep(tmp_path, methods='["mp"]', seeds="[0, 1]"))]) == 0
    assert "2 run(s): 0 done, 0 running, 0 stale, 2 failed, 0 not started" in capsys.readouterr().out


def test_job_files_go_to_a_private_folder_outside_the_store(tmp_path, monkeypatch):
    from benchmarks.executors import ExecutorError, Options, private_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    opts = Options(store=str(tmp_path / "store"), expiry_s=60)
    assert Path(opts.log_dir) == tmp_path / "cache" / "osscar" / "jobs"
    old = os.umask(0)
    try:
        made = private_dir(Path(opts.log_dir))
        loose = tmp_path / "loose"
        loose.mkdir(mode=0o777)
        private_dir(loose)
    finally:
        os.umask(old)
    assert stat.S_IMODE(made.stat().st_mode) == 0o700 and stat.S_IMODE(loose.stat().st_mode) == 0o700
    if os.getuid() == 0:  # a folder of another user is refused, not taken over
        theirs = tmp_path / "theirs"
        theirs.mkdir()
        os.chown(theirs, 65534, 65534)
        with pytest.raises(ExecutorError, match="belongs to another user"):
            private_dir(theirs)


def test_a_sweep_prints_each_runs_long_steps(tmp_path, tiny_lm_dir, capsys):
    """The run's steps (loading, pruning, evaluating...) appear under its progress line, named by its key."""
    import re

    assert run_main([str(_lm_sweep(tmp_path, tiny_lm_dir)), "--store", str(tmp_path / "store")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"toy_lm/[0-9a-f]{16}: pruning \d+ blocks with ", out), out[-2000:]
    assert re.search(r"toy_lm/[0-9a-f]{16}: evaluating the pruned model", out)
