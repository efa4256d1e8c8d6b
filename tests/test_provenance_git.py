"""``git_state``: a changed tracked source file makes a checkout dirty; a changed or deleted committed record does
not (a rerun replaces records; they are data no run reads). Checked on a throwaway repository."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from osscar.provenance import git_state

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(root, *args):
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(root), "PATH": "/usr/bin:/bin"})


def test_records_do_not_make_a_checkout_dirty_and_code_does(tmp_path):
    (tmp_path / "results" / "records" / "x").mkdir(parents=True)
    record, code = tmp_path / "results" / "records" / "x" / "k.json", tmp_path / "run.py"
    record.write_text("{}")
    code.write_text("print(1)\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "x")
    assert git_state(tmp_path)["dirty"] is False
    record.unlink()
    (tmp_path / "results" / "records" / "x" / "new.json").write_text("{}")  # untracked: never counts
    assert git_state(tmp_path)["dirty"] is False
    code.write_text("print(2)\n")
    state = git_state(tmp_path)
    assert state["dirty"] is True and len(state["commit"]) == 40
