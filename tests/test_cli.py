"""The `vistok` command: models listing, fid / fid-stats end to end, and one-line errors with non-zero exits."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from vistok import registry


def vistok(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "vistok.cli", *args], capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, fragment: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "Warning" not in ln and "warn(" not in ln]
    assert len(lines) == 1 and fragment in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_models_lists_presets_with_counts():
    out = json.loads(vistok("models", "--json", check=True).stdout)
    rows = {r["name"]: r for r in out["presets"]}
    assert rows["cifar10-net"]["params"] == registry.param_count("cifar10-net") == 1_646_112
    assert "cifar10-net" in out["shipped"]
    text = vistok("models", check=True).stdout
    assert "cifar10-net" in text and "1,646,112" in text


@pytest.mark.parametrize("cmd", [["--help"], ["models", "--help"], ["fid", "--help"], ["fid-stats", "--help"], ["demo", "--help"]])
def test_help_everywhere(cmd):
    assert vistok(*cmd, check=True).stdout.startswith("usage:")


def test_fid_stats_then_fid_json(tmp_path, data_root):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "a.npz", images=rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8))
    vistok("fid-stats", "--input", "cifar10-test", "--num", "200", "--out", str(tmp_path / "ref.npz"), check=True)
    res = json.loads(vistok("fid", "--fake", str(tmp_path / "a.npz"), "--real", str(tmp_path / "ref.npz"), "--json", check=True).stdout)
    assert res["num_fake"] == 64 and res["fid"] > 0 and res["real_stats"].endswith("ref.npz")


def test_user_errors_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(vistok("fid", "--fake", str(tmp_path / "empty"), "--real", "cifar10-test"), 1, "no readable images")
    assert_one_line_error(vistok("fid", "--fake", str(tmp_path / "nope"), "--real", "cifar10-test"), 1, "not an image folder")
    assert_one_line_error(vistok("fid", "--fake", "x", "--real", "y", "--num", "ten"), 2, "invalid int value")
    assert_one_line_error(vistok("fid", "--fake", "x"), 2, "--real")
    assert_one_line_error(vistok("frobnicate"), 2, "invalid choice")
    assert_one_line_error(
        vistok("fid", "--fake", str(tmp_path), "--real", "y", "--extractor", "inception-v3-compat", "--inception-weights", "/no/such.pth"),
        1, "--inception-weights",
    )
