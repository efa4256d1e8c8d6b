"""One damping default: every function and run config that takes λ defaults to osscar.options.DEFAULT_DAMPING,
the paper's λ = 0.01 (H + λ·mean(diag H)·I)."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from osscar.options import DEFAULT_DAMPING


def _targets():
    from osscar.lm.calibrate.calibration import collect_loss_curves, prune_model_sequential
    from osscar.lm.evaluation.diagnose import layer_objectives
    from osscar.lm.run_config import LMRunConfig
    from osscar.problem import LayerProblem
    from osscar.vision.run_config import VisionRunConfig
    from osscar.vision.prune import prune_model

    funcs = [LayerProblem.from_calibration, collect_loss_curves, prune_model_sequential, layer_objectives, prune_model]
    fields = [next(f for f in dataclasses.fields(c) if f.name == "damping") for c in (LMRunConfig, VisionRunConfig)]
    return [(f.__qualname__, inspect.signature(f).parameters["damping"].default) for f in funcs] + \
        [(f"{f.type} field", f.default) for f in fields]


@pytest.mark.parametrize("i", range(7))
def test_every_damping_default_is_the_one_constant(i):
    assert DEFAULT_DAMPING == 0.01  # the OSSCAR authors' λ
    name, default = _targets()[i]
    assert default == DEFAULT_DAMPING, name
