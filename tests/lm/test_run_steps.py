"""The LM run as named steps: widths and their console notes, the summary, and what a run tells its
caller while it runs (dense results at once, the model saved before it is evaluated)."""

from __future__ import annotations

import os

import pytest

from osscar.lm.cli import format_summary, width_notes
from osscar.lm.run_state import RunEvents, Widths, uniform_widths

from .conftest import tiny_llama_config


def _widths(**kw) -> Widths:
    base = dict(n_attn=12, n_mlp=64, keep_attn=6, keep_mlp=32, head_fraction=0.5, neuron_fraction=0.5,
                attention_unit="head", attn_blocks=1, kv_groups=12, heads_per_group=1, allocation="uniform")
    return Widths(**{**base, **kw})


def test_uniform_widths_of_a_smollm2_shaped_model():
    """SmolLM2-135M: 9 query heads in 3 KV groups, FFN 1536. 30% of the 3 heads of a group is 0.9 heads:
    the nearest count removes 1 per group (6 of 9 kept); 30% of 1536 neurons is 460.8: 461 removed."""
    from osscar.lm.adapters import get_adapter

    cfg = tiny_llama_config(hidden_size=576, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                            intermediate_size=1536)
    w = uniform_widths(get_adapter(cfg, "head"), 0.3, 0.3, "uniform")
    assert (w.n_attn, w.keep_attn, w.attn_blocks, w.kv_groups) == (9, 6, 3, 3)
    assert (w.n_mlp, w.keep_mlp) == (1536, 1536 - 461)
    assert w.head_fraction_applied == pytest.approx(1 / 3) and w.neuron_fraction_applied == pytest.approx(461 / 1536)


@pytest.mark.parametrize("w, expected", [
    # 0.3 of 4 heads: 1.2 -> 1 removed, applied 0.25 (a gap of 0.0499..., silent under a 0.05 threshold)
    (_widths(n_attn=4, keep_attn=3, head_fraction=0.3, keep_mlp=32), ["--head-fraction 0.3 is applied as 0.250"]),
    # 9 heads in 3 KV groups at 0.3: 3 of 9 removed, 0.333; 0.3 of 1536 neurons: 461 removed, 0.300130...
    (_widths(n_attn=9, keep_attn=6, attn_blocks=3, kv_groups=3, head_fraction=0.3, n_mlp=1536, keep_mlp=1075,
             neuron_fraction=0.3),
     ["--head-fraction 0.3 is applied as 0.333 on this model (3 of 9 heads in 3 KV groups per block removed)",
      "--neuron-fraction 0.3 is applied as 0.3001 on this model (461 of 1536 neurons per block removed)"]),
    (_widths(n_attn=3, keep_attn=3, kv_groups=3, heads_per_group=2, head_fraction=0.1),
     ["--head-fraction 0.1 removes nothing from attention on this model (3 KV groups per block"]),
    (_widths(n_mlp=1536, keep_mlp=768), []),  # exact: 6 of 12 heads, 768 of 1536 neurons
    (_widths(head_fraction=0.0, keep_attn=12, neuron_fraction=0.0, keep_mlp=64), []),
    (_widths(n_attn=4, keep_attn=3, head_fraction=0.3, allocation="runtime"), []),  # per-block widths: no notes
])
def test_a_note_for_every_fraction_applied_otherwise(w, expected):
    notes = width_notes(w)
    assert len(notes) == len(expected), notes
    for note, text in zip(notes, expected):
        assert note.startswith("note: ") and text in note, note


def _result(dense: dict | None) -> dict:
    flops_dense = {"block_flops": 800.0, "total_flops": 1000.0}
    flops_pruned = {"block_flops": 400.0, "total_flops": 600.0}
    return {"pruned": {"wiki-gensim": {"ppl": 40.0}}, **({"dense": dense} if dense is not None else {}),
            "applied": {"head_fraction_applied": 0.5, "head_fraction_requested": 0.5, "neuron_fraction_applied": 0.5,
                        "neuron_fraction_requested": 0.5},
            "size": {"params_dense": 1000, "params_pruned": 820, "flops_dense": flops_dense, "flops_pruned": flops_pruned,
                     "block_flops_ratio": 2.0, "total_flops_ratio": 1000 / 600},
            "timings": {"prune_total_s": 1.0}}


def test_summary_says_not_measured_and_the_share_left_in_the_whole_model():
    text = format_summary(_result(None), "m.json")
    row = next(line for line in text.splitlines() if line.startswith("ppl wiki-gensim"))
    assert "not measured" in row and "nan" not in text and row.split()[-1] == "40.000"
    # 820 of 1000 parameters and 600 of 1000 FLOPs left in the whole model; the blocks keep 400 of 800
    assert "82.0% of the parameters, 60.0% of the FLOPs per token" in text and "blocks alone: 50.0%" in text
    row = next(line for line in format_summary(_result({"wiki-gensim": {"ppl": 30.0}}), "m.json").splitlines()
               if line.startswith("ppl wiki-gensim"))
    assert row.split()[-2:] == ["30.000", "40.000"]


def test_run_tells_its_caller_each_step_and_saves_before_evaluating(tiny_llama_dir, tmp_path):
    """Dense results reach the caller before pruning starts; the pruned model is on disk before it is
    evaluated; the widths come before any solving."""
    from osscar.lm.run import run_lm
    from osscar.lm.run_config import LMRunConfig
    from osscar.memory import run_monitor

    seen: list[tuple[str, object]] = []
    save_to = tmp_path / "m"

    def step(text: str) -> None:
        seen.append(("step", text))
        if text == "evaluating the pruned model":
            seen.append(("saved", (save_to / "config.json").is_file()))

    events = RunEvents(step=step, widths=lambda w: seen.append(("widths", w)),
                       dense=lambda d: seen.append(("dense", d["wiki-gensim"]["ppl"])))
    cfg = LMRunConfig(model=str(tiny_llama_dir), method="mp", head_fraction=0.34, neuron_fraction=0.5, n_samples=2,
                      seqlen=16, eval_windows=1, evaluate_dense=True)
    with run_monitor() as mem:  # a caller's monitor (a sweep worker): the run's phases join it
        out = run_lm(cfg, save_to=str(save_to), events=events)
    kinds = [k if k != "step" else v.split(" ")[0] for k, v in seen]
    assert kinds.index("widths") < kinds.index("pruning") and kinds.index("dense") < kinds.index("pruning")
    assert kinds.index("pruning") < kinds.index("saving") < kinds.index("saved")
    assert ("saved", True) in seen and os.path.isdir(save_to)
    assert dict(seen)["dense"] == out["dense"]["wiki-gensim"]["ppl"]
    w = dict(seen)["widths"]
    assert (w.keep_attn, w.keep_mlp) == (out["applied"]["attn_groups_kept"], out["applied"]["neurons_kept"])
    assert list(mem.phases) == ["load_and_dense_eval", "prune", "slice_and_evaluate"]
    assert out["memory"]["phases"] == mem.phases and "versions" not in out["provenance"]
