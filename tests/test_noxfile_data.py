"""noxfile.py brings the vision data itself: the Debian package when it can install it (root, apt-get),
else one line naming the command. Stub sessions only: nothing is installed here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INSTALL = "apt-get update && apt-get install -y dataset-fashion-mnist"  # the Debian package's name, by hand


@pytest.fixture(scope="module")
def noxfile():
    spec = importlib.util.spec_from_file_location("noxfile_under_test", ROOT / "noxfile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Stop(Exception):
    pass


class StubSession:
    """Records ``run_install`` calls (the apt step is an install step: it runs under ``--install-only``);
    ``error`` stops like nox's does. ``creates``: the folder an install makes."""

    def __init__(self, creates: Path | None = None):
        self.calls: list[tuple[tuple[str, ...], dict]] = []
        self.creates = creates

    def run_install(self, *args: str, **kwargs) -> None:
        self.calls.append((args, kwargs))
        if "install" in args and self.creates is not None:
            self.creates.mkdir(parents=True)

    def error(self, message: str) -> None:
        raise Stop(message)


def test_present_data_needs_nothing(noxfile, tmp_path):
    assert noxfile.fashion_mnist_step(tmp_path, 0, "/usr/bin/apt-get") == []
    assert noxfile.fashion_mnist_step(tmp_path, 1000, None) == []


def test_root_with_apt_installs_the_package(noxfile, tmp_path):
    step = noxfile.fashion_mnist_step(tmp_path / "fashion-mnist", 0, "/usr/bin/apt-get")
    assert step == [["/usr/bin/apt-get", "update", "-qq"],
                    ["/usr/bin/apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"]]


@pytest.mark.parametrize("euid,apt_get", [(1000, "/usr/bin/apt-get"), (0, None), (1000, None)])
def test_otherwise_one_line_naming_the_command(noxfile, tmp_path, euid, apt_get):
    message = noxfile.fashion_mnist_step(tmp_path / "fashion-mnist", euid, apt_get)
    assert isinstance(message, str) and "\n" not in message
    assert f"sudo sh -c '{INSTALL}'" in message and str(tmp_path / "fashion-mnist") in message


def test_ensure_runs_the_install_then_checks_the_folder(noxfile, tmp_path, monkeypatch):
    root = tmp_path / "fashion-mnist"
    monkeypatch.setattr(noxfile, "DEFAULT_FMNIST_ROOT", str(root))
    monkeypatch.setattr(noxfile.os, "geteuid", lambda: 0)
    monkeypatch.setattr(noxfile.shutil, "which", lambda name: f"/stub/{name}")
    session = StubSession(creates=root)
    noxfile._ensure_fashion_mnist(session)
    assert [c[0] for c in session.calls] == [("/stub/apt-get", "update", "-qq"),
                                            ("/stub/apt-get", "install", "-y", "-qq", "dataset-fashion-mnist")]
    assert all(kw.get("external") is True for _, kw in session.calls)
    noxfile._ensure_fashion_mnist(session)  # now present: nothing more runs
    assert len(session.calls) == 2


def test_ensure_stops_when_it_cannot_install_or_the_install_brings_nothing(noxfile, tmp_path, monkeypatch):
    root = tmp_path / "fashion-mnist"
    monkeypatch.setattr(noxfile, "DEFAULT_FMNIST_ROOT", str(root))
    monkeypatch.setattr(noxfile.shutil, "which", lambda name: f"/stub/{name}")
    monkeypatch.setattr(noxfile.os, "geteuid", lambda: 1000)
    session = StubSession()
    with pytest.raises(Stop, match="sudo sh -c"):
        noxfile._ensure_fashion_mnist(session)
    assert session.calls == []
    monkeypatch.setattr(noxfile.os, "geteuid", lambda: 0)
    with pytest.raises(Stop, match="still missing"):
        noxfile._ensure_fashion_mnist(StubSession(creates=None))


def test_sessions_that_run_vision_sweeps_ensure_the_data(noxfile):
    import inspect

    for name in ("tests", "reproduce", "ablation_calibration", "ablation_tp"):
        source = inspect.getsource(getattr(noxfile, name))
        assert source.index("_ensure_fashion_mnist(session)") < source.index("_install(session"), name


def test_ci_has_no_special_case():
    assert "apt-get install" not in (ROOT / ".ci" / "run").read_text()  # nox installs it
