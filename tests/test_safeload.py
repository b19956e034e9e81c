"""Reading user-supplied pickles never runs code: weights_only with an explicit allow-list, one-line errors."""

from __future__ import annotations

import argparse
import os
import random

import pytest
import torch

from vistok.errors import VistokError
from vistok.io.safeload import load_pickle, sha256_file


class _RunsCode:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):  # unpickling calls os.system: a crafted file that would create `marker`
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_pickle_runs_nothing_and_says_one_line(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": _RunsCode(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(VistokError) as err:
        load_pickle(tmp_path / "evil.pt")
    assert not marker.exists()
    assert "system" in str(err.value) and "\n" not in str(err.value)


def test_allow_list_admits_only_named_classes(tmp_path):
    torch.save({"args": argparse.Namespace(lr=1e-4), "w": torch.arange(3.0)}, tmp_path / "ckpt.pth")
    with pytest.raises(VistokError, match="argparse.Namespace"):
        load_pickle(tmp_path / "ckpt.pth")
    blob = load_pickle(tmp_path / "ckpt.pth", allow=[argparse.Namespace])
    assert blob["args"].lr == 1e-4 and torch.equal(blob["w"], torch.arange(3.0))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_garbage_and_missing_files_are_one_line(tmp_path):
    """300 seeded blobs of random bytes (about one in sixteen once made the unpickler raise a bare IndexError) and a
    missing file: each a one-line VistokError naming the file."""
    rng = random.Random(0)
    for i in range(300):
        (tmp_path / f"junk{i}.pt").write_bytes(rng.randbytes(256))
    for path in [*(tmp_path / f"junk{i}.pt" for i in range(300)), tmp_path / "missing.pt"]:
        with pytest.raises(VistokError) as err:
            load_pickle(path)
        assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_sha256_file(tmp_path):
    (tmp_path / "x").write_bytes(b"abc")
    assert sha256_file(tmp_path / "x") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
