"""OSSCAR's named variants against references written from their definitions.

The authors' local search (``OSSCAR_local_search`` in their ``prune_algo.py``; ``shared/spec/ALGORITHM.md``
§4) is transcribed below with a fresh least-squares solve for every quantity — costs and gains are
literal objective differences, Q(S∖g) − Q(S) and Q(S') − Q(S' ∪ j) — and no code shared with
``osscar.obs`` / ``osscar.pruned_set``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import brute_force, random_problem
from osscar.methods import make_method
from osscar.obs import SupportState
from osscar.solver import local_search
from osscar.variants import OSSCAR_VARIANTS, authors_local_search, osscar_parameters


def _q(P, support) -> float:
    """min_W Q on ``support`` (groups): −½ tr(G_Sᵀ H_SS⁻¹ G_S), by a fresh solve."""
    if not support:
        return 0.0
    rows = P.rows_of(torch.tensor(sorted(support), dtype=torch.long))
    Hs, Gs = P.H[rows][:, rows], P.G[rows]
    return float(-0.5 * (Gs * torch.linalg.solve(Hs, Gs)).sum())


def _authors_reference(P, support, swap, max_iter, rtol=1e-9):
    """The authors' rule: take out the ``swap`` kept groups whose removal alone costs least; put back the
    ``swap`` groups (any pruned one, those just taken out included) whose addition alone gains most —
    under a partition, per block as many as were taken out of it; keep the new support when
    Q_new < Q·(1 + rtol), else stop. Returns (final support, Q history, groups exchanged per accepted trial, trials)."""
    S = set(support)
    q = _q(P, S)
    history, exchanged, tried = [q], [], 0
    block_of = [g // P.block_size for g in range(P.n_groups)]
    while tried < max_iter:
        tried += 1
        out = sorted(S, key=lambda g: _q(P, S - {g}) - q)[:swap]
        rest = S - set(out)
        q_rest = _q(P, rest)
        back = []
        for b in sorted({block_of[g] for g in out}):
            need = sum(block_of[g] == b for g in out)
            pool = [j for j in range(P.n_groups) if j not in rest and block_of[j] == b]
            back += sorted(pool, key=lambda j: q_rest - _q(P, rest | {j}), reverse=True)[:need]
        new = rest | set(back)
        q_new = _q(P, new)
        if not q_new < q * (1 + rtol):
            break
        exchanged.append(len(S - new))
        S, q = new, q_new
        history.append(q)
    return S, history, exchanged, tried


def _state_on(P, support):
    st = SupportState(P, deferred=True, track_pruned=True)
    for g in sorted(set(range(P.n_groups)) - set(support)):
        st.remove(torch.tensor([g]))
    return st


def _kept(state) -> set[int]:
    return set(torch.nonzero(state.kept).flatten().tolist())


def _cases():
    """(problem, start support, swap): small random problems from poor supports, so trials get accepted."""
    for seed in range(8):
        for group_size in (1, 3):
            n, k = 10, 5
            P = random_problem(seed, n, group_size, k, m=3)
            start = torch.randperm(n, generator=torch.Generator().manual_seed(100 + seed))[:k].tolist()
            for swap in (1, 2, 3):
                yield P, start, swap


def test_authors_local_search_reproduces_the_rule_written_from_its_definition():
    up_to_s = 0
    for P, start, swap in _cases():
        S, history, exchanged, tried = _authors_reference(P, start, swap, max_iter=30)
        st, info = authors_local_search(_state_on(P, start), swap, max_iter=30)
        assert _kept(st) == S, (start, swap)
        assert info["groups_exchanged"] == exchanged and info["swaps_tried"] == tried
        assert info["swaps_accepted"] == len(history) - 1
        torch.testing.assert_close(torch.tensor(info["local_search_objective"]), torch.tensor(history), rtol=1e-9, atol=0)
        up_to_s += any(e < swap for e in exchanged)
    assert up_to_s >= 3, "no accepted trial exchanged fewer than s groups: the cases do not probe the rule"


def test_authors_local_search_respects_a_partition_as_the_rule_written_per_block():
    for seed in range(6):
        P = dataclasses.replace(random_problem(seed, 8, 1, 4, m=3), blocks=2)
        start = [0, 1, 4, 5]
        for swap in (1, 2):
            S, history, exchanged, tried = _authors_reference(P, start, swap, max_iter=30)
            st, info = authors_local_search(_state_on(P, start), swap, max_iter=30)
            assert _kept(st) == S and info["swaps_tried"] == tried and info["groups_exchanged"] == exchanged


def _differing_case():
    """A problem and start where an accepted authors' trial puts back a group it just took out."""
    for P, start, swap in _cases():
        if swap < 2:
            continue
        S, _, exchanged, _ = _authors_reference(P, start, swap, max_iter=30)
        if any(e < swap for e in exchanged):
            return P, start, swap, S, exchanged
    raise AssertionError("no case where the authors' rule exchanges fewer than s groups")


def test_up_to_s_exchange_differs_from_the_exact_s_swap():
    """The exact-s swap (this harness's ``osscar``, here with the OPT stop rule) never puts back what it
    took out, so each accepted trial changes 2s groups; the authors' rule exchanges fewer here and
    ends at another support."""
    P, start, swap, S_authors, exchanged = _differing_case()
    st, info = authors_local_search(_state_on(P, start), swap, max_iter=30)
    assert _kept(st) == S_authors and info["groups_exchanged"] == exchanged
    exact, _ = local_search(_state_on(P, start), swap, max_iter=30, min_swap=swap, patience=1)
    assert _kept(exact) != S_authors


