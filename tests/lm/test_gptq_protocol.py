"""Golden test: the project's WikiText-2 / PTB / C4 windows equal GPTQ's loaders', token for token.

``gptq_*`` below transcribe IST-DASLab/gptq ``datautils.py`` (``get_wikitext2``, ``get_ptb``,
``get_c4``) and the window cut of its ``opt_eval`` (``nsamples = numel // seqlen``), with the
``datasets`` tables replaced by lists of strings. ``datasets.load_dataset`` is monkeypatched with
tables cut from a small text fixture, keyed by the exact dataset names, configs, splits and C4
shard files the project must ask for. The tokenizer prepends ``</s>`` as OPT's does, so a call
that skips the tokenizer's defaults is caught.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from osscar.lm.text import data as lm_data

FIXTURE = Path(__file__).parents[1] / "fixtures" / "text" / "gptq_protocol.txt"
SEQLEN = 16
NSAMPLES = 8
SEED = 3  # a run seed other than 0: C4's evaluation segments must not follow it
C4_VAL = "en/c4-validation.00000-of-00008.json.gz"
C4_TRAIN = "en/c4-train.00000-of-01024.json.gz"


# -- GPTQ's loaders, transcribed (global `random`, as GPTQ) -----------------------------------------
def gptq_eval_cut(input_ids: torch.Tensor, seqlen: int) -> torch.Tensor:
    """opt_eval: testenc (1, N) -> nsamples = N // seqlen windows (nsamples, seqlen)."""
    nsamples = input_ids.numel() // seqlen
    return torch.cat([input_ids[:, i * seqlen:(i + 1) * seqlen] for i in range(nsamples)])


def gptq_joined(train: list[str], test: list[str], tokenizer, nsamples: int, seed: int, seqlen: int):
    """get_wikitext2 (train/test) and get_ptb (train/validation): both join with "\\n\\n"."""
    trainenc = tokenizer("\n\n".join(train), return_tensors="pt")
    testenc = tokenizer("\n\n".join(test), return_tensors="pt")
    random.seed(seed)
    trainloader = []
    for _ in range(nsamples):
        i = random.randint(0, trainenc.input_ids.shape[1] - seqlen - 1)
        j = i + seqlen
        trainloader.append(trainenc.input_ids[:, i:j])
    return torch.cat(trainloader), gptq_eval_cut(testenc.input_ids, seqlen)


def gptq_c4(traindata: list[str], valdata: list[str], tokenizer, nsamples: int, seed: int, seqlen: int):
    """get_c4: calibration from `traindata` with `seed`; 256 validation segments with seed 0."""
    random.seed(seed)
    trainloader = []
    for _ in range(nsamples):
        while True:
            i = random.randint(0, len(traindata) - 1)
            trainenc = tokenizer(traindata[i], return_tensors="pt")
            if trainenc.input_ids.shape[1] >= seqlen:
                break
        i = random.randint(0, trainenc.input_ids.shape[1] - seqlen - 1)
        j = i + seqlen
        trainloader.append(trainenc.input_ids[:, i:j])
    random.seed(0)
    valenc = []
    for _ in range(256):
        while True:
            i = random.randint(0, len(valdata) - 1)
            tmp = tokenizer(valdata[i], return_tensors="pt")
            if tmp.input_ids.shape[1] >= seqlen:
                break
        i = random.randint(0, tmp.input_ids.shape[1] - seqlen - 1)
        j = i + seqlen
        valenc.append(tmp.input_ids[:, i:j])
    valenc = torch.hstack(valenc)
    return torch.cat(trainloader), gptq_eval_cut(valenc, seqlen)


# -- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lines() -> list[str]:
    return FIXTURE.read_text().split("\n")[:-1]  # rows as wikitext has them: some empty


@pytest.fixture(scope="module")
def tokenizer(lines):
    """Byte-level BPE on the fixture whose defaults prepend ``</s>``, like OPT's tokenizer."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(lines, vocab_size=400, min_frequency=1, special_tokens=["</s>"])
    bos = bpe.token_to_id("</s>")
    bpe._tokenizer.post_processor = TemplateProcessing(single="</s> $A", special_tokens=[("</s>", bos)])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="</s>", eos_token="</s>")
    assert tok("harbour").input_ids[0] == bos
    return tok


@pytest.fixture(scope="module")
def tables(lines) -> dict:
    docs = [line for line in lines if line]
    return {
        ("wikitext", "wikitext-2-raw-v1", "train"): {"text": lines[:40]},
        ("wikitext", "wikitext-2-raw-v1", "test"): {"text": lines[40:]},
        ("ptb_text_only", "penn_treebank", "train"): {"sentence": docs[12:]},
        ("ptb_text_only", "penn_treebank", "validation"): {"sentence": docs[:12]},
        ("allenai/c4", C4_TRAIN, "train"): {"text": docs[::2]},
        ("allenai/c4", C4_VAL, "validation"): {"text": docs[1::2]},
    }


@pytest.fixture
def hub(monkeypatch, tables):
    """`datasets.load_dataset` answering only the exact requests GPTQ makes."""
    datasets = pytest.importorskip("datasets")

    def load_dataset(path, name=None, split=None, data_files=None, **kw):
        if data_files is not None:
            assert list(data_files) == [split], data_files
            name = data_files[split]
        return tables[(path, name, split)]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return tables


def test_no_fixture_document_has_exactly_seqlen_tokens(tables, tokenizer):
    """GPTQ's ``>= seqlen`` then crashes in randint; elsewhere ``>`` (ours) draws the same segments."""
    for key in [k for k in tables if k[0] == "allenai/c4"]:
        lengths = [len(tokenizer(d).input_ids) for d in tables[key]["text"]]
        assert SEQLEN not in lengths
        assert sum(n > SEQLEN for n in lengths) >= 3 and sum(n < SEQLEN for n in lengths) >= 3  # both kinds


