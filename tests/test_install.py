"""The package as users install it (pyproject.toml; no one module): a wheel (not an editable
install) in a fresh venv, used from a folder outside the checkout. Catches what an editable install
hides, e.g. files the wheel does not ship (the configs once were found next to the source tree, and
`xdc demo` failed after install)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import REPO

import xdc

pytestmark = pytest.mark.slow


def run(command: list, cwd: Path, timeout: float = 540) -> subprocess.CompletedProcess:
    # Without PYTHONPATH: the tests may run with PYTHONPATH=src, which would put the checkout first.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed; its dependencies are this interpreter's (offline)."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"  # a copy, so that the build writes nothing into the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", root / "wheels", source], root)
    (wheel,) = (root / "wheels").glob("xdc-*.whl")
    shipped = zipfile.ZipFile(wheel).namelist()
    assert "xdc/configs/demo.yaml" in shipped and "xdc/configs/pretrain/cpu.yaml" in shipped

    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], root)
    site = Path(run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    root).stdout.strip())
    # torch, faiss, PyAV, ... from this interpreter: appended to sys.path after the venv's own
    # site-packages (a path added by a .pth file does not run that folder's .pth files, so an
    # editable xdc there stays out).
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "dependencies.pth").write_text("\n".join(sorted(deps)) + "\n")
    run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--no-deps",
         "--no-index", wheel], root)
    return venv


@pytest.fixture
def outside(tmp_path) -> Path:
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    assert REPO not in folder.parents
    return folder


def test_installed_package_is_the_wheel(venv, outside):
    assert run([venv / "bin" / "xdc", "--version"], outside).stdout == f"xdc {xdc.__version__}\n"
    code = "import xdc.config; print(xdc.config.__file__); print(xdc.config.resolve_config('demo'))"
    module, demo_yaml = run([venv / "bin" / "python", "-c", code], outside).stdout.split()
    assert Path(module).is_relative_to(venv) and Path(demo_yaml).is_relative_to(venv)


def test_installed_demo_quick(venv, outside):
    run([venv / "bin" / "xdc", "demo", "--quick", "--out", "q"], outside, timeout=580)
    assert (outside / "q" / "report.html").stat().st_size > 1000
    assert (outside / "q" / "results.json").is_file() and (outside / "q" / "seed0" / "xdc" / "run" / "summary.json").is_file()


def test_installed_pretrain_without_config(venv, outside, shared_videos):
    xdc = venv / "bin" / "xdc"
    run([xdc, "scan", shared_videos, "-o", "m.csv", "--workers", "1"], outside)
    shrink = ["iterations=1", "optim.epoch_size=8", "optim.batch_size=4", "optim.total_epochs=1",
              "optim.warmup_epochs=0", "optim.step_epochs=1", "data.num_workers=0", "data.eval_clips=1",
              "data.frames=4", "data.short_side=32", "data.crop=28", "model.width=4", "cluster.k_video=2",
              "cluster.k_audio=2", "cluster.k_joint=2"]
    result = run([xdc, "pretrain", "--data", "m.csv", "--out", "run", *shrink], outside)
    name = "dc_kinetics.yaml" if torch.cuda.is_available() else "cpu.yaml"
    packaged = Path(result.stderr.split("no --config given: using ", 1)[1].split("\n", 1)[0])
    assert packaged.is_relative_to(venv) and packaged.parts[-3:] == ("configs", "pretrain", name)
    assert (outside / "run" / "checkpoints" / "iteration_00.pt").is_file()
    saved = (outside / "run" / "config.yaml").read_text()
    assert "k_video: 2" in saved  # the overrides went on top
    if name == "cpu.yaml":
        assert "first_features: handcrafted" in saved  # cpu.yaml's own setting (the default is random)
