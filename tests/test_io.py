"""Atomic writes: the target is either the old content or the whole new one."""

import os

import pytest

from osscar.io import atomic_directory, atomic_write_json, atomic_write_text, sha256_file


def test_atomic_write_text_and_json(tmp_path):
    p = atomic_write_text(tmp_path / "a" / "x.txt", "hello")
    assert p.read_text() == "hello" and oct(p.stat().st_mode)[-3:] == "644"
    atomic_write_json(tmp_path / "y.json", {"k": 1})
    assert (tmp_path / "y.json").read_text() == '{\n  "k": 1\n}\n'
    assert sha256_file(p) == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"


def test_atomic_directory_replaces_on_success_and_keeps_old_on_error(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "w").write_text("1")
    assert os.listdir(target) == ["w"]
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "w").write_text("2")
            raise RuntimeError("interrupted")
    assert (target / "w").read_text() == "1"
    assert sorted(os.listdir(tmp_path)) == ["model"]  # no temporary folder left behind


def test_atomic_directory_keeps_a_folder_finished_meanwhile_when_asked(tmp_path):
    target = tmp_path / "entry"
    with atomic_directory(target, keep=lambda p: (p / "done").is_file()) as tmp:
        (tmp / "mine").write_text("1")
        target.mkdir()  # another process finished first
        (target / "done").write_text("1")
    assert sorted(p.name for p in target.iterdir()) == ["done"]
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]  # our temporary folder is gone
    with atomic_directory(target, keep=lambda p: False) as tmp:  # not complete: replaced
        (tmp / "mine").write_text("1")
    assert sorted(p.name for p in target.iterdir()) == ["mine"]
