"""``allocation_apply``: a global search's widths re-solved sequentially, or taken with their weights from the
candidate database. Tiny random Llama (GQA) and OPT models; the database run is compared with the database's own
tensors and with :func:`~osscar.lm.allocation.stitch.stitch` (which slices first and copies the stored weights,
a different path from writing the unsliced consumers and slicing afterwards)."""

from __future__ import annotations

import pytest
import torch

from osscar.groups import block_rows
from osscar.lm.adapters import get_adapter
from osscar.lm.allocation.apply import apply_from_database, open_database
from osscar.lm.allocation.database import build_database
from osscar.lm.allocation.levels import PARTS
from osscar.lm.allocation.stitch import stitch
from osscar.lm.run import run_lm
from osscar.lm.run_config import LMRunConfig
from osscar.lm.slicing import load_pruned, slice_model
from osscar.lm.sources.models import load_model
from osscar.methods import make_method

from .test_alloc_database import DAMPING, MLP_STEPS, SEGS, _model, _reference


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_database_apply_is_the_stitched_candidate_and_calls_no_solver(family, request, tmp_path, solver_calls):
    model_dir = request.getfixturevalue(f"tiny_{family}_dir")
    cfg = dict(model=str(model_dir), method="mp+", allocation="spdy", speedup=1.6, allocation_mlp_levels=4,
               n_samples=3, seqlen=16, eval_windows=1, heldout_samples=2, latency_repeats=1,
               cache_dir=str(tmp_path / "cache"), allocation_params={"max_evaluations": 4})
    sequential = run_lm(LMRunConfig(**cfg))  # builds the database
    assert solver_calls, "the counter sees the solver (database build and sequential pruning)"
    solver_calls.clear()
    out = run_lm(LMRunConfig(allocation_apply="database", **cfg), save_to=str(tmp_path / "m"))
    assert solver_calls == [], "database apply: no solver call (the database is reused, the weights are its own)"
    al = out["allocation"]
    assert al["apply"] == "database" and sequential["allocation"]["apply"] == "sequential"
    assert al["kept_attn_groups"] == sequential["allocation"]["kept_attn_groups"]  # same search, same widths
    db = open_database(al)
    widths = list(zip(al["kept_attn_groups"], al["kept_neurons"]))
    dense = load_model(str(model_dir)).model.eval()
    reloaded = load_pruned(tmp_path / "m").eval()
    ids = torch.randint(0, dense.config.vocab_size, (2, 12))
    with torch.no_grad():
        expect = stitch(dense, db, widths)(ids).logits
        got = reloaded(ids).logits
    assert torch.allclose(got, expect, atol=1e-5, rtol=1e-4)
    for i, levels in enumerate(widths):
        for part, level in zip(PARTS, levels):
            record = out["layers"][2 * i + PARTS.index(part)]
            assert (record["k"], record["objective"]) == (level, None)
            assert record["calib_rel_error"] == pytest.approx(db.errors(i, part)[level])


@pytest.mark.parametrize("family, method_name", [("llama", "mp"), ("opt", "ziplm"), ("llama", "osscar")])
def test_apply_from_database_is_the_method_on_dense_inputs(family, method_name, tmp_path):
    """The unsliced model after :func:`apply_from_database` equals an independent reference (each consumer
    solved by the method on the dense inputs' H from forward hooks, pruned columns zero), and slices to the
    stored weights; the records carry the kept groups and the database's errors."""
    model = _model(family)
    a = get_adapter(model, "head")
    method = make_method(method_name)
    db, _ = build_database(model, SEGS, method, tmp_path, mlp_steps=MLP_STEPS, damping=DAMPING, batch_size=2, adapter=a)
    levels = {p: list(db.spec.levels(p)) for p in PARTS}
    widths = [(levels["attn"][1], 32), (0, 64), (a.n_attn_groups, 0)]
    ref, errors = _reference(model, method, widths)
    outcome = apply_from_database(model, db, widths, a)
    with torch.no_grad():
        torch.testing.assert_close(model(SEGS).logits, ref(SEGS).logits, atol=1e-6, rtol=1e-6)
    assert outcome.seconds_solver == 0.0 and [r.k for r in outcome.records] == [k for w in widths for k in w]
    for r, (i, part) in zip(outcome.records, [(i, p) for i in range(3) for p in PARTS]):
        assert r.calib_rel_error == pytest.approx(errors[i, part], rel=1e-6, abs=1e-12)
        assert torch.equal(outcome.kept[i][part], torch.as_tensor(r.kept, dtype=torch.long))
    slice_model(model, outcome.kept, a)
    layer = a.layers(model)[0]
    kept, W = db.candidate(0, "attn", levels["attn"][1])
    order = torch.argsort(block_rows(kept, a.group_size("attn")))  # slicing keeps columns in index order
    assert torch.equal(a.consumer(layer, "attn").weight.data, W[:, order])
    with torch.no_grad():
        torch.testing.assert_close(model(SEGS).logits, ref(SEGS).logits, atol=1e-5, rtol=1e-5)


