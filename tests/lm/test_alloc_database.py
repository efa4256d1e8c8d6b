"""The candidate database and the stitched model (issue #26, LM side), on tiny random float64 models
with random biases and norms.

Ground truths: the stitched model against the method run directly on layer problems whose ``H``
comes from forward hooks on the dense HF model (written into an unsliced copy, pruned columns zero);
layer errors against ½‖X(W − Ŵ)‖² from the hooked inputs; the loss against HF's own ``labels=`` loss;
the KL against a per-token transcription of its definition."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from osscar.lm.adapters import get_adapter
from osscar.lm.allocation.database import CandidateDatabase, build_database, make_spec
from osscar.lm.allocation.levels import PARTS
from osscar.lm.allocation.stitch import StitchedFitness, stitch
from osscar.methods import make_method
from osscar.problem import LayerProblem

from .test_alloc_levels import _config, random_model

SEGS = torch.randint(0, 300, (4, 10), generator=torch.Generator().manual_seed(0))
OTHER = torch.randint(0, 300, (3, 10), generator=torch.Generator().manual_seed(1))
MLP_STEPS = 2  # MLP levels 0, 32, 64
DAMPING = 0.01


def _model(family: str = "llama"):
    return random_model(_config(family, 6, 3) if family != "opt" else _config("opt", 4, 4))


def _head(model):
    """The models here prune attention per query head (levels 0, 3, 6 on 6 heads in 3 KV groups)."""
    return get_adapter(model, "head")


def _dense_inputs(model):
    """Every consumer's inputs X (rows, p) from the dense model's own forward on SEGS (hooks)."""
    a = get_adapter(model, "head")
    xs, handles = {}, []
    for i, layer in enumerate(a.layers(model)):
        for part in PARTS:
            def hook(mod, inp, out, key=(i, part)):
                xs.setdefault(key, []).append(inp[0].reshape(-1, inp[0].shape[-1]))
            handles.append(a.consumer(layer, part).register_forward_hook(hook))
    with torch.no_grad():
        model(SEGS, use_cache=False)
    for h in handles:
        h.remove()
    return {k: torch.cat(v) for k, v in xs.items()}


def _reference(model, method, widths):
    """The dense model with each consumer solved by ``method`` at its level on the dense inputs'
    H, pruned columns zero (unsliced); and the relative layer errors ½‖X(W − Ŵ)‖² / ½‖XŴ‖²."""
    a = get_adapter(model, "head")
    X = _dense_inputs(model)
    ref = copy.deepcopy(model)
    errors = {}
    for i, (layer, levels) in enumerate(zip(a.layers(ref), widths)):
        for part, k in zip(PARTS, levels):
            consumer = a.consumer(layer, part)
            W_dense = consumer.weight.data.T.clone()
            if k == 0:
                W = torch.zeros_like(W_dense)
            elif k == a.n_groups(part):
                W = W_dense
            else:
                problem = LayerProblem.from_calibration(X[i, part].T @ X[i, part], W_dense, a.group_size(part), k,
                                                        damping=DAMPING, blocks=a.blocks(part))
                W = method.prune(problem).W
            consumer.weight.data.copy_(W.T)
            Xi = X[i, part].double()
            errors[i, part] = float((Xi @ (W - W_dense)).square().sum() / (Xi @ W_dense).square().sum())
    return ref, errors


@pytest.mark.parametrize("family, method_name", [("llama", "mp"), ("opt", "ziplm"), ("llama", "osscar")])
def test_stitched_model_is_the_method_on_dense_inputs(family, method_name, tmp_path, solver_calls):
    model = _model(family)
    a = get_adapter(model, "head")
    method = make_method(method_name)
    db, report = build_database(model, SEGS, method, tmp_path, mlp_steps=MLP_STEPS, damping=DAMPING, batch_size=2,
                                adapter=_head(model))
    levels = {p: list(db.spec.levels(p)) for p in PARTS}
    n_solves = 3 * (len(levels["attn"]) - 2 + len(levels["mlp"]) - 2)
    one_pass = method_name == "ziplm" and family == "opt"  # ZipLM fills an unconstrained ladder in one pass
    assert report.solver_calls == n_solves and len(solver_calls) == (0 if one_pass else n_solves)
    assert report.parts_solved == 6
    assert report.size_bytes > 0 and report.seconds > 0
    widths = [(0, 32), (levels["attn"][1], 0), (a.n_attn_groups, 32)]
    ref, errors = _reference(model, method, widths)
    stitched = stitch(model, db, widths)
    with torch.no_grad():
        torch.testing.assert_close(stitched(SEGS).logits, ref(SEGS).logits, atol=1e-8, rtol=1e-8)
    assert stitched.config.osscar_pruned["kept_neurons"] == [32, 0, 32]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    light = stitch(model, db, widths, share_weights=True)  # what StitchedFitness scores: dense tensors shared
    with torch.no_grad():
        torch.testing.assert_close(light(SEGS).logits, ref(SEGS).logits, atol=1e-8, rtol=1e-8)
    assert light.get_input_embeddings().weight is model.get_input_embeddings().weight
    assert stitched.get_input_embeddings().weight is not model.get_input_embeddings().weight  # the default: a copy
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "stitching wrote into the dense model"
    for (i, part), rel in errors.items():
        k = widths[i][PARTS.index(part)]
        assert db.errors(i, part)[k] == pytest.approx(rel, rel=1e-6, abs=1e-12)
    for i in range(3):
        for part in PARTS:
            e = db.errors(i, part)
            assert e[0] == pytest.approx(1.0) and e[levels[part][-1]] == 0.0


def test_a_second_search_with_another_budget_makes_no_solver_call(tmp_path, solver_calls):
    from osscar.allocation import allocate
    from osscar.lm.allocation.levels import level_costs

    model = _model()
    method = make_method("ziplm")
    db, _ = build_database(model, SEGS, method, tmp_path, mlp_steps=MLP_STEPS, damping=DAMPING, adapter=_head(model))
    built = len(solver_calls)
    assert built > 0
    costs = level_costs(model.config, MLP_STEPS, "params", "head")
    fitness = StitchedFitness(model, db, SEGS, OTHER, adapter=_head(model))
    dense_params = 3 * (max(costs["attn"].values()) + max(costs["mlp"].values()))
    chosen = []
    for share in (0.7, 0.4):  # two searches, two budgets, one database
        again, report = build_database(model, SEGS, method, tmp_path, mlp_steps=MLP_STEPS, damping=DAMPING, adapter=_head(model))
        assert report.solver_calls == 0 and report.parts_reused == 6 and again.path == db.path
        losses = [again.errors(i, p) for i in range(3) for p in PARTS]
        lats = [costs[p] for _ in range(3) for p in PARTS]
        levels = allocate(losses, lats, share * dense_params)
        widths = [(levels[2 * i], levels[2 * i + 1]) for i in range(3)]
        assert sum(costs[p][k] for w in widths for p, k in zip(PARTS, w)) <= share * dense_params
        chosen.append(widths)
        assert fitness.kl(widths) >= 0 and fitness.loss(widths) > 0
    assert chosen[0] != chosen[1]
    assert len(solver_calls) == built


def test_a_database_of_other_data_params_damping_or_weights_is_never_reused(tmp_path, solver_calls):
    model = _model()
    db, _ = build_database(model, SEGS, make_method("osscar"), tmp_path, mlp_steps=MLP_STEPS, adapter=_head(model))
    n = len(solver_calls)
    variants = [(model, OTHER, make_method("osscar"), DAMPING),  # other calibration data
                (model, SEGS, make_method("osscar", max_iter=3), DAMPING),  # other method parameters
                (model, SEGS, make_method("ziplm"), DAMPING),  # other method
                (model, SEGS, make_method("osscar"), 0.1)]  # other damping
    other_weights = copy.deepcopy(model)
    with torch.no_grad():
        a = get_adapter(other_weights, "head")
        a.consumer(a.layers(other_weights)[2], "mlp").weight[0, 0] += 1.0
    variants.append((other_weights, SEGS, make_method("osscar"), DAMPING))
    paths = {db.path}
    for m, segs, method, damping in variants:
        before = len(solver_calls)
        other, report = build_database(m, segs, method, tmp_path, mlp_steps=MLP_STEPS, damping=damping, adapter=_head(m))
        assert report.solver_calls == n and report.parts_reused == 0  # every level solved again
        if method.name != "ziplm":  # ZipLM fills its MLP ladder in one pass, not through prune()
            assert len(solver_calls) - before == n
        paths.add(other.path)
    assert len(paths) == 1 + len(variants)


def test_a_folder_for_another_spec_or_unreadable_is_an_error(tmp_path):
    model = _model()
    method = make_method("mp")
    db, _ = build_database(model, SEGS, method, tmp_path, mlp_steps=MLP_STEPS, adapter=_head(model))
    index = json.loads((db.path / "index.json").read_text())
    index["spec"]["data"] = "0" * 20
    (db.path / "index.json").write_text(json.dumps(index))
    spec = make_spec(model, SEGS, method, MLP_STEPS, adapter=_head(model))
    with pytest.raises(ValueError, match="was built for another model, data, method or levels"):
        CandidateDatabase.open(tmp_path, spec)
    (db.path / "index.json").write_text("{not json")
    with pytest.raises(ValueError, match="index.json is unreadable"):
        CandidateDatabase.open(tmp_path, spec)
    same, other = _model(), random_model(_config("llama", 6, 3), seed=5)
    fresh, _ = build_database(same, SEGS, method, tmp_path / "b", mlp_steps=MLP_STEPS, adapter=_head(same))
    with pytest.raises(ValueError, match="was built from another model"):
        StitchedFitness(other, fresh, SEGS, OTHER, adapter=_head(other))
    with pytest.raises(ValueError, match="was built from another model"):  # the same weights in another unit
        StitchedFitness(same, fresh, SEGS, OTHER, adapter=get_adapter(same, "kv-group"))
    with pytest.raises(ValueError, match="not used to build the database"):
        StitchedFitness(same, fresh, SEGS, SEGS, adapter=_head(same))


class _Killed(Exception):
    pass


def test_a_killed_build_continues_where_it_stopped(tmp_path, solver_calls):
    model = _model()
    method = make_method("osscar")
    stored = []

    def kill_after_three(msg):
        stored.append(msg)
        if len(stored) == 3:
            raise _Killed

    with pytest.raises(_Killed):
        build_database(model, SEGS, method, tmp_path / "a", mlp_steps=MLP_STEPS, progress=kill_after_three, adapter=_head(model))
    first = len(solver_calls)
    db, report = build_database(model, SEGS, method, tmp_path / "a", mlp_steps=MLP_STEPS, adapter=_head(model))
    assert report.parts_reused == 3 and report.parts_solved == 3
    assert report.solver_calls == len(solver_calls) - first and first + report.solver_calls == 3 * (1 + 1)
    fresh, _ = build_database(model, SEGS, method, tmp_path / "b", mlp_steps=MLP_STEPS, adapter=_head(model))
    for i in range(3):
        for part in PARTS:
            assert db.errors(i, part) == fresh.errors(i, part)
            for k in db.spec.levels(part):
                got, want = db.candidate(i, part, k), fresh.candidate(i, part, k)
                assert (got is None) == (want is None)
                if got is not None:
                    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_fitness_loss_is_hf_loss_and_kl_is_its_definition(tmp_path):
    model = _model()
    db, _ = build_database(model, SEGS, make_method("mp"), tmp_path, mlp_steps=MLP_STEPS, adapter=_head(model))
    fitness = StitchedFitness(model, db, SEGS, OTHER, batch_size=2, adapter=_head(model))
    dense_widths = [(6, 64)] * 3
    widths = [(3, 0), (0, 32), (6, 32)]
    with torch.no_grad():
        assert fitness.loss(dense_widths) == pytest.approx(float(model(SEGS, labels=SEGS).loss), rel=1e-6)  # HF casts logits to float32
        stitched = stitch(model, db, widths)
        assert fitness.loss(widths) == pytest.approx(float(stitched(SEGS, labels=SEGS).loss), rel=1e-6)  # HF casts logits to float32
        assert fitness.kl(dense_widths) == pytest.approx(0.0, abs=1e-12)
        p_logits, q_logits = model(OTHER).logits[:, :-1], stitched(OTHER).logits[:, :-1]
    kls = []
    for r in range(OTHER.shape[0]):
        for t in range(OTHER.shape[1] - 1):
            p, q = torch.softmax(p_logits[r, t], -1), torch.softmax(q_logits[r, t], -1)
            kls.append(float(sum(p[v] * torch.log(p[v] / q[v]) for v in range(p.numel()))))
    assert fitness.kl(widths) == pytest.approx(sum(kls) / len(kls), rel=1e-8)
    assert fitness.kl(widths, n_tokens=9) == pytest.approx(sum(kls[:9]) / 9, rel=1e-8)  # one row of 9 tokens
    assert fitness.evaluations == 5
    with pytest.raises(ValueError, match="level 5 is not in the database's ladder"):
        stitch(model, db, [(5, 64)] * 3)
