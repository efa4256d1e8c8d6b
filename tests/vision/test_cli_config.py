"""The vision CLI is generated from :class:`~osscar.vision.run_config.VisionRunConfig`'s field metadata: no flags
give the fields' defaults, every field but the derived ``chip_full_maps`` has its flag, and a new field needs no
other edit to get its flag, help, value and sweep key."""

from __future__ import annotations

import dataclasses

from osscar.config_cli import SECTIONS
from osscar.vision.cli import FIELD_FLAGS, _configs, build_parser
from osscar.vision.run_config import VisionRunConfig


def test_every_field_but_the_derived_one_has_its_flag_under_a_section():
    assert set(FIELD_FLAGS) == {f.name for f in dataclasses.fields(VisionRunConfig)} - {"chip_full_maps"}
    assert FIELD_FLAGS["latency"] == "--no-latency" and FIELD_FLAGS["method_params"] == "--method-param"
    text = build_parser().format_help()
    assert all(f"\n{s}:\n" in text for s in SECTIONS)
    calibration = text.split("\ncalibration:\n")[1].split("\nevaluation:\n")[0]
    assert "--n-calib" in calibration and "--damping" in calibration and "--eval-limit" not in calibration


def test_no_flags_give_the_field_defaults(fake_fmnist):
    (got,) = _configs(build_parser().parse_args(["--random-init", "--data-root", str(fake_fmnist)]))
    assert got == VisionRunConfig(checkpoint=None, random_init=True, data_root=str(fake_fmnist))


def test_flags_reach_their_fields_and_runs_multiply(fake_fmnist):
    argv = ["--random-init", "--data-root", str(fake_fmnist), "--method", "osscar,chip", "--flops-fraction", "0.3,0.6",
            "--method-param", "osscar.max_iter=3", "--p-hat", "2", "--no-latency", "--no-save-model", "--eval-limit", "7",
            "--threads", "2"]
    configs = _configs(build_parser().parse_args(argv))
    assert [(c.flops_fraction, c.method) for c in configs] == [(0.3, "osscar"), (0.3, "chip"), (0.6, "osscar"), (0.6, "chip")]
    osscar, chip = configs[0], configs[1]
    assert osscar.method_params == {"max_iter": 3} and osscar.p_hat == 2 and chip.method_params == {} and chip.p_hat is None
    assert chip.chip_full_maps is True and osscar.chip_full_maps is None
    assert not osscar.latency and not osscar.save_model and osscar.eval_limit == 7 and osscar.threads == 2


def test_a_new_field_gets_its_flag_help_value_and_sweep_key_with_no_other_edit(fake_fmnist, check_new_option):
    check_new_option(build_parser, lambda args, cls: _configs(args, cls)[0], "vision", VisionRunConfig,
                     ["--random-init", "--data-root", str(fake_fmnist)])