def test_apply_from_database_refuses_another_model_or_block_count(tmp_path):
    model = _model()
    a = get_adapter(model, "head")
    db, _ = build_database(model, SEGS, make_method("mp"), tmp_path, mlp_steps=MLP_STEPS, damping=DAMPING, adapter=a)
    with pytest.raises(ValueError, match="built from another model"):
        apply_from_database(_model("opt"), db, [(1, 32)] * 3)
    with pytest.raises(ValueError, match="built from another model"):  # the same model in the other unit
        apply_from_database(model, db, [(1, 32)] * 3, get_adapter(model, "kv-group"))
    with pytest.raises(ValueError, match="2 widths for 3 blocks"):
        apply_from_database(model, db, [(1, 32)] * 2, a)


@pytest.fixture
def linear_costs(monkeypatch):
    """Per-level block costs proportional to the width (instead of timings, which can make every level 0 or full):
    the search then picks intermediate widths whatever the machine's load."""
    from osscar.lm.allocation import run_step

    real = run_step._table_costs

    def table_costs(model, config):
        adapter, levels, _, point = real(model, config)
        costs = {part: {k: 1e-3 * (1 + k) / (1 + max(levels[part])) for k in levels[part]} for part in levels}
        return adapter, levels, costs, point

    monkeypatch.setattr(run_step, "_table_costs", table_costs)


def test_sequential_apply_resolves_the_weights(tiny_llama_dir, tmp_path, linear_costs):
    """The default re-solves on the pruned model's inputs: the same widths, other weights than the database's."""
    cfg = dict(model=str(tiny_llama_dir), method="mp+", allocation="spdy", speedup=1.6, allocation_mlp_levels=4,
               n_samples=3, seqlen=16, eval_windows=1, heldout_samples=2, latency_repeats=1,
               cache_dir=str(tmp_path / "cache"), allocation_params={"max_evaluations": 4})
    seq = run_lm(LMRunConfig(**cfg))
    db_run = run_lm(LMRunConfig(allocation_apply="database", **cfg))
    seq_err = [r["calib_rel_error"] for r in seq["layers"]]
    db_err = [r["calib_rel_error"] for r in db_run["layers"]]
    assert [r["k"] for r in seq["layers"]] == [r["k"] for r in db_run["layers"]]
    assert any(0 < r["k"] < r["n_groups"] for r in seq["layers"][2:]), "no intermediate width after block 0"
    assert seq_err != db_err  # block 0 sees the same inputs; later blocks see pruned inputs in the sequential run
    assert seq["pruned"] != db_run["pruned"]


@pytest.mark.parametrize("kw, match", [
    (dict(allocation="runtime", speedup=2.0, allocation_apply="database"),
     "allocation_apply='database' takes the weights from a global search's candidate database: use allocation "
     "'spdy' or 'evolutionary' \\(got 'runtime'\\)"),
    (dict(allocation="uniform", allocation_apply="database"), "got 'uniform'"),
    (dict(allocation="spdy", speedup=2.0, allocation_apply="dense"), "allocation_apply.*sequential, database"),
])
def test_bad_apply_mode(kw, match):
    with pytest.raises(ValueError, match=match):
        LMRunConfig(**kw)