def test_authors_local_search_stops_at_the_first_failed_trial():
    """From the exact optimum the first trial fails: one trial, nothing accepted (the harness's
    default search would retry and halve); max_iter bounds the trials."""
    for seed in range(4):
        P = random_problem(seed, 8, 2, 4, m=3)
        _, best = brute_force(P)
        st, info = authors_local_search(_state_on(P, best), 2, max_iter=30)
        assert info["swaps_tried"] == 1 and info["swaps_accepted"] == 0 and _kept(st) == set(best)
        _, ours = local_search(_state_on(P, best), 2, max_iter=30, min_swap=1, patience=2)
        assert ours["swaps_tried"] > 1
    for P, start, swap in _cases():
        _, history, _, _ = _authors_reference(P, start, swap, max_iter=30)
        if len(history) > 2:
            _, info = authors_local_search(_state_on(P, start), swap, max_iter=1)
            assert info["swaps_tried"] == 1 and info["swaps_accepted"] == 1
            return
    raise AssertionError("no case with two accepted trials")


def test_authors_local_search_needs_the_pruned_set_inverse():
    with pytest.raises(ValueError, match=r"^authors_local_search needs SupportState\(problem, track_pruned=True\)$"):
        authors_local_search(SupportState(random_problem(0, 6, 1, 3)), swap=1, max_iter=1)


def _stage_a_greedy(P) -> set[int]:
    """Stage A with p̂ = 1 written from its definition: drop the group whose removal raises Q least."""
    S = set(range(P.n_groups))
    while len(S) > P.k:
        q = _q(P, S)
        S.remove(min(S, key=lambda g: _q(P, S - {g}) - q))
    return S


@pytest.mark.parametrize("group_size", [1, 3])
def test_osscar_authors_ls_is_stage_a_then_the_authors_search(group_size):
    for seed in range(6):
        P = random_problem(seed, 10, group_size, 4, m=3)
        r = make_method("osscar-authors-ls", p_hat=1, t_hat=4).prune(P)
        S, history, _, _ = _authors_reference(P, _stage_a_greedy(P), 2, max_iter=30)
        assert set(r.kept.tolist()) == S
        assert r.objective == pytest.approx(history[-1], rel=1e-9)


def test_osscar_opt_runs_no_local_search():
    """``osscar-opt`` is Stage A alone: with p̂ = 1 the greedy written from its definition, even where a
    local search would improve on it."""
    improved = 0
    for seed in range(8):
        P = random_problem(seed, 10, 1, 4, m=3)
        r = make_method("osscar-opt", p_hat=1).prune(P)
        assert set(r.kept.tolist()) == _stage_a_greedy(P)
        assert "swaps_tried" not in r.info
        improved += make_method("osscar", p_hat=1).prune(P).objective < r.objective - 1e-9 * abs(r.objective)
    assert improved >= 1, "no case where local search helps: the test cannot tell osscar-opt from osscar"


def test_variants_are_registered_with_their_parameters():
    assert osscar_parameters("osscar-opt") == {"p_hat"}
    assert osscar_parameters("osscar-authors-ls") == {"p_hat", "t_hat", "max_iter"}
    assert {"p_hat", "t_hat", "min_swap", "patience"} <= osscar_parameters("osscar")
    assert osscar_parameters("ziplm") == frozenset()
    assert OSSCAR_VARIANTS == ("osscar", "osscar-opt", "osscar-authors-ls")
    with pytest.raises(ValueError, match=r"method 'osscar-opt' has no parameter\(s\) t_hat; allowed: p_hat"):
        make_method("osscar-opt", t_hat=2)
    with pytest.raises(ValueError, match=r"^p_hat must be ≥ 1"):
        make_method("osscar-opt", p_hat=0)
    with pytest.raises(ValueError, match=r"^max_iter must be an integer ≥ 0, got -1$"):
        make_method("osscar-authors-ls", max_iter=-1)


def test_variants_run_from_a_sweep_under_keys_that_name_them(tmp_path, capsys):
    """A sweep selects a variant by name (``--only method=...``); its record's key and config carry the
    name; ``osscar``'s key is still made of the fields it had before the variants existed."""
    from benchmarks.run import main as run_main
    from benchmarks.store import ResultStore, config_key

    sweep = tmp_path / "toy.toml"
    sweep.write_text('name = "toy"\npipeline = "solver"\n[profiles.cpu.base]\nshape = "heads-12x64"\n'
                     '[profiles.cpu.grid]\nmethod = ["osscar", "osscar-opt", "osscar-authors-ls"]\n')
    store = tmp_path / "store"
    assert run_main([str(sweep), "--store", str(store), "--list"]) == 0
    keys = {line.split()[0].split("/")[1]: line.split("method=")[1] for line in capsys.readouterr().out.splitlines()}
    old = {"shape": "heads-12x64", "keep": 0.5, "method": "osscar", "method_params": {}, "seed": 0, "threads": 1}
    assert keys[config_key("solver", old)] == "osscar" and sorted(keys.values()) == sorted(OSSCAR_VARIANTS)
    assert run_main([str(sweep), "--store", str(store), "--only", "method=osscar-authors-ls"]) == 0
    (record,) = ResultStore(store).records("toy")
    assert record.config["method"] == "osscar-authors-ls" and keys[record.key] == "osscar-authors-ls"
