"""The `vistok` command: models listing, fid / fid-stats end to end, and one-line errors with non-zero exits; run
in-process (`vistok.cli.main`): what `--help` imports in a fresh interpreter is tests/test_help.py's subject."""

from __future__ import annotations

import io
import json
import tarfile
import time

import numpy as np
import pytest
from PIL import Image

from vistok import registry

from conftest import assert_one_line_error, vistok


def test_models_lists_presets_with_counts():
    out = json.loads(vistok("models", "--json", check=True).stdout)
    rows = {r["name"]: r for r in out["presets"]}
    assert rows["cifar10-net"]["params"] == registry.param_count("cifar10-net") == 1_646_112
    assert "cifar10-net" in out["shipped"]
    text = vistok("models", check=True).stdout
    assert "cifar10-net" in text and "1,646,112" in text


@pytest.mark.parametrize("cmd", [["--help"], ["models", "--help"], ["fid", "--help"], ["fid-stats", "--help"],
                                 ["demo", "--help"]])
def test_help_everywhere(cmd):
    assert vistok(*cmd, check=True).stdout.startswith("usage:")


def test_fid_stats_then_fid_json(tmp_path, data_root):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "a.npz", images=rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8))
    vistok("fid-stats", "--input", "cifar10-test", "--num", "200", "--out", str(tmp_path / "ref.npz"), check=True)
    res = json.loads(vistok("fid", "--fake", str(tmp_path / "a.npz"), "--real", str(tmp_path / "ref.npz"), "--json",
                            check=True).stdout)
    assert res["num_fake"] == 64 and res["fid"] > 0 and res["real_stats"].endswith("ref.npz")


def test_user_errors_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(vistok("fid", "--fake", str(tmp_path / "empty"), "--real", "cifar10-test"), 1,
                          "no readable images")
    assert_one_line_error(vistok("fid", "--fake", str(tmp_path / "nope"), "--real", "cifar10-test"), 1,
                          "not an image folder")
    assert_one_line_error(vistok("fid", "--fake", "x", "--real", "y", "--num", "ten"), 2, "invalid positive int value")
    assert_one_line_error(vistok("fid", "--fake", "x"), 2, "--real")
    assert_one_line_error(vistok("frobnicate"), 2, "invalid choice")
    assert_one_line_error(
        vistok("fid", "--fake", str(tmp_path), "--real", "y", "--extractor", "inception-v3-compat",
               "--inception-weights", "/no/such.pth"),
        1, "--inception-weights",
    )


def _damaged_npz(folder, valid: bytes) -> dict:
    """Damaged .npz files: a zip header with a truncated body, a flipped CRC-checked body, random bytes."""
    flipped = bytearray(valid)
    for i in range(200, min(len(flipped), 2000)):
        flipped[i] ^= 0x55
    rng = np.random.default_rng(0)
    files = {"truncated": valid[: len(valid) // 2], "crc": bytes(flipped),
             "random": rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()}
    out = {}
    for name, data in files.items():
        out[name] = folder / f"{name}.npz"
        out[name].write_bytes(data)
    return out


def test_damaged_npz_inputs_are_one_line(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, arr_0=np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8))
    bad = _damaged_npz(tmp_path, good.read_bytes())
    # every kind of damage as each FID input is covered in-process by test_fid.py; here the CLI's one line and exit code
    assert_one_line_error(vistok("fid", "--fake", str(good), "--real", str(bad["random"])), 1, str(bad["random"]))
    assert_one_line_error(vistok("fid", "--fake", str(bad["crc"]), "--real", str(good)), 1, "damaged or not an .npz")
    out = tmp_path / "out"
    assert_one_line_error(vistok("encode", "--ckpt", "cifar10-flextok-tiny", "--input", str(bad["crc"]), "--out",
                                 str(tmp_path / "ids.npz")), 1, "damaged or not an .npz")
    assert_one_line_error(vistok("decode", "--ckpt", "cifar10-flextok-tiny", "--tokens", str(bad["truncated"]), "--out",
                                 str(out)), 1, "damaged or not an .npz")
    assert not (tmp_path / "ids.npz").exists() and not out.exists()


