"""Held-out layer error: windows disjoint from calibration and evaluation windows; the held-out H is
the pruned model's XᵀX on them; records carry calibration and held-out relative errors."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch

from osscar.lm.text import data as lm_data
from osscar.lm.adapters import get_adapter
from osscar.lm.calibrate.calibration import prune_model_sequential
from osscar.lm.text.heldout import heldout_segments, joined_heldout_starts
from osscar.methods import make_method
from osscar.problem import reconstruction_error

from .test_calibration import _direct_xtx

WORDS = ("river boat stone cloud forest lantern meadow harbor candle window garden silver copper "
         "winter summer autumn spring valley mountain island desert ocean thunder whisper").split()


def _docs(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"Document {seed}-{i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(30, 80)))
            for i in range(n)]


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("\n\n".join(_docs(40, 1)))
    return str(path)


def _windows(t: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(int(v) for v in row) for row in t}


def test_joined_heldout_windows_avoid_calibration_and_evaluation_windows(corpus_file, tiny_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    n_cal, seqlen = 8, 32
    cal = lm_data.calibration_segments(corpus_file, tok, n_cal, seqlen, seed=0)
    held, info = heldout_segments(corpus_file, tok, 4, 24, n_cal, seqlen, seed=0, eval_seqlen=seqlen)
    ids = lm_data.joined_tokens(corpus_file, tok, "calibration")
    cal_starts = lm_data.joined_starts(len(ids), n_cal, seqlen, 0)
    assert torch.equal(torch.stack([ids[s:s + seqlen] for s in cal_starts]), cal)  # the run's windows
    assert held.shape == (4, 24) and info["rule"] == "tiles-from-end-outside-calibration"
    cal_pos = {t for s in cal_starts for t in range(s, s + seqlen)}
    held_pos = [set(range(a, a + 24)) for a in info["starts"]]
    for a, pos, row in zip(info["starts"], held_pos, held):
        assert torch.equal(ids[a:a + 24], row)
        assert not pos & cal_pos  # no token position shared with any calibration window
    assert sum(map(len, held_pos)) == len(set().union(*held_pos))  # held-out windows do not overlap
    # evaluation windows come from the evaluation documents: no held-out window occurs in that text
    ev = lm_data.joined_tokens(corpus_file, tok, "evaluation")
    ev_windows = _windows(ev.unfold(0, 24, 1))
    assert not _windows(held) & ev_windows


def test_joined_rule_skips_tiles_touching_a_calibration_window():
    # 100 tokens, tiles of 10 from the end: [90,100) overlaps the window [85, 95); [80,90) too; [70,80) is free
    assert joined_heldout_starts(100, [85], 10, 2, 10) == [70, 60]
    assert joined_heldout_starts(100, [90], 10, 1, 10) == [80]  # [80,90) touches [90,100) only at its end
    with pytest.raises(ValueError, match="heldout_samples"):
        joined_heldout_starts(100, [0, 45], 50, 1, 10)


def test_document_heldout_windows_skip_calibration_and_evaluation_documents(tiny_tokenizer_dir, monkeypatch):
    """A c4-like corpus (evaluation documents = calibration documents): held-out documents are drawn
    neither by the calibration draw nor by the 256-segment evaluation draw."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    docs = _docs(150, 2)
    corpus = lm_data.Corpus("c4-like", "test", lambda: docs, lambda: docs, sampling="documents")
    monkeypatch.setitem(lm_data.CORPORA, "c4-like", corpus)
    held, info = heldout_segments("c4-like", tok, 8, 16, 8, 24, seed=3, eval_seqlen=24)
    cal_docs = {d for d, _, _ in lm_data.document_draws(docs, tok, 8, 24, 3, "cal")}
    ev_docs = {d for d, _, _ in lm_data.document_draws(docs, tok, lm_data.C4_EVAL_SEGMENTS, 24,
                                                       lm_data.C4_EVAL_SEED, "eval")}
    picked = [d for d, _ in info["starts"]]
    assert len(set(picked)) == 8 and not set(picked) & (cal_docs | ev_docs)
    # the rule: from the last document down, every unused one is taken (all documents here are long)
    assert picked == [d for d in range(149, -1, -1) if d not in cal_docs | ev_docs][:8]
    assert set(range(min(picked), 150)) & (ev_docs - cal_docs)  # some were skipped for the evaluation draw
    for (d, a), row in zip(info["starts"], held):
        assert torch.equal(lm_data.encode(tok, docs[d])[a:a + 16], row)


