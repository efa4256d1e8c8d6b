"""``benchmarks.run --only KEY=V1,V2`` and ``--list``: exactly the matching runs, clear errors, offline listing."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from benchmarks.run import main as run_main

ROOT = Path(__file__).resolve().parent.parent

METHODS, SEEDS, KEEPS = ["mp", "mp+", "osscar"], [0, 1, 2], [0.25, 0.5]
EXTRA = {"method": "ziplm", "seed": 7, "keep": 0.75}
SWEEP = f"""
name = "toy"
pipeline = "solver"
[profiles.cpu.base]
shape = "heads-12x64"
[profiles.cpu.grid]
method = {METHODS!r}
seed = {SEEDS!r}
target = [{{ keep = 0.25 }}, {{ keep = 0.5 }}]
[[profiles.cpu.extra]]
method = "ziplm"
seed = 7
keep = 0.75
""".replace("'", '"')


def _all_runs() -> list[dict]:
    runs = [{"method": m, "seed": s, "keep": k} for m, s, k in itertools.product(METHODS, SEEDS, KEEPS)]
    return runs + [dict(EXTRA)]


def _listed(out: str) -> list[dict]:
    """The fields of each ``--list`` line (``toy/KEY  shape=... method=... seed=... keep=...``)."""
    runs = []
    for line in out.strip().splitlines():
        head, _, rest = line.partition("  ")
        assert head.startswith("toy/") and len(head) == len("toy/") + 16, line
        fields = dict(kv.split("=", 1) for kv in rest.split())
        assert fields.pop("shape") == "heads-12x64"
        runs.append({"method": fields["method"], "seed": int(fields["seed"]), "keep": float(fields["keep"])})
    return runs


def _key(run: dict) -> tuple:
    return run["method"], run["seed"], run["keep"]


@pytest.mark.parametrize("only, keep_run", [
    ([], lambda r: True),
    (["method=mp,osscar"], lambda r: r["method"] in ("mp", "osscar")),
    (["method=mp,osscar", "seed=1"], lambda r: r["method"] in ("mp", "osscar") and r["seed"] == 1),
    (["keep=0.5", "seed=0,2"], lambda r: r["keep"] == 0.5 and r["seed"] in (0, 2)),
    (["keep=.75"], lambda r: r["keep"] == 0.75),  # read as the sweep's float
    (["seed=1.0", "method=mp+"], lambda r: r["seed"] == 1 and r["method"] == "mp+"),  # read as the sweep's int
    (["method=mp,osscar", "method=osscar,ziplm"], lambda r: r["method"] == "osscar"),  # every filter holds
])
def test_only_selects_exactly_the_matching_runs(tmp_path, capsys, only, keep_run):
    path = tmp_path / "toy.toml"
    path.write_text(SWEEP)
    store = tmp_path / "store"
    argv = [str(path), "--store", str(store), "--list"] + [a for o in only for a in ("--only", o)]
    assert run_main(argv) == 0
    got = _listed(capsys.readouterr().out)
    expected = [r for r in _all_runs() if keep_run(r)]
    assert sorted(map(_key, got)) == sorted(map(_key, expected)) and len(got) == len(expected)
    assert not store.exists()  # --list reads no store and runs nothing


def test_dry_run_lists_and_counts_the_selected_runs_only(tmp_path, capsys):
    path = tmp_path / "toy.toml"
    path.write_text(SWEEP)
    assert run_main([str(path), "--store", str(tmp_path / "store"), "--dry-run", "--only", "seed=2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("6 runs in 1 sweep(s) [cpu]: 0 done, 6 to run")
    assert len(out) == 7 and all("'seed': 2" in line for line in out[1:])


@pytest.mark.parametrize("only, match", [
    (["modle=mp"], r"^error: --only modle=mp: unknown key 'modle'; known keys: keep, method, seed, shape$"),
    (["methd=mp"], r"^error: --only methd=mp: unknown key 'methd' \(did you mean 'method'\?\); known keys: keep, "),
    (["method=mp,lasso"], r"^error: --only method=mp,lasso: no run has method=lasso; method takes: mp, mp\+, osscar, ziplm$"),
    (["seed=one"], r"^error: --only seed=one: no run has seed=one; seed takes: 0, 1, 2, 7$"),
    (["method=ziplm", "seed=0"], r"^error: --only method=ziplm --only seed=0: no run matches all filters together; "
                                 r"method takes: mp, mp\+, osscar, ziplm; seed takes: 0, 1, 2, 7$"),
    (["method"], r"^error: --only expects KEY=VALUE\[,VALUE\.\.\.\], got 'method'$"),
    (["method=mp,"], r"^error: --only expects KEY=VALUE\[,VALUE\.\.\.\], got 'method=mp,'$"),
])
@pytest.mark.parametrize("mode", [[], ["--list"], ["--dry-run"]])
def test_a_filter_that_matches_nothing_exits_2_with_one_line_naming_what_is_known(tmp_path, capsys, only, match, mode):
    import re

    path = tmp_path / "toy.toml"
    path.write_text(SWEEP)
    store = tmp_path / "store"
    assert run_main([str(path), "--store", str(store), *mode] + [a for o in only for a in ("--only", o)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and re.search(match, err), err
    assert not captured.out and not store.exists()


def _offline(monkeypatch):
    """No model config can be read (as offline, with nothing cached)."""
    import osscar.lm.sources.models as rc  # check_model reads configs through it

    def no_hub(model, cache_dir=None):
        raise OSError(f"We couldn't connect to 'https://huggingface.co' to load {model}")

    monkeypatch.setattr(rc, "load_config", no_hub)


PAPER = str(ROOT / "benchmarks" / "sweeps" / "lm_perplexity.toml")


@pytest.mark.parametrize("mode", ["--list", "--dry-run"])
def test_paper_profile_lists_the_opt_2_7b_runs_offline_with_a_note(tmp_path, capsys, monkeypatch, mode):
    _offline(monkeypatch)
    argv = [PAPER, "--profile", "paper", "--store", str(tmp_path / "store"), mode, "--only", "model=facebook/opt-2.7b"]
    assert run_main(argv) == 0
    captured = capsys.readouterr()
    lines = [ln for ln in captured.out.splitlines() if ln.lstrip().startswith("lm_perplexity/")]
    assert len(lines) == 12 and all("facebook/opt-2.7b" in ln for ln in lines)  # 4 methods x 3 speedups
    assert captured.err.strip() == ("note: no config readable here for facebook/opt-2.7b (hub, offline or not cached): "
                                    "their runs are listed without the checks that need it "
                                    "(architecture, max positions, layers)")


def test_paper_profile_without_its_configs_is_still_an_error_when_runs_would_start(tmp_path, capsys, monkeypatch):
    _offline(monkeypatch)
    argv = [PAPER, "--profile", "paper", "--store", str(tmp_path / "store"), "--only", "model=facebook/opt-2.7b"]
    assert run_main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot read its config (OSError: We couldn't connect" in err and "Traceback" not in err


def test_listing_offline_gives_the_keys_a_validated_plan_gives(tmp_path, capsys, monkeypatch):
    """Skipping the config-dependent checks changes no run key: the keys listed offline are those
    listed with a config at hand (a stand-in OPT config)."""
    from transformers import OPTConfig

    import osscar.lm.sources.models as rc  # check_model reads configs through it

    argv = [PAPER, "--profile", "paper", "--store", str(tmp_path / "store"), "--list"]
    monkeypatch.setattr(rc, "load_config", lambda model, cache_dir=None: OPTConfig())
    assert run_main(argv) == 0
    with_config = capsys.readouterr()
    assert not with_config.err
    _offline(monkeypatch)
    assert run_main(argv) == 0
    offline = capsys.readouterr()
    assert offline.out == with_config.out and len(offline.out.splitlines()) == 36
    assert "facebook/opt-1.3b, facebook/opt-2.7b, facebook/opt-6.7b" in offline.err
