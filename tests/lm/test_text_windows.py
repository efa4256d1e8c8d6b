"""Corpus reading and window bounds (osscar.lm.text.data) at their edges, with a one-token-per-word tokenizer.

Every bound here decides whether a run starts or is refused, and how documents are split: an off-by-one lets a
run draw windows past the text's end or refuses a corpus that holds exactly enough.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from osscar.lm.text import data as lm_data


class WordTokenizer:
    """One token per whitespace-separated word (ids count up): token counts are word counts."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, text: str, return_tensors: str = "pt"):
        self.calls += 1
        return SimpleNamespace(input_ids=torch.arange(len(text.split()))[None])


@pytest.mark.parametrize("n, seqlen, tokens, ok", [(3, 8, 24, True), (3, 8, 23, False), (1, 8, 9, True),
                                                     (1, 8, 8, False), (2, 3, 6, True), (2, 3, 5, False)])
def test_calibration_needs_n_samples_times_seqlen_tokens_and_one_more_than_seqlen(n, seqlen, tokens, ok):
    ids = torch.arange(tokens)
    if not ok:
        with pytest.raises(ValueError, match=f"has {tokens} tokens, fewer than n_samples×seqlen = {n}×{seqlen}"):
            lm_data.calibration_segments("wiki-gensim", None, n, seqlen, seed=1, ids=ids)
        return
    got = lm_data.calibration_segments("wiki-gensim", None, n, seqlen, seed=1, ids=ids)  # no tokenizer: ids given
    assert got.shape == (n, seqlen) and int(got.max()) < tokens
    starts = lm_data.joined_starts(tokens, n, seqlen, 1)
    assert got.tolist() == [list(range(i, i + seqlen)) for i in starts]


def _paragraph_file(tmp_path, words_per_doc: list[int]):
    path = tmp_path / "text.txt"
    path.write_text("\n\n".join(" ".join(f"w{d}x{i}" for i in range(n)) for d, n in enumerate(words_per_doc)))
    return str(path)


def test_one_evaluation_window_is_enough(tmp_path):
    name = _paragraph_file(tmp_path, [10, 3, 3, 3, 2])  # evaluation: documents 0 and 4 (every 4th): 12 tokens
    assert lm_data.eval_windows(name, WordTokenizer(), 12).shape == (1, 12)
    assert lm_data.eval_windows(name, WordTokenizer(), 6).shape == (2, 6)
    with pytest.raises(ValueError, match="evaluation text has 12 tokens, fewer than seqlen=13"):
        lm_data.eval_windows(name, WordTokenizer(), 13)


def test_documents_of_text_files_folders_and_jsonl(tmp_path):
    two = tmp_path / "two"
    two.mkdir()
    (two / "a.txt").write_text("first\n\nfile\n")
    (two / "b.txt").write_text("second file")
    assert lm_data._user_documents(str(two)) == ["first\n\nfile", "second file"]  # a folder: one document per file
    jl = tmp_path / "d.jsonl"
    jl.write_text(json.dumps({"text": 5}) + "\n\n" + json.dumps({"text": "words here"}) + "\n")
    assert lm_data._user_documents(str(jl)) == ["5", "words here"]
    assert lm_data._user_documents(_paragraph_file(tmp_path, [2, 3])) == ["w0x0 w0x1", "w1x0 w1x1 w1x2"]
    with pytest.raises(ValueError, match="has 1 document\\(s\\); at least 2 are needed"):
        lm_data._user_documents(_paragraph_file(tmp_path, [4]))


def test_user_corpus_splits_and_names(tmp_path):
    name = _paragraph_file(tmp_path, [1, 2, 3, 4, 5])
    corpus = lm_data.get_corpus(name)
    assert (corpus.name, corpus.description, corpus.sampling) == (name, f"user text {name}", "joined")
    assert [len(d.split()) for d in corpus.evaluation()] == [1, 5] and [len(d.split()) for d in corpus.calibration()] == [2, 3, 4]
    assert lm_data.corpus_provenance(name) == {"name": name, "files": {name: lm_data.sha256_file(tmp_path / "text.txt")}}
    assert lm_data.corpus_provenance("wiki-gensim") == {"name": "wiki-gensim"}


@pytest.mark.parametrize("name, user", [("wiki-gensim", False), ("c4", False), ("notes.txt", True), ("notes.jsonl", True),
                                        ("sub/notes", True), ("notes", False), ("notes.md", False)])
def test_is_user_corpus(name, user, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing of these names exists here
    assert lm_data.is_user_corpus(name) is user


def test_an_existing_path_without_a_suffix_is_a_user_corpus(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes").mkdir()
    assert lm_data.is_user_corpus("notes")


def test_decode_text_edges(tmp_path):
    path = tmp_path / "f.txt"
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        lm_data.decode_text("abc€".encode()[:-1], path)  # a character cut at the end of a whole file
    assert lm_data.decode_text("abc€".encode()[:-1], path, final=False) == "abc"  # a prefix may end mid-character
    assert lm_data.decode_text(b"abcdefghi\x01", path) == "abcdefghi\x01"  # 1 of 10: exactly the allowed share
    with pytest.raises(ValueError, match="2 of its 10 characters"):
        lm_data.decode_text(b"abcdefgh\x01\x02", path)


def test_crlf_text_reads_as_read_text_reads_it(tmp_path):
    path = tmp_path / "f.txt"
    path.write_bytes(b"one\r\ntwo\r\n\r\nthree\rfour")
    assert lm_data.read_text_file(path) == path.read_text(encoding="utf-8") == "one\ntwo\n\nthree\nfour"


def test_document_draws_try_100_per_document_wanted():
    """Documents all shorter than seqlen: the search gives up after exactly 100·n draws, and says so."""
    tok = WordTokenizer()
    docs = [f"d{i}" for i in range(100_000)]  # one token each; 100·n draws hit ~100·n distinct documents
    with pytest.raises(ValueError, match="found only 0 of 3 documents longer than seqlen=4 tokens in 300 draws"):
        lm_data.document_draws(docs, tok, 3, 4, seed=0, what="test")
    import random

    rng = random.Random(0)
    assert tok.calls == len({rng.randint(0, len(docs) - 1) for _ in range(300)})  # each drawn document tokenized once


def test_calibration_windows_default_to_seed_0():
    ids = torch.arange(100)
    assert torch.equal(lm_data.calibration_segments("wiki-gensim", None, 4, 8, ids=ids),
                       lm_data.calibration_segments("wiki-gensim", None, 4, 8, seed=0, ids=ids))
    assert not torch.equal(lm_data.calibration_segments("wiki-gensim", None, 4, 8, seed=1, ids=ids),
                           lm_data.calibration_segments("wiki-gensim", None, 4, 8, seed=0, ids=ids))
