"""``--model file.gguf``: a GGUF written by the ``gguf`` package from a tiny random Llama converts to
a transformers folder with identical logits, is cached by its sha256, and runs through the LM CLI."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from osscar.io import sha256_file
from osscar.lm.sources import gguf_convert
from osscar.lm.cli import build_parser, main
from osscar.lm.sources.models import load_model

from .gguf_fixture import byte_level_vocab, make_tiny_gguf, tiny_gemma3, write_gemma3_gguf, write_header_gguf
from .test_user_corpus import PARAGRAPHS

TEXT = "the quick brown fox then the sea, a sun in the morning; on and on"


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """(original model, path of its GGUF)."""
    return make_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama-f32.gguf")


def _convert(path, cache, logs):
    return gguf_convert.convert_gguf(path, cache, label=str(path), log=logs.append)


def test_converted_gguf_has_the_original_logits_and_tokenizer(tiny_gguf, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, path = tiny_gguf
    logs: list[str] = []
    folder = _convert(path, tmp_path, logs)
    assert folder == tmp_path / f"gguf-{sha256_file(path)[:16]}"
    assert logs[0].startswith(f"converting {path} (") and "to a transformers folder in" in logs[0]
    assert logs[-1].startswith("converting tiny-llama-f32.gguf: done in ") and logs[-1].endswith(" s")
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok(TEXT, return_tensors="pt").input_ids
    assert tok.convert_tokens_to_ids("Ġthe") in ids[0].tolist()  # the GGUF merges are applied
    assert tok.decode(ids[0]) == TEXT
    conv = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        ref, got = model(ids).logits, conv(ids).logits
    assert ref.abs().max() > 1  # not a degenerate model
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    prov = json.loads((folder / gguf_convert.PROVENANCE_FILE).read_text())
    assert prov["source_sha256"] == sha256_file(path) and prov["gguf_architecture"] == "llama"
    assert prov["gguf_tensor_types"] == {"F32": 21} and prov["source_format"] == "gguf"


def test_conversion_is_reused_by_hash_and_a_broken_entry_is_redone(tiny_gguf, tmp_path):
    _, path = tiny_gguf
    logs: list[str] = []
    folder = _convert(path, tmp_path, logs)
    logs.clear()
    copy = tmp_path / "renamed.gguf"
    shutil.copy(path, copy)
    assert _convert(copy, tmp_path, logs) == folder and logs == []  # same bytes: same entry, no work
    weights = next(folder.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a file cut short
    assert gguf_convert.entry_problem(folder, sha256_file(path)) == f"{weights.name} is missing or has the wrong size"
    assert gguf_convert.cached_conversion(path, tmp_path) is None
    _convert(path, tmp_path, logs)
    assert logs[0] == f"cache entry {folder} is incomplete ({weights.name} is missing or has the wrong size); " \
                      "converting again"
    assert gguf_convert.cached_conversion(path, tmp_path) == folder


def test_an_interrupted_conversion_leaves_nothing_that_counts_as_done(tiny_gguf, tmp_path, monkeypatch):
    _, path = tiny_gguf
    real = gguf_convert._load_gguf

    def load_then_fail_on_save(p):
        model, tok, types = real(p)
        monkeypatch.setattr(tok, "save_pretrained", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
        return model, tok, types

    monkeypatch.setattr(gguf_convert, "_load_gguf", load_then_fail_on_save)
    with pytest.raises(KeyboardInterrupt):
        _convert(path, tmp_path, [])
    assert gguf_convert.cached_conversion(path, tmp_path) is None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".gguf-", "gguf-"))]  # temp folder removed
    # a folder at the final place without a provenance file (copied by hand, or by an older version)
    folder = gguf_convert.entry_folder(sha256_file(path), tmp_path)
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert gguf_convert.entry_problem(folder, sha256_file(path)) == "no osscar_provenance.json"
    monkeypatch.setattr(gguf_convert, "_load_gguf", real)
    assert _convert(path, tmp_path, []) == folder and gguf_convert.cached_conversion(path, tmp_path) == folder


def test_big_file_hash_is_timed_once(tiny_gguf, tmp_path, monkeypatch):
    _, path = tiny_gguf
    monkeypatch.setattr(gguf_convert, "BIG_FILE_BYTES", 1)
    logs: list[str] = []
    assert gguf_convert.file_sha256(path, tmp_path, logs.append) == sha256_file(path)
    assert len(logs) == 1 and logs[0].startswith(f"sha256 of {path} (") and logs[0].endswith(" s")
    assert gguf_convert.file_sha256(path, tmp_path, logs.append) == sha256_file(path) and len(logs) == 1


def test_folder_with_one_gguf_loads_with_provenance(tiny_gguf, tmp_path):
    model, path = tiny_gguf
    folder = tmp_path / "mymodel"
    folder.mkdir()
    shutil.copy(path, folder / "model.gguf")
    first = load_model(str(path), cache_dir=tmp_path / "cache")  # converted from the original name
    loaded = load_model(str(folder), cache_dir=tmp_path / "cache")  # the copy reuses that conversion
    assert first.source == loaded.source and first.provenance["source"] == str(path)
    assert loaded.provenance["source"] == str(folder / "model.gguf")
    assert loaded.provenance["source_sha256"] == sha256_file(path) and loaded.provenance["model"] == str(folder)
    ids = loaded.tokenizer(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, model(ids).logits, rtol=0, atol=1e-5)


def _bad_model_error(model: str, tmp_path, capsys) -> str:
    rc = main(["--model", model, "--cache-dir", str(tmp_path / "cache"), "--output-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_bad_gguf_inputs_are_one_line_errors_naming_model(tiny_gguf, tmp_path, capsys):
    _, path = tiny_gguf
    missing = str(tmp_path / "nope.gguf")
    assert _bad_model_error(missing, tmp_path, capsys) == f"osscar lm: error: --model={missing!r}: no such GGUF file"
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    assert "is not a GGUF file (it starts with b'PK\\x03\\x04'" in _bad_model_error(str(fake), tmp_path, capsys)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[:3000])
    assert _bad_model_error(str(cut), tmp_path, capsys).endswith(f"cannot read the GGUF header of {cut}: the file is "
                                                                 "cut short or damaged (ValueError)")
    text = tmp_path / "novel.txt"
    text.write_text("not a model")
    assert "is not known; allowed: smollm2-135m (embedded), a GGUF file (or a folder with one)" in \
        _bad_model_error(str(text), tmp_path, capsys)
    two = tmp_path / "two"
    two.mkdir()
    for n in ("a.gguf", "b.gguf"):
        shutil.copy(path, two / n)
    assert _bad_model_error(str(two), tmp_path, capsys).endswith("the folder holds 2 GGUF files (a.gguf, b.gguf); "
                                                                 "give the path of the one you mean")


def test_unsupported_gguf_architecture_says_what_is_supported(tmp_path, capsys):
    import gguf
    import numpy as np

    path = tmp_path / "gpt2.gguf"
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    err = _bad_model_error(str(path), tmp_path, capsys)
    supported = gguf_convert.supported_architectures()
    assert "llama" in supported and "gpt2" not in supported and "opt" not in supported
    assert err.endswith(f"--model={str(path)!r}: GGUF architecture 'gpt2' (model_type 'gpt2') cannot be converted: "
                        f"no adapter; supported: {', '.join(supported)}")


# GGUF architecture (general.architecture, general.name) -> the model_type transformers gives it, by hand
GGUF_FAMILIES = {"llama": ("llama", "tiny", "llama"), "mistral": ("llama", "mistral", "mistral"),
                 "phi3": ("phi3", "tiny", "phi3"), "qwen2": ("qwen2", "tiny", "qwen2"), "qwen3": ("qwen3", "tiny", "qwen3"),
                 "gemma2": ("gemma2", "tiny", "gemma2"), "gemma3": ("gemma3", "tiny", "gemma3_text")}


@pytest.mark.parametrize("family", sorted(GGUF_FAMILIES))
def test_every_family_with_an_adapter_is_accepted(family, tmp_path):
    from osscar.lm.adapters import available_adapters

    arch, name, model_type = GGUF_FAMILIES[family]
    path = write_header_gguf(tmp_path / f"{family}.gguf", arch, name)
    assert gguf_convert.gguf_model_type(path) == model_type and model_type in available_adapters()
    assert gguf_convert.check_architecture(path, str(path)) == family
    assert family in gguf_convert.supported_architectures()


def test_a_gemma3_gguf_loads_as_its_text_backbone_with_the_original_logits(tmp_path):
    """GGUF 'gemma3' (the family the issue found refused) converts to model_type gemma3_text, which has an adapter."""
    from osscar.lm.adapters import get_adapter

    tokens, merges = byte_level_vocab()
    model = tiny_gemma3(len(tokens))
    path = write_gemma3_gguf(model, tmp_path / "tiny-gemma3.gguf", tokens, merges)
    loaded = load_model(str(path), cache_dir=tmp_path / "cache")
    assert loaded.model.config.model_type == "gemma3_text" and type(get_adapter(loaded.model)).__name__
    ids = torch.randint(0, len(tokens), (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, got = model(ids).logits, loaded.model(ids).logits
    assert ref.abs().max() > 1
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch,reason", [("gemma", "cannot be converted (transformers: GGUF model with architecture "
                                                   "gemma is not supported yet.)"),
                                         ("falcon", "(model_type 'falcon') cannot be converted: no adapter")])
def test_a_family_transformers_or_the_adapters_lack_is_refused(arch, reason, tmp_path):
    path = write_header_gguf(tmp_path / f"{arch}.gguf", arch)
    with pytest.raises(ValueError) as exc:
        gguf_convert.check_architecture(path, "m")
    assert f"model='m': GGUF architecture {arch!r} {reason}; supported: " in str(exc.value)
    assert arch not in gguf_convert.supported_architectures()


def test_help_says_gguf_files_are_accepted():
    text = " ".join(build_parser().format_help().split())
    assert "a GGUF file, or a folder holding one .gguf" in text
    named = {"gemma2": "Gemma2", "gemma3": "Gemma3", "llama": "Llama", "mistral": "Mistral", "phi3": "Phi3", "qwen2": "Qwen2", "qwen3": "Qwen3"}
    assert "/".join(named[a] for a in gguf_convert.supported_architectures()) in text  # the help is not stale


def test_cli_prunes_a_gguf_on_the_users_text(tiny_gguf, tmp_path, capsys):
    _, path = tiny_gguf
    novel = tmp_path / "novel.txt"
    novel.write_text("\n\n".join(PARAGRAPHS))
    rc = main(["--model", str(path), "--method", "osscar", "--head-fraction", "0.5", "--neuron-fraction", "0.25",
               "--calib-corpus", str(novel), "--eval-corpus", str(novel), "--n-samples", "4", "--seqlen", "32",
               "--eval-windows", "2", "--dense", "--cache-dir", str(tmp_path / "cache"),
               "--output-dir", str(tmp_path / "out"), "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "converting " in captured.err and "done in" in captured.err
    record = json.loads((tmp_path / "out" / "tiny-llama-f32_osscar_h0.50_n0.25.json").read_text())
    prov = record["provenance"]["model_provenance"]
    assert prov["source"] == str(path) and prov["source_sha256"] == sha256_file(path)
    ppl = record["pruned"][str(novel)]["ppl"]
    assert ppl > 0 and ppl != record["dense"][str(novel)]["ppl"]
    assert record["applied"]["head_fraction_applied"] == 0.5
