"""Bad input to the store side of the CLIs (benchmarks.run, benchmarks.status, reports), run as a user
would: the real command in a subprocess. Each case: one line on stderr naming the flag or key as the
user wrote it, exit code 2, no traceback, nothing written. Unreadable records are named and skipped.

Permission cases need a user the permissions bind: as root they run under ``nobody`` (setpriv).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOBODY = 65534
SWEEP = """
name = {name}
pipeline = "solver"
[profiles.cpu.base]
shape = "heads-9x64"
[profiles.cpu.grid]
method = ["mp", "mp+"]
"""
FAKE_RAY = '''
def init(*args, **kwargs):
    raise TimeoutError("Timed out after 30 seconds waiting for the head node to start")
'''


@pytest.fixture
def world() -> Iterator[Path]:
    """A folder every user can enter (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="osscar-bad-input-"))
    os.chmod(path, 0o755)
    yield path
    for p in path.rglob("*"):
        if p.is_dir() and not p.is_symlink():
            os.chmod(p, 0o755)
    shutil.rmtree(path, ignore_errors=True)


def _cli(module: str, args: list[str], home: Path, as_nobody: bool = False,
         pythonpath: list[Path] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, [*pythonpath, ROOT])), "HOME": str(home),
           "XDG_CACHE_HOME": str(home / "cache"), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", module, *args]
    if as_nobody and os.getuid() == 0:
        cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cmd]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _sweep(world: Path, name: str = '"toy"') -> Path:
    path = world / "s.toml"
    path.write_text(SWEEP.format(name=name))
    os.chmod(path, 0o644)
    return path


def _read_only_store(world: Path) -> list[str]:
    store = world / "ro"
    store.mkdir()
    os.chmod(store, 0o555)  # binds nobody (the case runs as nobody under root) and any non-root user
    return ["--store", str(store)]


def _read_only_experiment(world: Path) -> list[str]:
    store = world / "rx"
    (store / "toy").mkdir(parents=True)
    os.chmod(store / "toy", 0o555)
    if os.getuid() == 0:
        os.chown(store, NOBODY, NOBODY)  # the store is theirs, its experiment folder is not writable
    return ["--store", str(store)]


def _fake_ray(world: Path) -> Path:
    (world / "fake" / "ray").mkdir(parents=True)
    (world / "fake" / "ray" / "__init__.py").write_text(FAKE_RAY)
    return world / "fake"


def _file(world: Path) -> Path:
    (world / "afile").write_text("x")
    return world / "afile"


