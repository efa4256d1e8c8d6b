"""The method registry: every method by name, clear errors, plug-in by decoration."""

from dataclasses import dataclass

import pytest
import torch

from osscar.methods import PruningMethod, available_methods, get_method, make_method, register_method

ALL = ["chip", "fpgm", "lasso", "mp", "mp+", "osscar", "osscar-authors-ls", "osscar-opt", "thinet", "ziplm"]


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


def test_an_unknown_name_with_no_close_match_lists_the_allowed_ones_only():
    allowed = r"chip, fpgm, lasso, mp, mp\+, osscar, osscar-authors-ls, osscar-opt, thinet, ziplm"
    with pytest.raises(ValueError, match=rf"^unknown method 'zzzzzz'; allowed: {allowed}\.$"):
        get_method("zzzzzz")


def test_two_classes_under_one_name_are_an_error_and_a_subclass_inherits_no_registration():
    @register_method("test-dup")
    @dataclass(frozen=True)
    class First(PruningMethod):
        def solve(self, problem):
            return torch.arange(problem.k), problem.W_dense, {}

    @dataclass(frozen=True)
    class Child(First):  # not decorated: it has First's name by inheritance only
        pass

    try:
        assert available_methods()["test-dup"] is First
        Second = register_method("test-dup")(dataclass(frozen=True)(type("Second", (PruningMethod,), {
            "solve": lambda self, problem: (torch.arange(problem.k), problem.W_dense, {})})))
        try:
            with pytest.raises(RuntimeError, match=r"method name 'test-dup' is registered twice: .*First.* and .*Second|"
                                                   r"method name 'test-dup' is registered twice: .*Second.* and .*First"):
                available_methods()
        finally:
            Second.name = ""
    finally:
        First.name = ""  # unregister for the other tests
    assert Child.name == "" and "test-dup" not in available_methods()


def test_plugins_are_imported_from_their_entry_points_module(monkeypatch):
    """An entry point 'module:attr' of the osscar.methods group imports its module."""
    import importlib
    import types

    import osscar.methods as methods_mod

    groups, imported = [], []
    monkeypatch.setattr(methods_mod, "entry_points",
                        lambda group: groups.append(group) or [types.SimpleNamespace(value="json.decoder:JSONDecoder")])
    real = importlib.import_module
    monkeypatch.setattr(importlib, "import_module", lambda name, *a: imported.append(name) or real(name, *a))
    methods_mod.available_methods()
    assert groups == ["osscar.methods"] and "json.decoder" in imported


def test_unknown_parameters_are_all_named_with_the_allowed_ones():
    with pytest.raises(ValueError, match=r"^method 'mp' has no parameter\(s\) a, b; allowed: none$"):
        make_method("mp", b=1, a=2)
    with pytest.raises(ValueError, match=r"^method 'fpgm' has no parameter\(s\) x; allowed: exclude_fraction, vectors$"):
        make_method("fpgm", x=1)
