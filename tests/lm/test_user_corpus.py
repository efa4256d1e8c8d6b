"""A user's own text as calibration and evaluation corpus: .txt, folder of .txt, .jsonl."""

from __future__ import annotations

import json

import pytest

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
