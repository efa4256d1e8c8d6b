"""Held-out calibration windows: token windows of the calibration text that the solver never sees.

They measure each pruned consumer's reconstruction error on inputs from the same corpus as the
calibration windows but disjoint from them (:func:`osscar.problem.reconstruction_error` on a
second ``H`` accumulated from these windows through the same, already-pruned blocks).

The rule, fixed and recorded (:func:`heldout_segments`):

* joined corpora (GPTQ's random calibration starts, windows may overlap): the calibration text of N
  tokens is tiled from its end into windows ``[N − (j+1)·seqlen, N − j·seqlen)``, j = 0, 1, ...;
  the first ``n`` tiles that overlap no calibration window are taken (they do not overlap each other).
  Evaluation windows come from the corpus's evaluation text, which shares no document with the
  calibration text (see :mod:`osscar.lm.text.data`), so held-out windows are disjoint from them too;
* document corpora (c4, c4-train): documents are visited from the last index down; a document
  drawn by the calibration draw, or (when the evaluation documents are the calibration documents:
  ``c4``) by the 256-segment evaluation draw, is skipped; each remaining document longer than
  ``seqlen`` tokens gives its first ``seqlen`` tokens, until ``n`` windows.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from osscar.lm.text import data as lm_data

MAX_DOCUMENTS_VISITED = 10_000  # document corpora: give up after this many documents (ValueError)


def joined_heldout_starts(n_tokens: int, calib_starts: list[int], calib_seqlen: int, n: int,
                          seqlen: int) -> list[int]:
    """Starts of ``n`` held-out windows of ``seqlen`` tokens (tiles from the text's end, no calibration overlap).

    calib_starts: the calibration windows' starts, each window ``[s, s + calib_seqlen)``.
    ValueError when the text has fewer than ``n`` such tiles.
    """
    out: list[int] = []
    j = 1
    while len(out) < n and n_tokens - j * seqlen >= 0:
        a = n_tokens - j * seqlen
        if all(a + seqlen <= s or s + calib_seqlen <= a for s in calib_starts):
            out.append(a)
        j += 1
    if len(out) < n:
        raise ValueError(f"heldout_samples: the calibration text ({n_tokens} tokens) has only {len(out)} windows of "
                         f"{seqlen} tokens outside the calibration windows, {n} asked; lower heldout_samples, "
                         f"heldout_seqlen or n_samples")
    return out


def heldout_segments(name: str, tokenizer: Any, n: int, seqlen: int, n_calib: int, calib_seqlen: int,
                     seed: int, eval_seqlen: int, ids: Tensor | None = None) -> tuple[Tensor, dict[str, Any]]:
    """``n`` held-out windows of ``seqlen`` tokens from corpus ``name``'s calibration text: (n, seqlen) long.

    Disjoint from the ``n_calib`` calibration windows of ``calib_seqlen`` tokens drawn with ``seed``
    (:func:`osscar.lm.text.data.calibration_segments`) and from the evaluation windows (of
    ``eval_seqlen`` tokens for document corpora). Returns the windows and what a record says about
    them: {"rule", "n", "seqlen", "starts"} (joined: token starts in the calibration text;
    documents: [document index, 0] pairs). ``ids``: the joined calibration text's tokens
    (:func:`osscar.lm.text.data.joined_tokens`) when the caller has them.
    """
    corpus = lm_data.get_corpus(name)
    if corpus.sampling == "documents":
        docs = corpus.calibration()
        used = {d for d, _, _ in lm_data.document_draws(docs, tokenizer, n_calib, calib_seqlen, seed,
                                                        f"corpus {name!r} calibration")}
        ev_docs = corpus.evaluation()
        if ev_docs == docs:
            used |= {d for d, _, _ in lm_data.document_draws(ev_docs, tokenizer, lm_data.C4_EVAL_SEGMENTS,
                                                             eval_seqlen, lm_data.C4_EVAL_SEED,
                                                             f"corpus {name!r} evaluation")}
        out, picked = [], []
        for d in range(len(docs) - 1, max(-1, len(docs) - 1 - MAX_DOCUMENTS_VISITED), -1):
            if len(out) == n:
                break
            if d in used:
                continue
            ids = lm_data.encode(tokenizer, docs[d])
            if len(ids) > seqlen:
                out.append(ids[:seqlen])
                picked.append([d, 0])
        if len(out) < n:
            raise ValueError(f"heldout_samples: found only {len(out)} of {n} unused documents longer than "
                             f"heldout_seqlen={seqlen} tokens in corpus {name!r}")
        return torch.stack(out), {"rule": "documents-from-last-unused", "n": n, "seqlen": seqlen, "starts": picked}
    ids = lm_data.joined_tokens(name, tokenizer, "calibration") if ids is None else ids
    calib = lm_data.joined_starts(len(ids), n_calib, calib_seqlen, seed)
    starts = joined_heldout_starts(len(ids), calib, calib_seqlen, n, seqlen)
    return (torch.stack([ids[a:a + seqlen] for a in starts]),
            {"rule": "tiles-from-end-outside-calibration", "n": n, "seqlen": seqlen, "starts": starts})
