"""Pruning pipeline on tiny random nets, config validation, CLI, and the real-data integration runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from osscar.vision.adapters import prune_units
from osscar.vision.data import DEFAULT_FMNIST_ROOT, random_crop_flip
from osscar.vision.models import load_model
from osscar.vision.prune import calibrate_unit, prune_model
from osscar.vision.slicing import load_sliced, slice_model

from .conftest import random_model

HAVE_FMNIST = Path(DEFAULT_FMNIST_ROOT, "train-images-idx3-ubyte.gz").is_file()
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed "
                                  "(apt-get install -y dataset-fashion-mnist)")


def _images(shape, n=8, seed=0):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def test_two_streams():
    dense = random_model("resnet20", in_channels=1, num_classes=10)
    units = prune_units(dense)
    x = _images((1, 12, 12))
    # before any pruning both streams coincide: cross == H
    s0 = calibrate_unit(dense, dense, units[0], x, batch_size=3)
    torch.testing.assert_close(s0.cross, s0.H)
    assert s0.rows == 8 * 144
    # after pruning the first unit, later units see different pruned-model inputs
    pruned, kept, _ = prune_model(dense, units[:1], x, "mp", {units[0].name: 8})
    s1 = calibrate_unit(pruned, dense, units[1], x, batch_size=8)
    assert not torch.allclose(s1.cross, s1.H)
    assert torch.isfinite(s1.cross).all() and torch.isfinite(s1.H).all()
    # H is the pruned stream's own Gram matrix: symmetric PSD; cross (X̃ᵀX_d) is not symmetric in general
    torch.testing.assert_close(s1.H, s1.H.T)
    assert float(torch.linalg.eigvalsh(s1.H.double()).min()) > -1e-6 * float(s1.H.diagonal().max())
    assert not torch.allclose(s1.cross, s1.cross.T)


def test_chip_maps_are_the_full_maps_unless_positions_are_sampled():
    dense = random_model("resnet20", in_channels=1, num_classes=10)
    u = prune_units(dense)[0]
    x = _images((1, 12, 12))
    full = calibrate_unit(dense, dense, u, x, batch_size=3, chip_samples=5)
    assert full.activations.shape == (5, u.channels(dense), 144)  # every position of each map
    part = calibrate_unit(dense, dense, u, x, batch_size=3, chip_samples=5, chip_positions=20, seed=1)
    assert part.activations.shape == (5, u.channels(dense), 20)
    idx = torch.randperm(144, generator=torch.Generator().manual_seed(1))[:20].sort().values
    torch.testing.assert_close(part.activations, full.activations[:, :, idx])  # the same maps, subsampled


def test_layer_records_name_the_method_variant_that_ran():
    dense = random_model("resnet20", in_channels=1, num_classes=10)
    units = prune_units(dense)[:2]
    keep = {u.name: u.channels(dense) // 2 for u in units}
    for params, expected in (({}, "own-energy"), ({"selection": "joint-greedy"}, "joint-greedy")):
        _, _, records = prune_model(dense, units, _images((1, 12, 12)), "thinet", keep, params, batch_size=4)
        assert all(r["params"] == {"selection": expected} and r["info"]["selection"] == expected for r in records)


@pytest.mark.parametrize("arch,shape,method", [
    ("resnet20", (1, 16, 16), "osscar"), ("resnet20", (1, 16, 16), "chip"), ("resnet20", (1, 16, 16), "fpgm"),
    ("mobilenetv1", (3, 32, 32), "mp+"), ("mobilenetv1", (3, 32, 32), "osscar"),
    ("resnet20", (1, 16, 16), "osscar-opt"), ("resnet20", (1, 16, 16), "osscar-authors-ls"),
])
def test_prune_then_slice(arch, shape, method):
    dense = random_model(arch, in_channels=shape[0], num_classes=10)
    units = prune_units(dense)
    keep = {u.name: max(1, u.channels(dense) // 2) for u in units}
    x = _images(shape)
    pruned, kept, records = prune_model(dense, units, x, method, keep, batch_size=4, chip_samples=4)
    assert len(records) == len(units) and all(len(kept[u.name]) == keep[u.name] for u in units)
    for u in units:  # pruned input channels are exactly zero in the unsliced model
        w = pruned.get_submodule(u.consumer).weight
        mask = torch.ones(w.shape[1], dtype=torch.bool)
        mask[kept[u.name]] = False
        assert torch.count_nonzero(w[:, mask]) == 0
    sliced = slice_model(pruned, units, kept)
    with torch.no_grad():
        torch.testing.assert_close(sliced(x), pruned(x), rtol=1e-5, atol=1e-5)
    # the dense model is left untouched
    assert all(dense.get_submodule(u.consumer).in_channels == u.channels(dense) for u in units)


def test_osscar_variants_get_the_vision_defaults_they_take():
    """p̂ = round(2% of C), t̂ = 2·ceil(5% of C), min_swap = 1, each for the variants that have the parameter."""
    from osscar.vision.prune import vision_method_params

    assert vision_method_params("osscar", 100, {}) == {"p_hat": 2, "t_hat": 10, "min_swap": 1}
    assert vision_method_params("osscar-opt", 100, {}) == {"p_hat": 2}
    assert vision_method_params("osscar-authors-ls", 100, {"t_hat": 4}) == {"p_hat": 2, "t_hat": 4}
    assert vision_method_params("mp", 100, {}) == {}


# -- configuration -----------------------------------------------------------------------------
def _cfg(**kw):
    from osscar.vision.run_config import VisionRunConfig

    base = dict(checkpoint=None, random_init=True)
    base.update(kw)
    return VisionRunConfig(**base)


@needs_fmnist
@pytest.mark.parametrize("kw,exc,match", [
    ({"arch": "vgg"}, ValueError, "arch"),
    ({"method": "magic"}, ValueError, "method.*allowed"),
    ({"flops_fraction": 0.0}, ValueError, "flops_fraction"),
    ({"flops_fraction": 1.0}, ValueError, "flops_fraction"),
    ({"flops_fraction": -0.2}, ValueError, "flops_fraction"),
    ({"dataset": "mnist"}, ValueError, "dataset"),
    ({"method": "mp", "p_hat": 2}, ValueError, "p_hat"),
    ({"method": "osscar-opt", "t_hat": 2}, ValueError, r"t_hat is an OSSCAR parameter \(of osscar, osscar-authors-ls\)"),
    ({"method": "osscar", "method_params": {"bogus": 1}}, ValueError, "bogus"),
    ({"damping": -1.0}, ValueError, "damping"),
    ({"method": "chip", "chip_positions": 0}, ValueError, "chip_positions must be an integer"),
    ({"method": "mp", "chip_full_maps": True}, ValueError, "chip_full_maps is a CHIP setting"),
    ({"method": "fpgm", "method_params": {"vectors": "filters"}}, ValueError, "vectors"),
    ({"n_calib": 0}, ValueError, "n_calib"),
    ({"checkpoint": "default", "random_init": False, "arch": "resnet50"}, ValueError, "default"),
    ({"checkpoint": "/nonexistent/model.pt", "random_init": False}, FileNotFoundError, "checkpoint"),
    ({"checkpoint": None, "random_init": False}, ValueError, "checkpoint"),
    ({"data_root": "/nonexistent/fmnist"}, FileNotFoundError, "does not exist"),
    ({"device": "mps"}, ValueError, "device must be 'cpu', 'cuda' or 'cuda:N'"),
])
def test_config_validation(kw, exc, match):
    with pytest.raises(exc, match=match):
        _cfg(**kw)


@pytest.mark.skipif(torch.cuda.device_count() > 99, reason="a machine with 100 GPUs")
def test_unavailable_device_is_an_error_where_the_run_executes(capsys, fake_fmnist):
    """A config naming cuda:99 is valid (a sweep may be validated on a login node without GPUs);
    the run, and the CLI before any run, reject it."""
    from osscar.vision.cli import main
    from osscar.vision.pipeline import run_vision

    cfg = _cfg(device="cuda:99", data_root=str(fake_fmnist))
    with pytest.raises(ValueError, match="device='cuda:99'"):
        run_vision(cfg, progress=False)
    assert main(["--random-init", "--device", "cuda:99", "--data-root", str(fake_fmnist)]) == 2
    assert "--device='cuda:99'" in capsys.readouterr().err


@needs_fmnist
def test_chip_full_maps_is_in_chip_run_keys_only():
    """CHIP defaults to full maps, which names itself in the run key; every other method leaves the
    field unset, so its run key is the one it had before the field existed."""
    import dataclasses

    from benchmarks.pipelines import get_pipeline
    from osscar.vision.cli import _configs, build_parser

    vision = get_pipeline("vision")
    chip, mp = _cfg(method="chip"), _cfg(method="mp")
    assert chip.chip_full_maps is True and mp.chip_full_maps is None
    assert vision.key_config(dataclasses.asdict(chip))["chip_full_maps"] is True
    assert "chip_full_maps" not in vision.key_config(dataclasses.asdict(mp))
    by_method = {c.method: c for c in _configs(build_parser().parse_args(
        ["--random-init", "--method", "chip,mp", "--chip-positions", "20"]))}
    assert by_method["chip"].chip_full_maps is False and by_method["chip"].chip_positions == 20
    assert by_method["mp"].chip_full_maps is None


def test_missing_dataset_files(tmp_path, fake_fmnist):
    from osscar.vision.data import load_split

    train = load_split("fashion-mnist", fake_fmnist, "train")  # the fake is valid IDX
    assert train.images.shape == (4, 1, 28, 28) and train.labels.shape == (4,)
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        _cfg(data_root=str(tmp_path))
    with pytest.raises(ValueError, match="apt-get update && apt-get install -y dataset-fashion-mnist"):
        _cfg(data_root=str(tmp_path / "nowhere"))  # a ValueError too: sweep validation reports it in one line
    (fake_fmnist / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz not found"):
        _cfg(data_root=str(fake_fmnist))


def test_crop_flip_deterministic():
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.uint8).reshape(2, 1, 5, 5)
    a = random_crop_flip(x, 2, torch.Generator().manual_seed(3))
    b = random_crop_flip(x, 2, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == x.shape
    assert torch.equal(random_crop_flip(x, 0, torch.Generator().manual_seed(0)).sort(-1).values, x.sort(-1).values)


@needs_fmnist
def test_run_vision_random_init(tmp_path):
    from osscar.vision.pipeline import run_vision

    r = run_vision(_cfg(method="chip", n_calib=16, calib_batch_size=8, eval_limit=50, latency_repeats=2,
                        latency_batch=4, chip_samples=4, output_dir=str(tmp_path)), progress=False)
    assert r["flops_reduction"] >= 0.5 and r["pruned"]["params"] < r["dense"]["params"]
    assert r["slice_max_abs_diff"] < 1e-4 and r["eval_n"] == 50
    assert "metrics" not in r["files"] and not list(tmp_path.glob("*.json"))  # the caller writes the result
    assert r["config"]["method"] == "chip" and "versions" not in r["provenance"]
    model = load_sliced(r["files"]["sliced_model"])
    assert sum(p.numel() for p in model.parameters()) == r["pruned"]["params"]


@needs_fmnist
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["osscar", "chip"])
def test_run_vision_on_cuda_matches_cpu(method):
    from osscar.vision.pipeline import run_vision

    kw = dict(method=method, n_calib=16, calib_batch_size=8, eval_limit=50, latency_repeats=2, latency_batch=4,
              chip_samples=4)
    gpu, cpu = run_vision(_cfg(device="cuda", **kw), progress=False), run_vision(_cfg(**kw), progress=False)
    assert gpu["kept"] == cpu["kept"] and gpu["provenance"]["device"].startswith("cuda")
    assert gpu["slice_max_abs_diff"] < 1e-4 and abs(gpu["pruned"]["top1"] - cpu["pruned"]["top1"]) <= 0.02


def test_cli_help():
    from osscar.vision.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = subprocess.run([sys.executable, "-m", "osscar", "vision", "--help"], capture_output=True, text=True, check=True,
                         env={**os.environ, "COLUMNS": "250"})
    assert "--flops-fraction" in out.stdout and "(default: 1024)" in out.stdout and "(default: 0.5)" in out.stdout


def test_cli_rejects_before_work(capsys, fake_fmnist):
    from osscar.vision.cli import main

    assert main(["--random-init", "--method", "mp,nope", "--data-root", str(fake_fmnist)]) == 2
    assert "nope" in capsys.readouterr().err


# -- real data ---------------------------------------------------------------------------------
@needs_fmnist
@pytest.mark.integration
def test_integration_tiny_budget(tmp_path, monkeypatch):
    """Real Fashion-MNIST end to end: ResNet20 trained on a 6,400-image budget (about 30-45 s on
    one thread) in a private cache, then OSSCAR and MP at 50% FLOPs. Independent of any existing cache."""
    from osscar.vision.pipeline import run_vision
    from osscar.vision.run_config import VisionRunConfig
    from osscar.vision.train import TrainConfig, default_checkpoint, load_checkpoint_meta

    monkeypatch.setenv("OSSCAR_CACHE", str(tmp_path / "cache"))
    cfg = TrainConfig(epochs=1, train_limit=6400, lr=0.05)
    path = default_checkpoint(cfg, progress=False)
    assert path.parent == tmp_path / "cache" / "vision"
    meta = load_checkpoint_meta(path)
    assert meta["test_top1"] > 0.5 and meta["test_n"] == 10000  # learned from real labels
    assert default_checkpoint(cfg, progress=False) == path  # cached: no retraining
    res = {}
    for method in ("mp", "osscar"):
        res[method] = run_vision(VisionRunConfig(checkpoint=str(path), method=method, flops_fraction=0.5, n_calib=128,
                                                 eval_limit=1000, latency=False), progress=False)
    for r in res.values():
        assert r["flops_reduction"] >= 0.5 and r["slice_max_abs_diff"] < 1e-4
        assert r["provenance"]["checkpoint_sha256"] and r["dense"]["top1"] > 0.5
    # the dense checkpoint is evaluated once; the second run reads the cached accuracy
    assert not res["mp"]["dense"]["top1_cached"] and res["osscar"]["dense"]["top1_cached"]
    assert res["osscar"]["dense"]["top1"] == res["mp"]["dense"]["top1"]
    # first unit: identical problem for both methods; OSSCAR's reconstruction error is lower
    assert res["osscar"]["layers"][0]["relative_error"] < res["mp"]["layers"][0]["relative_error"]
    assert res["osscar"]["pruned"]["top1"] > res["mp"]["pruned"]["top1"]


@needs_fmnist
@pytest.mark.integration
@pytest.mark.slow
def test_default_model():
    """The embedded default (trains ~5-8 min on one thread when the cache is empty)."""
    from osscar.vision.pipeline import run_vision
    from osscar.vision.run_config import VisionRunConfig

    res = {m: run_vision(VisionRunConfig(method=m, flops_fraction=0.5, n_calib=512, eval_limit=2000, latency=False),
                         progress=False) for m in ("mp", "osscar")}
    assert res["osscar"]["dense"]["top1"] > 0.88
    assert res["osscar"]["pruned"]["top1"] > 0.85 > res["mp"]["pruned"]["top1"]


def test_cached_evaluate(tmp_path, monkeypatch):
    """Dense accuracy cached per (checkpoint hash, split content, limit, torch, threads)."""
    from osscar.vision.data import ImageSet
    from osscar.vision.train import cached_evaluate, evaluate

    monkeypatch.setenv("OSSCAR_CACHE", str(tmp_path))
    model, _ = load_model("resnet20", random_init=True, in_channels=1, num_classes=10)
    g = torch.Generator().manual_seed(0)
    data = ImageSet("fashion-mnist", "test", torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8, generator=g),
                    torch.randint(0, 10, (40,), generator=g))
    first = cached_evaluate(model, data, "abc", batch_size=16)
    assert not first["cached"] and first["top1"] == evaluate(model, data)["top1"]
    again = cached_evaluate(model, data, "abc", batch_size=16)
    assert again["cached"] and again["top1"] == first["top1"] and again["n"] == 40
    assert not cached_evaluate(model, data, "abd")["cached"]  # another checkpoint
    assert not cached_evaluate(model, data, "abc", limit=20)["cached"]  # another subset
    data.labels[0] = (data.labels[0] + 1) % 10  # other data content
    assert not cached_evaluate(model, data, "abc")["cached"]
    with pytest.raises(ValueError, match="checkpoint_sha256"):
        cached_evaluate(model, data, "")


# -- the shipped reference checkpoint ---------------------------------------------------------------
def test_reference_checkpoint_is_verified_by_sha256(tmp_path, monkeypatch):
    import osscar.vision.train as train

    assert train.reference_checkpoint() == train.REFERENCE_CHECKPOINT
    corrupt = tmp_path / "ref.pt"
    data = bytearray(train.REFERENCE_CHECKPOINT.read_bytes())
    data[len(data) // 2] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    monkeypatch.setattr(train, "REFERENCE_CHECKPOINT", corrupt)
    with pytest.raises(ValueError, match="sha256 .* expected"):
        train.reference_checkpoint()
    monkeypatch.setattr(train, "REFERENCE_CHECKPOINT", tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="is missing"):
        train.reference_checkpoint()


def test_retrained_checkpoint_key_includes_the_thread_count():
    from osscar.vision.train import TrainConfig, default_checkpoint_path

    assert TrainConfig(threads=1).key() != TrainConfig(threads=2).key()
    assert default_checkpoint_path(TrainConfig(threads=1)) != default_checkpoint_path(TrainConfig(threads=2))
    assert TrainConfig(threads=2, root="/elsewhere").key() == TrainConfig(threads=2).key()  # location is not identity


@needs_fmnist
@pytest.mark.integration
def test_default_checkpoint_is_the_shipped_reference_with_its_golden_accuracy():
    """checkpoint='default' prunes the shipped weights (no training), whose dense top-1 on the full
    Fashion-MNIST test set is the one recorded when it was trained (0.9026)."""
    from osscar.vision.pipeline import run_vision
    from osscar.vision.run_config import VisionRunConfig
    from osscar.vision.train import REFERENCE_SHA256, load_checkpoint_meta, reference_checkpoint

    meta = load_checkpoint_meta(reference_checkpoint())
    assert meta["test_top1"] == pytest.approx(0.9026) and meta["train_config"]["threads"] == 2
    r = run_vision(VisionRunConfig(method="mp+", flops_fraction=0.3, n_calib=64, latency=False, threads=2),
                   progress=False)
    assert r["provenance"]["checkpoint_sha256"] == REFERENCE_SHA256
    assert r["dense"]["top1"] == pytest.approx(0.9026, abs=1e-3) and r["eval_n"] == 10000
    assert r["provenance"]["threads_used"] == 2


@needs_fmnist
def test_vision_record_states_the_threads_it_used_after_another_count(tmp_path):
    from benchmarks.sweep import RunSpec
    from benchmarks.worker import execute
    from osscar.vision.run_config import VisionRunConfig
    from benchmarks.store import ResultStore

    torch.set_num_threads(1)
    cfg = VisionRunConfig(checkpoint=None, random_init=True, method="mp", flops_fraction=0.3, n_calib=16,
                          eval_limit=100, latency=False, threads=2)
    rec, ran = execute(RunSpec("toy_vision", "vision", cfg, {"threads": 2}), ResultStore(tmp_path))
    assert ran and rec.provenance["device"]["torch_threads"] == 2
    assert rec.metrics["provenance"]["threads_used"] == 2 and torch.get_num_threads() == 1


def test_dataset_files_that_are_not_idx_are_refused_at_validation(fake_fmnist):
    import gzip

    from osscar.vision.data import check_dataset_root, check_idx_header

    check_dataset_root("fashion-mnist", fake_fmnist)
    f = fake_fmnist / "t10k-images-idx3-ubyte.gz"
    check_idx_header(f)
    f.write_bytes(gzip.compress(b"\x00\x00\x0d\x03" + bytes(12)))  # IDX of float32, not unsigned bytes
    with pytest.raises(ValueError, match=r"data_root=.*: t10k-images-idx3-ubyte.gz is not an unsigned-byte IDX file"):
        check_dataset_root("fashion-mnist", fake_fmnist)
    f.write_bytes(b"\x00\x00\x08\x03 not gzipped")
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz is unreadable"):
        check_idx_header(f)
