"""A user's own text as calibration and evaluation corpus: .txt, folder of .txt, .jsonl."""

from __future__ import annotations

import json
import re

import pytest
import torch

from osscar.lm.text import data as lm_data
from osscar.lm.run import run_lm
from osscar.lm.run_config import LMRunConfig

PARAGRAPHS = [f"Chapter {i}. The quick brown fox number {i} jumps over the lazy dog, then rests by the river "
              f"and watches the boats go by, one after another, until the evening comes. " * 3 for i in range(12)]


@pytest.fixture
def novel(tmp_path):
    path = tmp_path / "novel.txt"
    path.write_text("\n\n".join(PARAGRAPHS))
    return path


def test_text_file_splits_into_held_out_documents(novel):
    cal = lm_data.get_corpus(str(novel)).calibration()
    ev = lm_data.get_corpus(str(novel)).evaluation()
    assert len(cal) + len(ev) == 12 and len(ev) == 3  # every 4th paragraph held out
    assert not set(cal) & set(ev)
    assert ev[0].startswith("Chapter 0.") and cal[0].startswith("Chapter 1.")
    prov = lm_data.corpus_provenance(str(novel))
    assert list(prov["files"]) == [str(novel)] and len(prov["files"][str(novel)]) == 64


def test_folder_and_jsonl_corpora(tmp_path):
    folder = tmp_path / "books"
    folder.mkdir()
    for i in range(4):
        (folder / f"{i}.txt").write_text(PARAGRAPHS[i])
    assert len(lm_data.get_corpus(str(folder)).calibration()) == 3
    jl = tmp_path / "docs.jsonl"
    jl.write_text("\n".join(json.dumps({"text": p, "id": i}) for i, p in enumerate(PARAGRAPHS[:8])) + "\n")
    assert len(lm_data.get_corpus(str(jl)).evaluation()) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"body": "b"}\n')
    with pytest.raises(ValueError, match="line 2 is not a JSON object with a 'text' field"):
        lm_data.get_corpus(str(bad)).calibration()


@pytest.mark.parametrize("name, match", [("/nonexistent/novel.txt", "neither a named corpus"),
                                         ("wikitext3", "is unknown")])
def test_bad_corpus_names_fail_before_any_load(tiny_llama_dir, name, match):
    with pytest.raises(ValueError, match=match):
        LMRunConfig(model=str(tiny_llama_dir), calib_corpus=name)


def test_user_text_as_both_corpora_end_to_end(tiny_llama_dir, novel):
    cfg = LMRunConfig(model=str(tiny_llama_dir), method="osscar", head_fraction=0.34, neuron_fraction=0.5,
                      calib_corpus=str(novel), eval_corpora=(str(novel),), n_samples=4, seqlen=32, eval_windows=2)
    out = run_lm(cfg)
    assert out["pruned"][str(novel)]["ppl"] > 0 and out["pruned"][str(novel)]["windows"] == 2
    files = out["provenance"]["corpora"][str(novel)]["files"]
    assert files == {str(novel): lm_data.corpus_provenance(str(novel))["files"][str(novel)]}


# -- a corpus file must be text ------------------------------------------------------------------------
def _random_bytes(n: int, seed: int = 0) -> bytes:
    return bytes(torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8).tolist())


def _is_utf8(data: bytes) -> bool:
    """The ground truth: Python's own strict decoder."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_binary_corpus_is_refused_by_the_cli_in_one_line_naming_the_file(tiny_llama_dir, tmp_path, capsys):
    from osscar.lm.cli import main

    binary = tmp_path / "random.txt"
    binary.write_bytes(_random_bytes(1 << 20))
    assert not _is_utf8(binary.read_bytes())
    rc = main(["--model", str(tiny_llama_dir), "--calib-corpus", str(binary), "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "--calib-corpus" in err and str(binary) in err and "not UTF-8 text" in err
    assert not (tmp_path / "out").exists()  # refused before any work


@pytest.mark.parametrize("where", ["file", "folder", "jsonl"])
def test_invalid_utf8_past_the_checked_prefix_is_refused_when_read(tmp_path, where):
    """Valid text for the first TEXT_CHECK_BYTES, then one invalid byte: validation passes, reading refuses."""
    data = ("word " * (lm_data.TEXT_CHECK_BYTES // 5 + 10) + "\n\nmore text\n\n").encode() + b"\xff tail\n\nend"
    assert not _is_utf8(data)
    if where == "folder":
        (tmp_path / "books").mkdir()
        (tmp_path / "books" / "a.txt").write_text("A fine first document.")
        bad = tmp_path / "books" / "b.txt"
        name = str(tmp_path / "books")
    else:
        bad = tmp_path / ("bad.txt" if where == "file" else "bad.jsonl")
        name = str(bad)
        data = json.dumps({"text": "x"}).encode() + b"\n" + data if where == "jsonl" else data
    bad.write_bytes(data)
    corpus = lm_data.get_corpus(name)  # the prefix is text
    with pytest.raises(ValueError, match=f"corpus file '{bad}' is not UTF-8 text \\(invalid byte at offset"):
        corpus.calibration()


def test_mostly_replacement_characters_are_refused(tmp_path):
    mangled = tmp_path / "mangled.txt"
    text = "\ufffd" * 300 + " a few words\n\nand more words here"
    mangled.write_text(text)
    assert _is_utf8(mangled.read_bytes())  # valid UTF-8, but not text any more
    with pytest.raises(ValueError, match=f"mangled.txt' is not text: 300 of its {len(text)} characters are replacement"):
        lm_data.get_corpus(str(mangled))
    zeros = tmp_path / "zeros.txt"
    zeros.write_bytes(bytes(5000))  # NUL bytes are valid UTF-8
    with pytest.raises(ValueError, match="zeros.txt' is not text: 5000 of its 5000 characters"):
        lm_data.get_corpus(str(zeros))


def test_real_text_is_read_as_read_text_reads_it(tmp_path):
    """Accepted text (CRLF and lone CR line ends, multi-byte characters, one straddling the checked
    prefix's end, a few replacement characters) reads as Path.read_text(encoding="utf-8") does."""
    pad = "x" * (lm_data.TEXT_CHECK_BYTES - 1)  # "é" (2 bytes) straddles byte TEXT_CHECK_BYTES
    text = pad + "é first paragraph\r\n\r\nsecond: naïve café \ufffd, 東京\r\rthird\n\nfourth\tend\f\n"
    path = tmp_path / "novel.txt"
    path.write_bytes(text.encode("utf-8"))
    docs = lm_data.get_corpus(str(path)).calibration() + lm_data.get_corpus(str(path)).evaluation()
    truth = [p.strip() for p in re.split(r"\n\s*\n", path.read_text(encoding="utf-8")) if p.strip()]
    assert sorted(docs) == sorted(truth) and len(truth) == 4
