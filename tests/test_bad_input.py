"""Bad input on every command line: a one-line message naming the flag or key as the user wrote it,
exit code 2, no traceback — run as a user runs it, in a subprocess.

Table-driven: add a :class:`Case` to ``CASES``. In ``argv``, ``{text}`` is a small text file,
``{fmnist}`` a folder with (tiny) Fashion-MNIST files, ``{badidx}`` one whose files are not IDX, ``{tmp}`` an empty folder and
``{sweep:NAME}`` a sweep file written from ``SWEEPS[NAME]``.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Case:
    """``argv`` after ``python``; the stderr's last line must contain every string of ``says`` and none
    of ``not_says``; ``usage``: argparse's own error (its usage block comes first), else stderr is one line."""

    id: str
    argv: tuple[str, ...]
    says: tuple[str, ...]
    not_says: tuple[str, ...] = ()
    usage: bool = False


VISION = ("-m", "osscar", "vision")
LM = ("-m", "osscar", "lm", "--cache-dir", "{tmp}/cache", "--output-dir", "{tmp}/out")
RUN = ("-m", "benchmarks.run", "--store", "{tmp}/store", "--dry-run")

SWEEPS = {
    "unknown-key": 'name = "bad"\npipeline = "vision"\n[profiles.cpu.base]\nrandom_init = true\ncheckpoint = "x"\n'
                   'head_fractoin = 0.5\n',
    "no-data": 'name = "bad"\npipeline = "vision"\n[profiles.cpu.base]\ndata_root = "/no/such/fashion-mnist"\n'
               '[profiles.cpu.grid]\nmethod = [{method = "mp"}]\n',
    "text-checkpoint": 'name = "bad"\npipeline = "vision"\n[profiles.cpu.base]\ncheckpoint = "{text}"\n'
                       'data_root = "{fmnist}"\n[profiles.cpu.grid]\nmethod = ["mp", "osscar"]\n',
}

