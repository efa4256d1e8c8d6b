"""benchmarks.solver_phases on the smallest head shape: every phase timed, every variant at one objective."""

import json

from benchmarks.solver_phases import main


def test_phases_and_variants_are_recorded(tmp_path, capsys):
    out = tmp_path / "phases.json"
    assert main(["--shapes", "heads-9x64", "--repeats", "1", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["shapes"][0]
    assert set(row["phases"]["osscar"]) == {"inverse", "stage A", "K and R", "stage B trials", "refit", "trials"}
    assert set(row["phases"]["ziplm"]) == {"inverse", "stage A", "refit"}
    assert row["phases"]["osscar"]["trials"] >= 1
    objectives = {v["objective"] for v in row["prune"].values()}
    assert len(objectives) == 1  # on this shape every variant keeps ZipLM's support
    assert "heads-9x64: osscar inverse" in capsys.readouterr().out


def test_a_bad_shape_is_named(tmp_path, capsys):
    assert main(["--shapes", "heads-9x65", "--out", str(tmp_path / "x.json")]) == 2
    assert "--shapes: unknown shape(s) heads-9x65; allowed:" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
