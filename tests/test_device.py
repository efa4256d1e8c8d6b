"""The solvers run where the problem lives: every tensor they make follows ``problem.device``.

CI has no GPU, so the check runs the CPU problem with PyTorch's default device set to ``meta``:
any tensor a method creates without naming the problem's device (``torch.zeros(n)``,
``torch.arange(s)``, ``torch.as_tensor(x)``) lands on ``meta`` there and the method fails or
changes its answer — exactly what would happen on a CUDA problem, where such a tensor would land
on the CPU. The ``gpu``-marked test compares a CUDA run with the CPU run when a device exists.
"""

from __future__ import annotations

import pytest
import torch

from osscar.allocation import removal_path
from osscar.methods import available_methods, make_method
from osscar.obs import SupportState
from osscar.problem import LayerProblem
from osscar.solver import local_search

# (seed, group_size): instances on which OSSCAR's local search accepts a swap (adds groups back)
INSTANCES = [(3, 1), (2, 3)]


def _problem(make_problem, seed: int, group_size: int, device: str = "cpu") -> LayerProblem:
    P = make_problem(seed, 14, group_size, 6)
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(4, P.n_groups, 9, generator=g, dtype=torch.float64)
    return LayerProblem(H=P.H.to(device), G=P.G.to(device), W_dense=P.W_dense.to(device), group_size=group_size,
                        k=P.k, damping=P.damping, G_is_HW=P.G_is_HW, activations=acts.to(device),
                        producer_weight=P.W_dense.reshape(P.n_groups, -1).to(device))


@pytest.mark.parametrize("name", sorted(available_methods()))
@pytest.mark.parametrize("seed,group_size", INSTANCES)
def test_methods_make_no_tensor_off_the_problem_device(make_problem, name, seed, group_size):
    P = _problem(make_problem, seed, group_size)
    method = make_method(name, p_hat=1) if name == "osscar" else make_method(name)
    ref = method.prune(P)
    with torch.device("meta"):
        got = method.prune(P)
    assert got.W.device == P.device and got.kept.device.type == "cpu"
    assert torch.equal(got.kept, ref.kept)
    torch.testing.assert_close(got.W, ref.W, rtol=1e-12, atol=0)
    if name == "osscar":
        assert ref.info["swaps_accepted"] >= 1  # the add-back path ran too


def test_support_state_and_allocation_follow_the_problem_device(make_problem):
    P = _problem(make_problem, 3, 1)
    ref_path = removal_path(P, p_hat=2)
    with torch.device("meta"):
        path = removal_path(P, p_hat=2)
        state = SupportState(P, deferred=True, track_pruned=True)
        state.remove(torch.topk(state.costs(), 8, largest=False).indices)
        state, info = local_search(state, swap=2, max_iter=10, min_swap=1)
        gains = state.gains()
        H = P.H.clone()
        built = LayerProblem.from_calibration(H, P.W_dense, 1, 6, cross=H.clone())
    assert path == pytest.approx(ref_path, rel=1e-12)
    assert gains.device == P.device and built.H.device == P.device


def test_problem_tensors_on_different_devices_are_rejected(make_problem):
    P = make_problem(0, 6, 1, 3)
    with pytest.raises(ValueError, match="one device"):
        LayerProblem(H=P.H, G=P.G.to("meta"), W_dense=P.W_dense, group_size=1, k=3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(available_methods()))
@pytest.mark.parametrize("seed,group_size", INSTANCES)
def test_cuda_matches_cpu(make_problem, name, seed, group_size):
    method = make_method(name)
    ref = method.prune(_problem(make_problem, seed, group_size))
    got = method.prune(_problem(make_problem, seed, group_size, device="cuda"))
    assert torch.equal(got.kept, ref.kept)
    torch.testing.assert_close(got.W.cpu(), ref.W, rtol=1e-8, atol=1e-10)
    assert got.objective == pytest.approx(ref.objective, rel=1e-9)
