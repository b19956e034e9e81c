"""The jobs behind the `vistok` command, called from Python (`vistok.api.jobs`, `vistok.api.em`): each writes the files
the command writes, its images, ids and scores equal the typed objects' own methods (`Generator.sample`,
`Tokenizer.reconstruct/encode/decode`, `Segmenter.segment`, `vistok.em.evaluate`: the independent references), and a
mistake is one line before any work. In-process, on the tiny shipped models with few flow steps."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vistok
from vistok import cli
from vistok.api import em as em_jobs, jobs
from vistok.engine import dist
from vistok.errors import VistokError


@pytest.fixture(scope="module")
def gen():
    return vistok.load("cifar10-xar-tiny")


@pytest.fixture(scope="module")
def tok():
    return vistok.load("cifar10-flextok-tiny")


def pictures(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def folder_images(folder: Path, n: int) -> np.ndarray:
    return np.stack([np.asarray(Image.open(folder / f"{i:06d}.png")) for i in range(n)])


# ---------------------------------------------------------------------------------------------------------- sample
def test_sample_folder_writes_what_the_cli_writes_and_the_generator_samples(gen, tmp_path: Path) -> None:
    run = jobs.sample_folder(gen, tmp_path / "api", [3, "5", 3], seed=2, steps=2, batch_size=2)
    argv = ["sample", "--ckpt", "cifar10-xar-tiny", "--labels", "3,5", "3", "--seed", "2", "--steps", "2",
            "--out", str(tmp_path / "cli"), "--device", "cpu", "--quiet"]
    assert cli.main(argv) == 0
    ref = gen.sample([3, 5, 3], seed=2, steps=2)  # (3, 32, 32, 3), batch size 64: images do not depend on it
    for name in ("api", "cli"):
        out = tmp_path / name
        assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png", "000002.png", "grid.png",
                                                         "samples.npz"]
        with np.load(out / "samples.npz") as z:
            assert np.array_equal(z["arr_0"], ref) and z["labels"].tolist() == [3, 5, 3]
        assert np.array_equal(folder_images(out, 3), ref)
    assert (tmp_path / "api" / "grid.png").read_bytes() == (tmp_path / "cli" / "grid.png").read_bytes()
    assert run.num == 3 and run.is_main and run.world_size == 1 and run.settings.steps == 2
    assert run.written == [tmp_path / "api" / "grid.png", tmp_path / "api" / "samples.npz"]
    assert run.summary().startswith("3 images in ") and "steps 2" in run.summary() and "seed 2, cpu)" in run.summary()


def test_sample_folder_shards_over_ranks_into_the_files_of_one_process(gen, tmp_path: Path, monkeypatch) -> None:
    """Two ranks (threads standing in for torchrun's processes: each sees its own rank, barriers are shared): every
    rank writes only its share of the per-image seeds, rank 0 merges, the files equal one process's."""
    ref = gen.sample(num=5, seed=4, steps=2)  # one process, one batch
    barrier, local = threading.Barrier(2, timeout=120), threading.local()
    monkeypatch.setattr(dist, "setup", lambda device="auto": dist.DistEnv(local.rank, 2, 0, gen.device))
    monkeypatch.setattr(dist, "barrier", barrier.wait)
    for name, value in {"WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "t", "MASTER_ADDR": "h", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(name, value)  # one torchrun job: its ranks share the --out's writer lock
    runs, errors, shares = {}, [], {}
    real_batches = type(gen).batches

    def batches(self, labels, **kw):  # what each rank is asked to generate
        shares[local.rank] = (list(labels), kw["first_index"])
        return real_batches(self, labels, **kw)

    monkeypatch.setattr(type(gen), "batches", batches)

    def rank(r: int) -> None:
        local.rank = r
        try:
            runs[r] = jobs.sample_folder(gen, tmp_path / "two", num=5, seed=4, steps=2, batch_size=2)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert shares == {0: ([0, 1], 0), 1: ([2, 3, 4], 2)}  # labels 0..4 round-robin, split 2 + 3
    assert runs[0].is_main and runs[0].written and not runs[1].is_main and runs[1].written == []
    assert runs[0].world_size == 2 and "2 processes" in runs[0].summary()
    with np.load(tmp_path / "two" / "samples.npz") as z:
        assert np.array_equal(z["arr_0"], ref) and z["labels"].tolist() == [0, 1, 2, 3, 4]
    assert np.array_equal(folder_images(tmp_path / "two", 5), ref)
    assert not (tmp_path / "two" / ".shards").exists()


def test_sample_folder_refuses_mistakes_before_any_file(gen, tok, tmp_path: Path) -> None:
    with pytest.raises(VistokError, match="is a Tokenizer, but `vistok sample` needs a Generator"):
        jobs.sample_folder(tok, tmp_path / "a")
    with pytest.raises(VistokError, match="^--top-k does not apply"):  # named as the caller spells it
        jobs.sample_folder(gen, tmp_path / "b", [1], top_k=3, spelled={"top_k": "--top-k"})
    with pytest.raises(VistokError, match="cfg"):
        jobs.sample_folder(gen, tmp_path / "c", [1], cfg=float("nan"))
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == []


# ----------------------------------------------------------------------------------------------------- reconstruct
def test_reconstruct_report_from_python_equals_the_tokenizer_and_the_cli(tok, tmp_path: Path) -> None:
    from vistok.metrics.recon import image_metrics

    images = pictures(3)
    report = jobs.reconstruct_report(tok, images, tmp_path / "api", tokens=[1, 4], steps=2, seed=1, fid=False,
                                     json_path=tmp_path / "m.json", grid_rows=2)
    ref = tok.reconstruct(images, [1, 4], seed=1, steps=2)
    assert not np.array_equal(ref[1], ref[4])
    for k in (1, 4):
        with np.load(tmp_path / "api" / f"k{k:03d}.npz") as z:
            assert np.array_equal(z["arr_0"], ref[k])
        assert np.array_equal(folder_images(tmp_path / "api" / f"k{k:03d}", 3), ref[k])
        assert report.metrics["metrics"][str(k)] == pytest.approx(image_metrics(images, ref[k]))
    written = (tmp_path / "api" / "metrics.json").read_bytes()
    assert (tmp_path / "m.json").read_bytes() == written
    assert report.metrics["tokens"] == [1, 4] and report.metrics["steps"] == 2 and report.metrics["fid_real"] is None
    assert report.metrics["num"] == 3 and "fid_inputs" not in report.metrics
    lines = report.summary().splitlines()
    assert lines[0].split() == ["k", "MSE", "PSNR", "SSIM"] and [line.split()[0] for line in lines[1:3]] == ["1", "4"]
    np.savez(tmp_path / "in.npz", arr_0=images)  # the command on the same images: the same files
    assert cli.main(["reconstruct", "--ckpt", "cifar10-flextok-tiny", "--input", str(tmp_path / "in.npz"), "--tokens",
                     "1,4", "--steps", "2", "--seed", "1", "--no-fid", "--grid-rows", "2",
                     "--out", str(tmp_path / "cli"),
                     "--device", "cpu", "--quiet"]) == 0
    for name in ("k001.npz", "k004.npz", "grid.png"):
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "api" / name).read_bytes(), name


def test_prefix_lists_from_text_or_integers(tok, tmp_path: Path) -> None:
    assert jobs.prefix_list(None, 16) == [1, 2, 4, 8, 16] and jobs.prefix_list("", 6) == [1, 2, 4, 6]
    assert jobs.prefix_list("3, 8", 8) == [3, 8] == jobs.prefix_list([3, 8], 8) == jobs.prefix_list(np.array([3, 8]), 8)
    assert jobs.prefix_list(5, 8) == [5]
    for bad, message in (("0,2", "--tokens '0,2': every k must lie in 1..8"),
                         ("a", "--tokens 'a' must be a comma list"),
                         ([9], r"tokens \[9\]: every k must lie in 1..8"), ([2.5], "must be a comma list"),
                         ([], "1..8")):
        with pytest.raises(VistokError, match=message):
            jobs.prefix_list(bad, 8)
    with pytest.raises(VistokError, match="every k must lie in 1..16"):  # before any file or image is made
        jobs.reconstruct_report(tok, pictures(1), tmp_path / "r", tokens="17", fid=False)
    assert not (tmp_path / "r").exists()


# -------------------------------------------------------------------------------------------------- encode, decode
def test_encode_file_keeps_each_images_own_k_and_decode_folder_decodes_it(tok, tmp_path: Path) -> None:
    images = pictures(5, seed=1)
    full = tok.encode(images, seed=0)  # (5, K)
    made = jobs.encode_file(tok, images, tmp_path / "t.npz", tokens="2,4")
    with np.load(tmp_path / "t.npz") as z:
        ids, k = z["ids"], z["k"]
        assert "labels" not in z.files and ids.dtype == np.int32
    assert k.tolist() == [2, 4, 2, 4, 2] and ids.shape == (5, 4) and made.shape == (5, 4)
    for i in range(5):
        assert np.array_equal(ids[i, :k[i]], full[i, :k[i]]) and not ids[i, k[i]:].any()
    assert made.summary() == (f"5 images -> {tmp_path / 't.npz'}: ids (5, 4) int32 (vocabulary {tok.vocab_size}), "
                              "k per image in {2, 4}")
    run = jobs.decode_folder(tok, tmp_path / "t.npz", tmp_path / "dec", steps=2, seed=3)
    ref = tok.decode(full, k, seed=3, steps=2)
    with np.load(tmp_path / "dec" / "samples.npz") as z:
        assert np.array_equal(z["arr_0"], ref)
    assert run.num == 5 and run.settings.steps == 2
    jobs.encode_file(tok, images[:2], tmp_path / "all.npz")  # default: every image keeps all K tokens
    with np.load(tmp_path / "all.npz") as z:
        assert np.array_equal(z["ids"], full[:2]) and z["k"].tolist() == [tok.registers] * 2


# ------------------------------------------------------------------------------------------------------------- EM
def test_segment_file_equals_the_segmenter_and_the_baseline(tmp_path: Path) -> None:
    from vistok.em.baseline import distance_watershed
    from vistok.em.metrics import evaluate
    from vistok.em.synthetic import synthetic_em_volume
    from vistok.em.volumes import read_volume

    volume, truth = synthetic_em_volume((16, 64, 64))
    np.save(tmp_path / "raw.npy", volume)
    np.save(tmp_path / "gt.npy", truth)
    segmenter = vistok.load("em-segmamba-tiny-scratch")
    run = em_jobs.segment_file(segmenter, tmp_path / "raw.npy", f"{tmp_path}/seg.h5:ids", device="cpu")
    seg = read_volume(f"{tmp_path}/seg.h5:ids")
    assert seg.dtype == np.uint32 and np.array_equal(seg, segmenter.segment(volume))
    assert run.segments == len(np.unique(seg)) and run.shape == volume.shape and "waterz" in run.how
    base = em_jobs.segment_file(None, tmp_path / "raw.npy", tmp_path / "base.npy", baseline=True, per_slice=True)
    assert np.array_equal(np.load(tmp_path / "base.npy"), distance_watershed(volume, per_slice=True))
    assert "per slice" in base.summary()
    scores = em_jobs.evaluate_files(f"{tmp_path}/seg.h5:ids", tmp_path / "gt.npy")
    assert scores == evaluate(seg, truth, ignore_labels=(0,))


def test_segment_file_mistakes_are_one_line_before_the_model_loads(tmp_path: Path, monkeypatch) -> None:
    np.save(tmp_path / "raw.npy", np.zeros((4, 8, 8), np.uint8))
    np.save(tmp_path / "empty.npy", np.zeros((0, 8, 8), np.uint8))
    monkeypatch.setattr(jobs, "load_as", lambda *a, **k: pytest.fail("the model loaded before the mistake was seen"))
    raw, ckpt = tmp_path / "raw.npy", "em-segmamba-tiny-scratch"
    for kwargs, message in (
        (dict(source=None), "either --ckpt"), (dict(baseline=True), "not both"),
        (dict(workers=2), "zarr"), (dict(block=(8, 8, 8)), "--block needs --workers"),
        (dict(workers=-1), "must be >= 0"), (dict(worker_command="ssh x"), "--worker-command needs --workers"),
        (dict(input=tmp_path / "empty.npy"), "is empty"),
    ):
        args = {"source": ckpt, "input": raw, "out": tmp_path / "o.h5", **kwargs}
        with pytest.raises(VistokError, match=message):
            em_jobs.segment_file(args.pop("source"), args.pop("input"), args.pop("out"), device="cpu", **args)
    assert not (tmp_path / "o.h5").exists()
    np.save(tmp_path / "float.npy", np.zeros((4, 8, 8), np.float32))
    with pytest.raises(VistokError, match="--seg volume has dtype float32; labels must be integers"):
        em_jobs.evaluate_files(tmp_path / "float.npy", raw)


# ---------------------------------------------------------------------------------------------------------- models
def test_preset_table_lists_every_preset_with_its_count() -> None:
    from vistok import registry

    table = jobs.preset_table().result
    assert [r["name"] for r in table["presets"]] == list(registry.presets())
    assert table["shipped"] == sorted(registry.shipped_models()) and "cifar10-xar-tiny" in table["shipped"]
    row = next(r for r in table["presets"] if "tiny" in r["name"])
    preset = registry.get_preset(row["name"])  # built for real: the table counts on the meta device
    assert row["params"] == sum(p.numel() for p in registry.build(preset.family, preset.config).parameters())


def test_fid_stats_then_fid_of_the_same_images_is_zero(tmp_path: Path) -> None:
    from vistok.metrics import fid

    np.savez(tmp_path / "a.npz", arr_0=pictures(12))
    made = jobs.fid_stats(tmp_path / "a.npz", tmp_path / "s.npz", num=10)
    assert made.result["num"] == 10 and made.summary() == (f"wrote {tmp_path / 's.npz'}: cifar10-net statistics of 10 "
                                                           f"images from {tmp_path / 'a.npz'}")
    same = jobs.fid(tmp_path / "a.npz", tmp_path / "s.npz", num=10)
    assert same.result == fid.calculate(tmp_path / "a.npz", tmp_path / "s.npz", num=10)
    assert abs(same.result["fid"]) < 1e-3 and same.summary().startswith(f"FID {same.result['fid']:.4f}  (10 images")