CASES = [
    # the vision CLI
    Case("vision-checkpoint-text-file", (*VISION, "--checkpoint", "{text}", "--data-root", "{fmnist}"),
         ("osscar vision: error: --checkpoint {text}: not a file torch.load reads",)),
    Case("vision-checkpoint-missing", (*VISION, "--checkpoint", "{tmp}/no.pt", "--data-root", "{fmnist}"),
         ("--checkpoint", "file not found: {tmp}/no.pt")),
    Case("vision-checkpoint-other-arch", (*VISION, "--arch", "mobilenetv1", "--data-root", "{fmnist}", "--checkpoint",
                                          str(ROOT / "osscar/vision/assets/resnet20_fashion-mnist.pt")),
         ("holds a 'resnet20', not a 'mobilenetv1'",)),
    Case("vision-data-root-missing", (*VISION, "--data-root", "/no/such/data_root/model"),
         ("--data-root=/no/such/data_root/model does not exist", "apt-get install -y dataset-fashion-mnist")),
    Case("vision-data-files-missing", (*VISION, "--data-root", "{tmp}"),
         ("--data-root={tmp}: Fashion-MNIST file", "not found")),
    Case("vision-data-files-not-idx", (*VISION, "--data-root", "{badidx}"),
         ("--data-root={badidx}: train-images-idx3-ubyte.gz is not an unsigned-byte IDX file",)),
    Case("vision-prepare-without-data", (*VISION, "--prepare", "--data-root", "/no/such/dir"),
         ("--data-root=/no/such/dir does not exist",)),
    Case("vision-bad-method", (*VISION, "--random-init", "--method", "magic", "--data-root", "{fmnist}"),
         ("osscar vision: error:", "magic")),
    Case("vision-bad-n-calib", (*VISION, "--random-init", "--n-calib", "0", "--data-root", "{fmnist}"), ("--n-calib",)),
    Case("vision-bad-method-param", (*VISION, "--random-init", "--method-param", "nokey", "--data-root", "{fmnist}"),
         ("argument --method-param: expected [METHOD.]KEY=VALUE", "'nokey'"), usage=True),
    Case("vision-bad-flops-fraction", (*VISION, "--flops-fraction", "half"),
         ("argument --flops-fraction", "'half'"), usage=True),
    Case("vision-bad-arch", (*VISION, "--arch", "vgg"), ("argument --arch: invalid choice: 'vgg'",), usage=True),
    # the LM CLI (no model is loaded for any of these)
    Case("lm-unknown-model-path", (*LM, "--model", "/no/such/model"),
         ("osscar lm: error: --model='/no/such/model' is not known",), ("/no/such/--model",)),
    Case("lm-text-file-as-model", (*LM, "--model", "{text}"), ("--model='{text}' is not known",)),
    Case("lm-bad-method", (*LM, "--method", "magic"), ("--method='magic' is unknown; allowed:",)),
    Case("lm-head-fraction-out-of-range", (*LM, "--head-fraction", "1.5"), ("--head-fraction must be a number in [0, 1)",)),
    Case("lm-head-fraction-not-a-number", (*LM, "--head-fraction", "abc"), ("argument --head-fraction",), usage=True),
    Case("lm-missing-corpus", (*LM, "--eval-corpus", "/no/such/corpus.txt"), ("--eval-corpus", "/no/such/corpus.txt")),
    # reports
    Case("reports-out-is-a-file", ("-m", "reports", "--store", "{tmp}/store", "--out", "{text}"),
         ("python -m reports: error: --out {text}: {text} is a file, not a folder",)),
    # sweeps, validated through python -m benchmarks.run
    Case("run-unknown-sweep-key", (*RUN, "{sweep:unknown-key}"), ("unknown key 'head_fractoin'",)),
    Case("run-sweep-missing-dataset", (*RUN, "{sweep:no-data}"),
         ("data_root=/no/such/fashion-mnist does not exist", "apt-get install -y dataset-fashion-mnist")),
    Case("run-sweep-text-checkpoint", (*RUN, "{sweep:text-checkpoint}"),  # caught at validation, before any run
         ("run (method='mp'): checkpoint {text}: not a file torch.load reads",), ("[1/2]",)),
    Case("run-no-such-sweep", (*RUN, "{tmp}/none.toml"), ("sweep file", "does not exist")),
]


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, str]:
    from conftest import write_fake_fmnist

    base = tmp_path_factory.mktemp("bad-input")
    text = base / "notes.txt"
    text.write_text("not a checkpoint, not a model\n")
    out = {"text": str(text), "fmnist": str(write_fake_fmnist(base / "fashion-mnist")), "tmp": str(base / "empty")}
    (base / "empty").mkdir()
    out["badidx"] = str(write_fake_fmnist(base / "bad-idx"))
    for f in (base / "bad-idx").iterdir():  # gzip files holding text
        f.write_bytes(gzip.compress(b"<html>not found</html>"))
    for name, body in SWEEPS.items():
        (base / f"{name}.toml").write_text(_fill(body, out))
        out[f"sweep:{name}"] = str(base / f"{name}.toml")
    return out


def _fill(s: str, places: dict[str, str]) -> str:
    for key, value in places.items():
        s = s.replace("{" + key + "}", value)
    return s


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_one_line_exit_2_no_traceback(case: Case, places: dict[str, str]):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "OSSCAR_CACHE": places["tmp"] + "/cache"}
    r = subprocess.run([sys.executable, *(_fill(a, places) for a in case.argv)], capture_output=True, text=True,
                       cwd=places["tmp"], env=env, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and lines, r.stderr
    assert case.usage or len(lines) == 1, r.stderr
    for s in case.says:
        assert _fill(s, places) in lines[-1], lines[-1]
    for s in case.not_says:
        assert s not in lines[-1], lines[-1]
