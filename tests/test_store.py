"""The record store validates what it reads: bad files are named, quarantined and redone; the
report builder skips them; the runner records the thread count the run used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks.run import main as run_main
from benchmarks.store import QUARANTINE, BadRecord, ResultStore, RunRecord

SWEEP = """
name = "toy"
pipeline = "solver"
[profiles.cpu.base]
shape = "heads-9x64"
threads = 2
[profiles.cpu.grid]
method = ["mp", "mp+"]
"""


def _record(**kw) -> RunRecord:
    base = dict(experiment="toy", pipeline="solver", config={"method": "mp"}, metrics={"objective": -1.0},
                provenance={}, started="s", finished="f")
    base.update(kw)
    return RunRecord(**base)


def _run_sweep(tmp_path: Path) -> tuple[Path, list[Path]]:
    sweep = tmp_path / "s.toml"
    sweep.write_text(SWEEP)
    store = tmp_path / "store"
    assert run_main([str(sweep), "--store", str(store)]) == 0
    return sweep, sorted((store / "toy").glob("*.json"))


BAD_CONTENTS = {
    "truncated": lambda text: text[: len(text) // 2],
    "empty": lambda text: "",
    "empty object": lambda text: "{}",
    "wrong type": lambda text: json.dumps({**json.loads(text), "metrics": [1, 2]}),
    "edited config": lambda text: json.dumps({**json.loads(text), "config": {**json.loads(text)["config"], "seed": 7}}),
}


@pytest.mark.parametrize("kind", sorted(BAD_CONTENTS))
def test_bad_record_is_quarantined_and_the_run_redone(tmp_path, capsys, kind):
    sweep, files = _run_sweep(tmp_path)
    victim = files[0]
    good = victim.read_text()
    victim.write_text(BAD_CONTENTS[kind](good))
    store = ResultStore(tmp_path / "store")
    with pytest.raises(BadRecord, match=str(victim)):
        store.read(victim)
    capsys.readouterr()
    assert run_main([str(sweep), "--store", str(tmp_path / "store")]) == 0
    out = capsys.readouterr()
    assert "1 done, 1 to run" in out.out and str(victim) in out.err and "will be redone" in out.err
    redone = store.read(victim)  # valid again, same config
    assert redone.config == json.loads(good)["config"]
    quarantined = list((tmp_path / "store" / QUARANTINE / "toy").glob("*.json"))
    assert len(quarantined) == 1 and quarantined[0].with_suffix(".reason.txt").is_file()
    assert len(list(store.records())) == 2  # the quarantine folder is not an experiment


def test_records_skips_and_names_bad_files(tmp_path):
    store = ResultStore(tmp_path)
    store.put(_record())
    bad = tmp_path / "toy" / "0123456789abcdef.json"
    bad.write_text('{"experiment": "toy", "pipe')
    seen: list[BadRecord] = []
    assert len(list(store.records(on_bad=seen.append))) == 1
    assert [b.path for b in seen] == [bad] and "not valid JSON" in seen[0].reason
    assert bad.is_file()  # reading never moves files; only has() (the runner's check) quarantines


def test_record_in_the_wrong_file_is_rejected(tmp_path):
    store = ResultStore(tmp_path)
    path = store.put(_record())
    path.rename(path.with_name("ffffffffffffffff.json"))
    with pytest.raises(BadRecord, match="file name does not match"):
        next(iter(store.records(on_bad=lambda b: (_ for _ in ()).throw(b))))


def test_report_builds_with_a_bad_record(tmp_path, capsys):
    from reports.build import build_report

    _, files = _run_sweep(tmp_path)
    files[0].write_text(files[0].read_text()[:40])
    index = build_report(tmp_path / "store", tmp_path / "report")
    assert index.is_file()
    assert str(files[0]) in capsys.readouterr().err


def test_recorded_threads_are_the_configured_ones_after_another_count(tmp_path):
    torch.set_num_threads(1)
    _, files = _run_sweep(tmp_path)  # threads = 2 in the sweep
    for f in files:
        rec = json.loads(f.read_text())
        assert rec["config"]["threads"] == 2
        assert rec["provenance"]["device"]["torch_threads"] == 2 and rec["metrics"]["threads_used"] == 2
    assert torch.get_num_threads() == 1  # restored for whatever runs next


def test_torch_threads_rejects_bad_counts():
    from osscar.devices import torch_threads

    with pytest.raises(ValueError, match="threads must be a positive integer"):
        with torch_threads(0):
            pass


def test_records_carry_the_memory_of_their_run_alone(tmp_path):
    _, files = _run_sweep(tmp_path)
    for f in files:
        mem = json.loads(f.read_text())["metrics"]["memory_run"]
        assert mem["peak_rss_mb"] > 0 and "run" in mem["phases"]


@pytest.mark.parametrize("name, ok", [
    ("lm_perplexity", True), ("vision-accuracy.v2", True), ("A1", True),
    ("../../x", False), ("..", False), ("a..b", False), ("a/b", False), ("a\\\\b", False), ("/abs", False),
    ("_leases", False), ("_quarantine", False), (".hidden", False), ("", False), ("a b", False), ("x\n", False),
    (5, False), (None, False), (["a"], False),
])
def test_experiment_names_are_safe_slugs(tmp_path, name, ok):
    from benchmarks.store import check_name

    assert (check_name(name) is None) == ok
    store = ResultStore(tmp_path)
    if ok:
        path = store.path(name, "0123456789abcdef")
        assert path.parent.parent == tmp_path and path.parent.name == name  # one folder, directly in the store
    else:
        with pytest.raises(ValueError, match="experiment name must be"):
            store.path(name, "0123456789abcdef")


def test_store_paths_stay_inside_the_store_through_links(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "toy").symlink_to(outside)
    with pytest.raises(ValueError, match="leaves the store"):
        ResultStore(tmp_path / "store").put(_record())
    assert not list(outside.iterdir())


def test_a_sweep_named_out_of_the_store_is_refused_before_planning(tmp_path, capsys):
    sweep = tmp_path / "s.toml"
    sweep.write_text(SWEEP.replace('name = "toy"', 'name = "../../escaped"'))
    assert run_main([str(sweep), "--store", str(tmp_path / "a" / "b" / "store")]) == 2
    out = capsys.readouterr()
    assert out.out == "" and "key 'name' must be a safe name" in out.err and len(out.err.strip().splitlines()) == 1
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "a").exists()