def test_bad_numbers_and_outputs_fail_before_work(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, arr_0=np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
    assert_one_line_error(vistok("fid", "--fake", str(good), "--real", str(good), "--num", "-5"), 2,
                          "--num: must be at least 1")
    assert_one_line_error(vistok("fid", "--fake", str(good), "--real", str(good), "--resolution", "0"), 2,
                          "--resolution")
    assert_one_line_error(vistok("fid", "--fake", str(good), "--real", str(good), "--num", "1"), 1,
                          "FID needs at least 2 fake images, got 1")
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file" / "ref.npz", tmp_path):  # under a file; a folder
        assert_one_line_error(vistok("fid-stats", "--input", "/no/such/input", "--out", str(out)), 1, f"--out {out}")
    for cfg in ("inf", "nan"):  # negatives and 0: test_cfg_must_be_finite_and_positive
        assert_one_line_error(vistok("sample", "--ckpt", "cifar10-xar-tiny", "--out", str(tmp_path / "s"), "--cfg",
                                     cfg), 1, "the guidance scale must be a positive number")
    assert not (tmp_path / "s").exists()
    start = time.perf_counter()  # 100,000 images would take hours: the existing file must be refused first
    assert_one_line_error(vistok("sample", "--ckpt", "cifar10-xar-tiny", "--num", "100000", "--out",
                                 str(tmp_path / "file")), 1, "is a file")
    assert time.perf_counter() - start < 120
    assert (tmp_path / "file").read_text() == "x"


def test_vistok_data_points_at_the_users_folder(tmp_path):
    """A CLI run with VISTOK_DATA set reads CIFAR-10 from that folder: a tarball of 6 test images gives 6 images."""
    root = tmp_path / "mydata"
    root.mkdir()
    rng = np.random.default_rng(0)
    with tarfile.open(root / "cifar10-jpeg.tar.gz", "w:gz") as tar:
        for i in range(6):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="JPEG")
            info = tarfile.TarInfo(f"test/{('cat', 'dog')[i % 2]}/{i:04d}.jpg")
            info.size = len(buf.getvalue())
            tar.addfile(info, io.BytesIO(buf.getvalue()))
    env = {"VISTOK_DATA": str(root), "VISTOK_CACHE": str(tmp_path / "cache")}
    vistok("fid-stats", "--input", "cifar10-test", "--out", str(tmp_path / "ref.npz"), check=True, env=env)
    with np.load(tmp_path / "ref.npz") as z:
        assert int(z["num"]) == 6 and str(z["source"]) == "cifar10-test"
    env["VISTOK_DATA"] = str(tmp_path / "elsewhere")
    assert_one_line_error(vistok("fid-stats", "--input", "cifar10-test", "--out", str(tmp_path / "x.npz"), env=env), 1,
                          "elsewhere does not exist")


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), -1.0, 0.0])
def test_cfg_must_be_finite_and_positive(value):
    """Every sampling config (xAR, GPT, FlexTok decoding) refuses a guidance scale that is not a finite positive
    number (inf gave all-black images with exit 0)."""
    from vistok.errors import VistokError
    from vistok.generators.sampling import ARSampleConfig, SampleConfig
    from vistok.tokenizers.flextok_sampling import DecodeConfig

    for config in (SampleConfig, ARSampleConfig, DecodeConfig):
        with pytest.raises(VistokError, match="guidance scale must be a positive number"):
            config(cfg=value)
        assert config(cfg=2.5).cfg == 2.5


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_crafted_inception_weights_print_one_line_and_run_nothing(tmp_path):
    """--inception-weights and the torch hub cache file, in fid and fid-stats: one line, exit 1, no file created."""
    import torch

    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pth"
    torch.save({"fc.weight": _Payload(marker)}, evil)
    cached = tmp_path / "torch_home" / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(evil.read_bytes())
    good = tmp_path / "good.npz"
    np.savez(good, arr_0=np.zeros((4, 32, 32, 3), np.uint8))
    env = {"TORCH_HOME": str(tmp_path / "torch_home")}
    inception = ("--extractor", "inception-v3-compat")
    assert_one_line_error(vistok("fid", "--fake", str(good), "--real", str(good), *inception, "--inception-weights",
                                 str(evil)), 1, "which could run code")
    assert_one_line_error(vistok("fid-stats", "--input", str(good), "--out", str(tmp_path / "s.npz"), *inception,
                                 env=env), 1, "which could run code")
    assert not marker.exists() and not (tmp_path / "s.npz").exists()
