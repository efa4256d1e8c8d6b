"""Run-config fields carry their command-line option (osscar.config_cli): the LM parser, its help,
defaults, choices, config_from_args and the flag names come from the fields; a new field needs no other edit."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from osscar.config_cli import SECTIONS, add_config_options, config_values, option
from osscar.lm.cli import FIELD_FLAGS, build_parser, config_from_args
from osscar.lm.run_config import LMRunConfig


def _values(argv: list[str]) -> dict:
    return config_values(LMRunConfig, build_parser().parse_args(argv))


def test_no_flags_give_the_field_defaults_but_the_clis_output_folder():
    got = _values([])
    want = {f.name: (f.default_factory() if f.default is dataclasses.MISSING else f.default)
            for f in dataclasses.fields(LMRunConfig)}
    assert got == {**want, "output_dir": "results/lm"}


def test_flags_whose_value_is_converted_into_the_field():
    got = _values("--tasks piqa,boolq --limit 0 --layers 0,3 --latency 1x8 --latency 2x16 --eval-corpus c4 "
                  "--eval-corpus ptb --eval-windows 0 --method-param min_swap=2 --method-param tag=abc "
                  "--attn-param p_hat=1 --dense --save-model --allocation-point 1x64".split())
    assert {k: got[k] for k in ("zero_shot_tasks", "zero_shot_limit", "layers", "latency_points", "eval_corpora",
                                "eval_windows", "method_params", "attn_params", "mlp_params", "evaluate_dense",
                                "save_model", "allocation_point")} == {
        "zero_shot_tasks": ("piqa", "boolq"), "zero_shot_limit": None, "layers": (0, 3),
        "latency_points": ((1, 8), (2, 16)), "eval_corpora": ("c4", "ptb"), "eval_windows": None,
        "method_params": {"min_swap": 2, "tag": "abc"}, "attn_params": {"p_hat": 1}, "mlp_params": {},
        "evaluate_dense": True, "save_model": True, "allocation_point": (1, 64)}


@pytest.mark.parametrize("argv, flag", [(["--layers", "0,x"], "--layers"), (["--latency", "8"], "--latency"),
                                        (["--dtype", "int8"], "--dtype"), (["--limit", "all"], "--limit")])
def test_a_bad_value_names_its_flag_and_exits_2(argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2 and flag in capsys.readouterr().err


def test_the_help_lists_every_option_under_its_section():
    text = build_parser().format_help()
    for section in SECTIONS:
        assert f"\n{section}:\n" in text
    between = text.split("\ncalibration:\n")[1].split("\nevaluation:\n")[0]
    assert "--damping" in between and "--seqlen" in between and "--tasks" not in between
    assert FIELD_FLAGS["zero_shot_tasks"] == "--tasks" and FIELD_FLAGS["n_samples"] == "--n-samples"
    assert set(FIELD_FLAGS) == {f.name for f in dataclasses.fields(LMRunConfig)}


def test_a_new_field_gets_its_flag_help_choices_and_sweep_key_with_no_other_edit(tiny_llama_dir, check_new_option):
    check_new_option(build_parser, config_from_args, "lm", LMRunConfig, ["--model", str(tiny_llama_dir)])


def test_a_field_type_the_cli_cannot_read_needs_a_parser():
    Odd = dataclasses.make_dataclass("Odd", [("pair", tuple, option((1, 2), section="target", help="h"))], frozen=True)
    with pytest.raises(TypeError, match="'pair'.*parse="):
        add_config_options(argparse.ArgumentParser(), Odd)
    with pytest.raises(ValueError, match="section 'tuning'.*allowed: model, target"):
        option(1, section="tuning", help="h")