# id: (module, sweep name, extra args (given the world folder), as nobody, fake ray, expected words)
CASES: dict[str, tuple[str, str, Callable[[Path], list[str]], bool, bool, str]] = {
    "name climbs out of the store": ("benchmarks.run", '"../../x"', lambda w: ["--store", str(w / "st")], False,
                                     False, "key 'name' must be a safe name"),
    "name is a number": ("benchmarks.run", "5", lambda w: ["--store", str(w / "st")], False, False,
                         "key 'name' must be a string, got int 5"),
    "name is the store's own folder": ("benchmarks.run", '"_leases"', lambda w: ["--store", str(w / "st")], False,
                                       False, "key 'name' must be a safe name"),
    "name has a separator": ("benchmarks.run", '"a/b"', lambda w: ["--store", str(w / "st")], False, False,
                             "must be a safe name"),
    "name is a list": ("benchmarks.run", '["a"]', lambda w: ["--store", str(w / "st")], False, False,
                       "key 'name' must be a string, got list"),
    "--store is a file": ("benchmarks.run", '"toy"', lambda w: ["--store", str(_file(w))], False, False,
                          "--store '{world}/afile' is a file, not a folder"),
    "--store below a file": ("benchmarks.run", '"toy"', lambda w: ["--store", str(_file(w) / "sub")], False, False,
                             "cannot be created: '{world}/afile' is a file"),
    "--store read-only": ("benchmarks.run", '"toy"', _read_only_store, True, False, "is read-only for this user"),
    "experiment folder read-only": ("benchmarks.run", '"toy"', _read_only_experiment, True, False,
                                    "/rx/toy' is read-only for this user"),
    "--store is a file, dry run": ("benchmarks.run", '"toy"', lambda w: ["--store", str(_file(w)), "--dry-run"],
                                   False, False, "is a file, not a folder"),
    "--lease-expiry 0": ("benchmarks.run", '"toy"', lambda w: ["--store", str(w / "st"), "--lease-expiry", "0"],
                         False, False, "--lease-expiry must be > 0"),
    "--job-dir is a file": ("benchmarks.run", '"toy"', lambda w: ["--store", str(w / "st"), "--executor",
                                                                  "submitit-local", "--job-dir", str(_file(w))],
                            False, False, "--job-dir '{world}/afile' is not a folder"),
    "local ray start times out": ("benchmarks.run", '"toy"', lambda w: ["--store", str(w / "st"), "--executor", "ray"],
                                  False, True, "starting a local Ray cluster failed (TimeoutError: Timed out"),
    "status: store is a file": ("benchmarks.status", '"toy"', lambda w: [str(_file(w))], False, False,
                                "store '{world}/afile' is not a folder"),
    "status: sweep name climbs out": ("benchmarks.status", '"../x"', lambda w: [str(w)], False, False,
                                      "key 'name' must be a safe name"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2_no_traceback(world, case):
    module, name, extra, as_nobody, fake_ray, words = CASES[case]
    if case.startswith("--job-dir") and not _have("submitit"):
        pytest.skip("submitit not installed")
    sweep = _sweep(world, name)
    args = [*extra(world)]
    args = [str(sweep), *args] if module == "benchmarks.run" else [args[0], str(sweep), *args[1:]]
    before = sorted(p.relative_to(world) for p in world.rglob("*"))
    r = _cli(module, args, world, as_nobody=as_nobody, pythonpath=[_fake_ray(world)] if fake_ray else [])
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert len(lines) == 1 and words.format(world=world) in lines[0], r.stderr
    after = sorted(p.relative_to(world) for p in world.rglob("*") if "fake" not in p.parts)
    assert after == [p for p in before if "fake" not in p.parts], "a bad input wrote to disk"
    assert not (world.parent / "x").exists() and not (ROOT.parent / "x").exists()


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _store_with_an_unreadable_record(world: Path) -> tuple[Path, Path, Path]:
    """A store of the toy sweep (two records) owned by the user the CLIs run as, but one record they
    may not read (mode 000, and owned by root when the test runs as root)."""
    from benchmarks.run import main as run_main

    sweep, store = _sweep(world), world / "store"
    assert run_main([str(sweep), "--store", str(store)]) == 0
    victim = sorted((store / "toy").glob("*.json"))[0]
    if os.getuid() == 0:
        for p in [store, *store.rglob("*")]:
            os.chown(p, NOBODY, NOBODY)
        os.chown(victim, 0, 0)
    os.chmod(victim, 0)
    return sweep, store, victim


@pytest.mark.skipif(shutil.which("setpriv") is None and os.getuid() == 0, reason="needs setpriv as root")
def test_an_unreadable_record_is_named_and_skipped_by_run_status_and_reports(world):
    sweep, store, victim = _store_with_an_unreadable_record(world)
    run = _cli("benchmarks.run", [str(sweep), "--store", str(store)], world, as_nobody=True)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stdout + run.stderr
    assert f"cannot read record {victim}: permission denied" in run.stderr
    assert "2 done, 0 to run" in run.stdout and victim.is_file() and not (store / "_quarantine").exists()
    status = _cli("benchmarks.status", [str(store), str(sweep)], world, as_nobody=True)
    assert status.returncode == 0 and "Traceback" not in status.stderr, status.stdout + status.stderr
    assert f"unreadable record: {victim}: permission denied" in status.stdout
    assert "2 run(s): 1 done, 0 running, 0 stale, 1 failed, 0 not started" in status.stdout
    listing = _cli("benchmarks.status", [str(store)], world, as_nobody=True)  # no sweep: what the store holds
    assert listing.returncode == 0 and f"unreadable record: {victim}" in listing.stdout, listing.stdout + listing.stderr
    assert "2 run(s): 1 done" in listing.stdout
    out = world / "report"
    out.mkdir()
    os.chown(out, NOBODY, NOBODY) if os.getuid() == 0 else None
    rep = _cli("reports", ["--store", str(store), "--out", str(out)], world, as_nobody=True)
    assert rep.returncode == 0 and "Traceback" not in rep.stderr, rep.stdout + rep.stderr
    assert f"skipping bad record {victim}: permission denied" in rep.stderr


def test_dry_run_changes_nothing_on_disk_and_names_a_bad_record(world):
    from benchmarks.run import main as run_main

    sweep, store = _sweep(world), world / "store"
    assert run_main([str(sweep), "--store", str(store)]) == 0
    victim = sorted((store / "toy").glob("*.json"))[0]
    victim.write_text(victim.read_text()[:30])
    before = {p: (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"") for p in store.rglob("*")}
    r = _cli("benchmarks.run", [str(sweep), "--store", str(store), "--dry-run"], world)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert f"bad record {victim}" in r.stderr and "would be moved" in r.stderr
    assert "1 done, 1 to run" in r.stdout
    assert {p: (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"") for p in store.rglob("*")} == before


def test_a_dry_run_on_a_read_only_store_plans(world):
    """--dry-run only reads: a store the user cannot write is fine for it."""
    args = _read_only_store(world)
    r = _cli("benchmarks.run", [str(_sweep(world)), *args, "--dry-run"], world, as_nobody=True)
    assert r.returncode == 0 and "0 done, 2 to run" in r.stdout, r.stdout + r.stderr
    assert not any(Path(args[1]).iterdir())


def test_modes_of_a_fresh_store_do_not_follow_a_permissive_umask(world):
    """Under umask 000 a real run makes its folders 0755 and files 0644 (records, and leases meanwhile)."""
    sweep, store = _sweep(world), world / "store"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(["sh", "-c", 'umask 000 && exec "$0" -m benchmarks.run "$1" --store "$2"', sys.executable,
                        str(sweep), str(store)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    modes = {p.relative_to(store).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in store.rglob("*")}
    assert set(modes.values()) <= {"0o755", "0o644"}, modes
    assert {k for k, v in modes.items() if v == "0o755"} == {"toy", "_leases", "_leases/toy"}, modes
    assert json.loads(next((store / "toy").glob("*.json")).read_text())["experiment"] == "toy"
