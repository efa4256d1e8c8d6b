"""The method registry: every method by name, clear errors, plug-in by decoration."""

from dataclasses import dataclass

import pytest
import torch

from osscar.methods import PruningMethod, available_methods, get_method, make_method, register_method

ALL = ["chip", "fpgm", "lasso", "mp", "mp+", "osscar", "thinet", "ziplm"]


def test_all_methods_are_registered():
    assert sorted(available_methods()) == ALL


def test_unknown_method_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"unknown method 'osscr'.*allowed: chip, fpgm.*Did you mean 'osscar'"):
        get_method("osscr")


def test_unknown_parameter_is_rejected():
    with pytest.raises(ValueError, match=r"method 'osscar' has no parameter\(s\) q_hat; allowed: .*p_hat"):
        make_method("osscar", q_hat=3)


@pytest.mark.parametrize("params, match", [
    (dict(p_hat=0), "p_hat must be ≥ 1"),
    (dict(p_hat=-2), "p_hat must be an integer ≥ 0"),
    (dict(t_hat=1.5), "t_hat must be an integer"),
])
def test_bad_osscar_parameters(params, match):
    with pytest.raises(ValueError, match=match):
        make_method("osscar", **params)


def test_a_decorated_class_is_found_by_name(make_problem):
    @register_method("test-keep-first")
    @dataclass(frozen=True)
    class KeepFirst(PruningMethod):
        def solve(self, problem):
            return torch.arange(problem.k), problem.W_dense, {}

    assert get_method("test-keep-first") is KeepFirst
    res = make_method("test-keep-first").prune(make_problem(0, 6, 1, 2))
    assert res.kept.tolist() == [0, 1] and res.method == "test-keep-first"
    KeepFirst.name = ""  # unregister for the other tests


def test_chip_requires_activations(make_problem):
    with pytest.raises(ValueError, match="needs problem.activations"):
        make_method("chip").prune(make_problem(0, 6, 1, 2))
