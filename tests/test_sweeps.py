"""Sweeps and the result store: validation before work, skip-on-rerun, SIGKILL resume, determinism."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.run import main as run_main
from benchmarks.sweep import load_sweep, sweep_files
from benchmarks.store import ResultStore

ROOT = Path(__file__).resolve().parent.parent


def _write(tmp_path: Path, body: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


SOLVER_SWEEP = """
name = "toy"
pipeline = "solver"
[profiles.cpu.base]
shape = "heads-12x64"
[profiles.cpu.grid]
method = {methods}
seed = {seeds}
"""


def test_every_shipped_sweep_validates():
    files = sweep_files()
    assert {f.stem for f in files} >= {"pruning_runtime"}
    for f in files:
        assert load_sweep(f, "cpu").runs()


def test_fields_added_later_keep_old_run_keys_at_their_neutral_value():
    """A new config field at the value that reproduces the old behaviour (device="cpu") is left
    out of the run key, so committed records keep their keys; any other value is part of it."""
    from benchmarks.pipelines import get_pipeline
    from benchmarks.store import config_key

    lm = get_pipeline("lm")
    old = {"model": "smollm2-135m", "method": "osscar", "threads": 1}
    assert config_key("lm", lm.key_config({**old, "device": "cpu", "dtype": "float32"})) == config_key("lm", old)
    assert lm.key_config({**old, "device": "cuda", "dtype": "float16"}) == {**old, "device": "cuda", "dtype": "float16"}
    assert lm.key_config({**old, "output_dir": "x"}) == old  # volatile
    # every committed record is still found under the key its sweep computes now: every run of a
    # reproduce sweep has its record; a long sweep (in_reproduce = false) may be partly run, but each
    # of its records is one of its runs
    store = ResultStore(ROOT / "results" / "records")
    for f in sweep_files():
        sweep = load_sweep(f, "cpu")
        keys = {config_key(spec.pipeline, spec.key_config) for spec in sweep.runs()}
        if sweep.in_reproduce:
            assert all(store.has(sweep.name, key) for key in keys), sweep.name
        assert {r.key for r in store.records(sweep.name)} <= keys, sweep.name


@pytest.mark.parametrize("body, match", [
    (SOLVER_SWEEP.format(methods='["osscar", "osscr"]', seeds="[0]"), "method='osscr'.*unknown method 'osscr'"),
    (SOLVER_SWEEP.format(methods='["osscar"]', seeds="[0]") + "colour = [1]\n", "unknown key 'colour'"),
    (SOLVER_SWEEP.format(methods='["osscar"]', seeds="[0]").replace("method =", "methd ="),
     "unknown key 'methd' \\(did you mean 'method'\\?\\)"),
    (SOLVER_SWEEP.format(methods='["osscar"]', seeds="[0]").replace('"heads-12x64"', '"opt-99b"'),
     "shape='opt-99b' is unknown"),
    (SOLVER_SWEEP.format(methods='["osscar"]', seeds="[0]").replace('"solver"', '"audio"'),
     "key 'pipeline': unknown pipeline 'audio'"),
    (SOLVER_SWEEP.format(methods='["osscar"]', seeds="[0]").replace("[profiles.cpu.grid]", "[profiles.cpu.grid"),
     "TOML syntax error: .*line 6"),
    (SOLVER_SWEEP.format(methods="[]", seeds="[0]"), "grid axis 'method' must be a non-empty array"),
    (SOLVER_SWEEP.format(methods='["osscar"]', seeds="[0]").replace('pipeline = "solver"', 'pipeline = "solver"\nin_reproduce = "no"'),
     "key 'in_reproduce' must be true or false, got 'no'"),
])
def test_bad_sweeps_exit_2_with_one_line_naming_file_and_key(tmp_path, capsys, body, match):
    import re

    path = _write(tmp_path, body)
    store = tmp_path / "store"
    assert run_main([str(path), "--store", str(store)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: {path}") and re.search(match, err), err
    assert not store.exists()


def test_bad_sweep_with_debug_shows_the_exception(tmp_path):
    from benchmarks.sweep import SweepError

    path = _write(tmp_path, SOLVER_SWEEP.format(methods='["osscr"]', seeds="[0]"))
    with pytest.raises(SweepError, match="osscr"):
        run_main([str(path), "--store", str(tmp_path / "store"), "--debug"])


def test_rerun_skips_finished_runs_and_changes_nothing(tmp_path, capsys):
    path = _write(tmp_path, SOLVER_SWEEP.format(methods='["mp", "mp+"]', seeds="[0, 1]"))
    store = tmp_path / "store"
    run_main([str(path), "--store", str(store)])
    files = sorted((store / "toy").glob("*.json"))
    assert len(files) == 4
    before = {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in files}
    capsys.readouterr()
    run_main([str(path), "--store", str(store)])
    assert "4 done, 0 to run" in capsys.readouterr().out
    assert {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in sorted((store / "toy").glob("*.json"))} == before
    rec = next(ResultStore(store).records("toy"))
    assert rec.provenance["versions"]["torch"] and rec.provenance["git"]["commit"] is not None
    assert rec.metrics["problem"] == "synthetic"


def test_same_seed_same_metrics(tmp_path):
    from benchmarks.solver_pipeline import SolverRunConfig, run_solver

    a = run_solver(SolverRunConfig(shape="heads-12x64", method="osscar", seed=3))
    b = run_solver(SolverRunConfig(shape="heads-12x64", method="osscar", seed=3))
    for key in ("objective", "kept", "dense_objective"):
        assert a[key] == b[key]


def test_sigkill_mid_sweep_then_rerun_completes_and_loses_nothing(tmp_path):
    seeds = list(range(40))
    path = _write(tmp_path, SOLVER_SWEEP.format(methods='["ziplm"]', seeds=json.dumps(seeds)))
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "benchmarks.run", str(path), "--store", str(store)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((store / "toy").glob("*.json"))) < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {f.name: f.read_bytes() for f in (store / "toy").glob("*.json")}
    assert 2 <= len(done) < len(seeds), "the sweep was not interrupted mid-run"
    for blob in done.values():
        json.loads(blob)  # every visible record is whole
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    after = {f.name: f.read_bytes() for f in (store / "toy").glob("*.json")}
    assert len(after) == len(seeds)
    assert all(after[name] == blob for name, blob in done.items())