@pytest.mark.parametrize("inputs_from", ["pruned", "dense"])
def test_heldout_error_is_the_pruned_models_error_on_the_heldout_windows(tiny_model, inputs_from):
    """Reference: after pruning, the held-out windows through the whole (pruned, or for "dense" the
    dense) model give every consumer's XᵀX; the record's held-out error is the quadratic form in it.
    The calibration error is the same formula on the calibration windows."""
    g = torch.Generator().manual_seed(1)
    segs, held = torch.randint(0, 300, (4, 16), generator=g), torch.randint(0, 300, (3, 12), generator=g)
    a = get_adapter(tiny_model)
    dense = copy.deepcopy(tiny_model)
    out = prune_model_sequential(tiny_model, segs, make_method("osscar"), a.n_attn_groups - 2, a.ffn_dim // 2,
                                 heldout=held, batch_size=2, inputs_from=inputs_from)
    ref_model = tiny_model if inputs_from == "pruned" else dense
    H_held, H_cal = _direct_xtx(ref_model, held), _direct_xtx(ref_model, segs)
    blocks, dense_blocks = a.layers(tiny_model), a.layers(dense)
    assert len(out.records) == 2 * len(blocks)
    for n, rec in enumerate(out.records):  # block by block, attention first
        i, part = n // 2, rec.part
        assert rec.name.startswith(f"{a.layers_path}.{i}.")
        W = a.consumer(blocks[i], part).weight.data.T
        W_dense = a.consumer(dense_blocks[i], part).weight.data.T
        H_c = H_cal[(i, part)]  # a consumer's inputs do not depend on its own weights
        want_h, want_c = reconstruction_error(H_held[(i, part)], W, W_dense), reconstruction_error(H_c, W, W_dense)
        assert math.isclose(rec.heldout_error, want_h[0], rel_tol=1e-4)
        assert math.isclose(rec.heldout_rel_error, want_h[1], rel_tol=1e-4)
        assert math.isclose(rec.calib_error, want_c[0], rel_tol=1e-4)
        assert rec.heldout_rel_error > 0 and rec.calib_rel_error > 0
        assert not math.isclose(rec.heldout_rel_error, rec.calib_rel_error, rel_tol=1e-3)


def test_run_records_carry_calibration_and_heldout_errors(tiny_llama_dir, corpus_file):
    from osscar.lm.run import run_lm
    from osscar.lm.run_config import LMRunConfig

    cfg = LMRunConfig(model=str(tiny_llama_dir), method="osscar", head_fraction=0.34, neuron_fraction=0.5,
                      calib_corpus=corpus_file, eval_corpora=(corpus_file,), n_samples=4, seqlen=32,
                      eval_windows=2, heldout_samples=2)
    out = run_lm(cfg)
    assert len(out["layers"]) == 4
    for rec in out["layers"]:
        assert rec["calib_rel_error"] > 0 and rec["heldout_rel_error"] > 0
        assert rec["calib_error"] > 0 and rec["heldout_error"] > 0
    hw = out["provenance"]["heldout_windows"]
    assert hw["n"] == 2 and hw["seqlen"] == 32 and len(hw["starts"]) == 2
    none = run_lm(LMRunConfig(**{**cfg.to_dict(), "heldout_samples": 0, "eval_corpora": (corpus_file,)}))
    assert all(r["heldout_error"] is None and r["calib_rel_error"] > 0 for r in none["layers"])
    assert none["provenance"]["heldout_windows"] is None


@pytest.mark.parametrize("field, value, match", [("heldout_samples", -1, "heldout_samples must be an integer ≥ 0"),
                                                 ("heldout_seqlen", 0, "heldout_seqlen must be a positive integer")])
def test_bad_heldout_settings_fail_before_any_load(tiny_llama_dir, field, value, match):
    from osscar.lm.run_config import LMRunConfig

    with pytest.raises(ValueError, match=match):
        LMRunConfig(model=str(tiny_llama_dir), **{field: value})
