"""What a method states about itself: its working set for the LM memory plan (osscar.lm.plan asks the
method, never its name) and its per-layer CNN defaults (osscar.vision.prune.vision_method_params)."""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass

import pytest

from osscar.lm.plan import F64, memory_plan, model_shape, solve_parts
from osscar.methods import PruningMethod, register_method
from osscar.vision.prune import vision_method_params
from lm.conftest import tiny_llama_config  # tests/ is on sys.path (rootdir conftest), tests/lm a package

P, M, A = 96, 40, 48  # a (p, m) problem keeping a rows


def _old_plan_floats(method: str, p: int, m: int, a: int) -> int:
    """The memory plan's working set as the committed records were planned (plan.py before the methods stated it),
    transcribed: the committed plans must not move."""
    j, u = p - a, p * max(64, p // 8)
    refit = 2 * a * a + p * m + 2 * a * m
    stage_a = p * p + u + p * m + a * a + 6 * 64 * p
    return {"osscar": max(stage_a, 3 * a * a + j * j + 2 * a * m + 2 * j * m, refit), "ziplm": max(stage_a, refit),
            "lasso": p * p + 5 * p * m + refit}.get(method, refit)


@pytest.mark.parametrize("method", ["osscar", "ziplm", "lasso", "mp", "mp+", "thinet", "chip", "fpgm"])
@pytest.mark.parametrize("p,m,a", [(P, M, A), (640, 64, 100), (8, 3, 7), (100, 5000, 50)])
def test_each_builtin_states_the_working_set_the_records_were_planned_with(method, p, m, a):
    ws = dict((name, n) for name, _, n in solve_parts(method, p, m, a))[f"{method} working set"]
    assert ws == max(F64 * _old_plan_floats(method, p, m, a), F64 * 2 * p * p)


@pytest.fixture
def plugin():
    """Register a method class for one test; it is unregistered (collected) afterwards."""
    made: list[type] = []

    def make(name: str, body: dict) -> type:
        cls = register_method(name)(dataclass(frozen=True)(type(name.title(), (PruningMethod,), body)))
        made.append(cls)
        return cls

    yield make
    made.clear()
    gc.collect()


def _plan(method: str):
    shape = model_shape(tiny_llama_config(hidden_size=48, intermediate_size=384))
    return memory_plan(shape, model="t", n_samples=4, seqlen=32, dtype="float32", method=method, device_type="cpu")


def test_a_plugin_that_states_no_working_set_is_refused_not_guessed(plugin):
    plugin("test-silent", {})
    with pytest.raises(ValueError, match=r"test-silent.*working_set"):
        _plan("test-silent")


def test_a_plugin_working_set_is_what_the_plan_counts(plugin):
    big = 10 ** 7  # floats: larger than the 2·p² floor of the problem's construction
    plugin("test-big", {"working_set": classmethod(lambda cls, p, m, a: (big + p, "mine"))})
    items = {i.name: i.bytes for i in _plan("test-big").items if i.where == "device"}
    # the MLP consumer (p = 384) is the larger solve of this shape
    assert items["solve MLP: test-big working set"] == F64 * (big + 384)


@pytest.mark.parametrize("channels", [1, 16, 25, 64, 75, 512, 2048])
def test_osscar_states_the_vision_codes_per_layer_defaults(channels):
    swap = max(1, math.ceil(0.05 * channels))  # the authors' vision code: 5% of the channels per swap, t̂ = 2·swap
    assert vision_method_params("osscar", channels, {}) == {
        "p_hat": max(1, round(0.02 * channels)), "t_hat": 2 * swap, "min_swap": 1}
    assert vision_method_params("osscar", channels, {"t_hat": 0, "p_hat": None}) == {
        "p_hat": None, "t_hat": 0, "min_swap": 1}


def test_methods_without_per_layer_defaults_get_only_their_explicit_parameters(plugin):
    assert vision_method_params("mp+", 64, {}) == {}
    assert vision_method_params("lasso", 64, {"lambda_scale": 0.1}) == {"lambda_scale": 0.1}
    plugin("test-scaled", {"__annotations__": {"width": int}, "width": 0,
                           "channel_defaults": classmethod(lambda cls, c: {"width": c // 2})})
    assert vision_method_params("test-scaled", 64, {}) == {"width": 32}
    assert vision_method_params("test-scaled", 64, {"width": 3}) == {"width": 3}
