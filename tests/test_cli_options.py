"""CLI parsing without torch, each default printed once, errors naming the flags as typed."""

from __future__ import annotations

import subprocess
import sys

import pytest

HELP_COMMANDS = [["-m", "reports", "--help"], ["-m", "benchmarks.status", "--help"], ["-m", "osscar", "--help"], ["-m", "osscar", "lm", "--help"], ["-m", "osscar", "vision", "--help"],
                 ["-m", "benchmarks.run", "--help"], ["-m", "benchmarks.compare", "--help"]]


@pytest.mark.parametrize("args", HELP_COMMANDS, ids=lambda a: " ".join(a[1:]))
def test_help_imports_no_torch(args):
    code = ("import runpy, sys\n"
            f"try:\n    runpy.run_module({args[1]!r}, run_name='__main__', alter_sys=True)\n"
            "except SystemExit:\n    pass\n"
            "print('TORCH_LOADED' if 'torch' in sys.modules else 'NO_TORCH')")
    r = subprocess.run([sys.executable, "-c", code, *args[2:]], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "usage:" in r.stdout and r.stdout.strip().endswith("NO_TORCH"), "--help imported torch"


def _parsers():
    from benchmarks.run import _parser
    from osscar.lm.cli import build_parser as lm_parser
    from osscar.vision.cli import build_parser as vision_parser

    return {"lm": lm_parser(), "vision": vision_parser(), "benchmarks.run": _parser()}


@pytest.mark.parametrize("name", ["lm", "vision", "benchmarks.run"])
def test_each_default_is_printed_once(name):
    parser = _parsers()[name]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.help is None:
            continue
        text = formatter._expand_help(action)
        assert text.lower().count("(default") <= 1, (action.option_strings, text)
        assert "(default: None)" not in text and "(default: False)" not in text, text


def test_option_lists_agree_with_their_implementations():
    from osscar import options
    from osscar.lm.text.data import CORPORA
    from osscar.lm.sources.models import EMBEDDED_MODELS
    from osscar.lm.run_config import ALLOCATIONS

    assert tuple(sorted(CORPORA)) == options.CORPUS_NAMES
    assert tuple(EMBEDDED_MODELS) == options.EMBEDDED_LM_NAMES
    assert ALLOCATIONS == options.ALLOCATIONS


def test_as_flags_names_the_flags_a_user_typed():
    from osscar.options import as_flags

    flags = {"head_fraction": "--head-fraction", "eval_corpora": "--eval-corpus", "n_samples": "--n-samples"}
    msg = "head_fraction and neuron_fraction are both 0; eval_corpora x; n_samples_total stays"
    assert as_flags(msg, flags) == ("--head-fraction and neuron_fraction are both 0; --eval-corpus x; "
                                    "n_samples_total stays")


def test_as_flags_leaves_the_users_paths_alone():
    from osscar.options import as_flags

    flags = {"model": "--model", "data_root": "--data-root", "dataset": "--dataset"}
    msg = ("model='/no/such/model': not found; model.gguf, ./model, ~model, C:\\x\\model, model/x; "
           "data_root=/srv/data_root does not exist; got model.")
    assert as_flags(msg, flags) == ("--model='/no/such/model': not found; model.gguf, ./model, ~model, C:\\x\\model, "
                                    "model/x; --data-root=/srv/data_root does not exist; got --model.")
    # a value the user typed stays as typed (a path with a space); inside other words it does not hide a field
    assert as_flags("model=/srv/my model: missing", flags, keep=["/srv/my model"]) == "--model=/srv/my model: missing"
    assert as_flags("dataset: bad (data)", flags, keep=["data"]) == "--dataset: bad (data)"


def test_lm_run_that_prunes_nothing_is_rejected_naming_the_flags(capsys, tmp_path):
    from osscar.lm.cli import main

    assert main(["--head-fraction", "0", "--neuron-fraction", "0", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--head-fraction and --neuron-fraction are both 0" in err and "nothing would be pruned" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("value", ["", ",", " , "])
def test_vision_empty_flops_list_is_an_error(value, capsys):
    from osscar.vision.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--flops-fraction", value])
    assert e.value.code == 2 and "--flops-fraction: expected at least one number" in capsys.readouterr().err


def test_vision_errors_name_flags(capsys):
    from osscar.vision.cli import main

    code = main(["--random-init", "--n-calib", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "--n-calib" in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_help_names_the_embedded_model_for_what_it_is():
    """The embedded GGUF is the Instruct model, 4-bit Q4_1: the help says so, as the file name does."""
    from osscar.lm.sources.models import EMBEDDED_MODELS

    assert EMBEDDED_MODELS["smollm2-135m"]["gguf"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    r = subprocess.run([sys.executable, "-m", "osscar", "--help"], capture_output=True, text=True, timeout=120)
    assert "SmolLM2-135M-Instruct (Q4_1 GGUF)" in " ".join(r.stdout.split())