@pytest.mark.parametrize("corpus, train_key, test_key, field", [
    ("wikitext2", ("wikitext", "wikitext-2-raw-v1", "train"), ("wikitext", "wikitext-2-raw-v1", "test"), "text"),
    ("ptb", ("ptb_text_only", "penn_treebank", "train"), ("ptb_text_only", "penn_treebank", "validation"),
     "sentence"),
])
def test_joined_corpora_equal_gptq(hub, tokenizer, corpus, train_key, test_key, field):
    want_cal, want_eval = gptq_joined(hub[train_key][field], hub[test_key][field], tokenizer, NSAMPLES, SEED, SEQLEN)
    cal = lm_data.calibration_segments(corpus, tokenizer, NSAMPLES, SEQLEN, SEED)
    ev = lm_data.eval_windows(corpus, tokenizer, SEQLEN)  # default: every window of the test text
    assert want_eval.shape[0] >= 10 and ev[0, 0] == tokenizer.bos_token_id
    assert torch.equal(cal, want_cal)
    assert torch.equal(ev, want_eval)
    assert torch.equal(lm_data.eval_windows(corpus, tokenizer, SEQLEN, max_windows=3), want_eval[:3])


@pytest.mark.parametrize("corpus, calib_key", [("c4", ("allenai/c4", C4_VAL, "validation")),
                                               ("c4-train", ("allenai/c4", C4_TRAIN, "train"))])
def test_c4_equals_gptq(hub, tokenizer, corpus, calib_key):
    val = hub[("allenai/c4", C4_VAL, "validation")]["text"]
    want_cal, want_eval = gptq_c4(hub[calib_key]["text"], val, tokenizer, NSAMPLES, SEED, SEQLEN)
    cal = lm_data.calibration_segments(corpus, tokenizer, NSAMPLES, SEQLEN, SEED)
    ev = lm_data.eval_windows(corpus, tokenizer, SEQLEN)
    assert want_eval.shape == (256, SEQLEN)
    assert torch.equal(cal, want_cal)
    assert torch.equal(ev, want_eval)
    assert torch.equal(lm_data.eval_windows(corpus, tokenizer, SEQLEN, max_windows=5), want_eval[:5])


def test_c4_validation_calibration_at_seed_0_is_the_first_eval_segments(hub, tokenizer):
    """What the docs warn about: the authors' choice calibrates on C4's own perplexity segments."""
    cal = lm_data.calibration_segments("c4", tokenizer, NSAMPLES, SEQLEN, 0)
    assert torch.equal(cal, lm_data.eval_windows("c4", tokenizer, SEQLEN)[:NSAMPLES])
    other = lm_data.calibration_segments("c4-train", tokenizer, NSAMPLES, SEQLEN, 0)
    assert not torch.equal(other, cal)


def test_a_document_of_exactly_seqlen_tokens_is_skipped(tokenizer):
    docs = ["harbour town bells", "the river a harbour old town bells rang at noon while fishermen " * 4]
    short = tokenizer(docs[0], return_tensors="pt").input_ids[0]
    n = len(short)
    out = lm_data.document_segments(docs, tokenizer, 20, n, seed=0, what="test")
    assert out.shape == (20, n) and not any(torch.equal(w, short) for w in out)
    with pytest.raises(ValueError, match="found only 0 of 2 documents longer than seqlen"):
        lm_data.document_segments(docs[:1], tokenizer, 2, n, seed=0, what="test")


def test_a_missing_hub_dataset_is_an_error_not_a_substitute(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*a, **kw):
        raise ConnectionError("no hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(lm_data.CorpusUnavailable, match="corpus 'c4-train' could not be loaded"):
        lm_data.get_corpus("c4-train").calibration()


def test_defaults_evaluate_every_window():
    from osscar.lm.cli import build_parser
    from osscar.lm.run_config import LMRunConfig

    assert build_parser().parse_args([]).eval_windows is None
    assert LMRunConfig.__dataclass_fields__["eval_windows"].default is None


def test_calibration_starts_stop_before_the_last_window(hub, tokenizer):
    """GPTQ draws i in [0, N - seqlen - 1]: the window ending at the last token is never taken."""
    train = hub[("wikitext", "wikitext-2-raw-v1", "train")]["text"]
    n_tokens = len(tokenizer("\n\n".join(train)).input_ids)
    for seed in range(10):  # a short range, where an off-by-one changes the draws
        want, _ = gptq_joined(train, train, tokenizer, 1, seed, n_tokens - 3)
        assert torch.equal(lm_data.calibration_segments("wikitext2", tokenizer, 1, n_tokens - 3, seed), want)
