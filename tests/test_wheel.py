"""The wheel carries the shipped models: build it from a copy of the source tree, install it into a fresh venv on top
of the current environment (no dependencies fetched) and load a shipped model from the installed package alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "vistok", "assets")


@pytest.mark.slow
def test_wheel_installs_the_shipped_models(tmp_path) -> None:
    src = tmp_path / "src"  # a copy, so the build never touches (or races on) the working tree's build/ folder
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VISTOK_ASSETS")}
    run = dict(env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist"), str(src)], **run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("vistok-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for model in ("cifar10-xar-tiny", "cifar10-flextok-tiny", "cifar10-net", "em-segmamba-tiny-scratch"):
        assert {f"vistok/shipped/{model}/config.json", f"vistok/shipped/{model}/model.safetensors"} <= names, model
    assert "vistok/shipped/cifar10-flextok-xar-tiny/tokenizer/model.safetensors" in names
    assert "vistok/shipped/fid_stats/cifar10-train-cifar10-net.npz" in names

    # A fresh venv on top of the environment running the tests: the wheel is installed into it first (pip sees an empty
    # venv), then a path file adds this environment's site-packages for torch and the other dependencies
    # (`--system-site-packages` would expose the base interpreter instead, which may have no torch). The venv's own
    # site-packages comes first on sys.path, so `vistok` is the installed wheel; this environment's editable install
    # stays out (path files inside a path-file entry are not read).
    venv = tmp_path / "venv"
    assert subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], **run).returncode == 0
    python = venv / "bin" / "python"
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                           "--no-index", str(wheel)], **run)
    assert proc.returncode == 0, proc.stderr[-2000:]
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          **run).stdout.strip()
    outer = sorted({sysconfig.get_paths()[k] for k in ("purelib", "platlib")})
    (Path(site) / "outer-environment.pth").write_text("\n".join(outer) + "\n")
    script = ("import json, vistok, vistok.io.sources as a; g = vistok.load('cifar10-xar-tiny'); "
              "print(json.dumps([vistok.__file__, str(a.assets_dir()), type(g).__name__, "
              "list(g.sample([1], steps=1).shape), sorted(a.shipped_models())]))")
    proc = subprocess.run([str(python), "-c", script], **{**run, "env": {**env, "OMP_NUM_THREADS": "1"}})
    assert proc.returncode == 0, proc.stderr[-2000:]
    where, assets, kind, shape, shipped = json.loads(proc.stdout.strip().splitlines()[-1])
    assert where.startswith(str(venv)) and assets == str(Path(where).parent / "shipped")  # the installed copy, not REPO
    assert kind == "Generator" and shape == [1, 32, 32, 3] and "cifar10-flextok-xar-tiny" in shipped
