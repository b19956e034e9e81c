"""The README and docs/ as tested documents: every Python block of the README runs on its own and does what its
comments say (and what the CLI writes is the same bits); the README's command block and its demo run as written from a
folder laid out like the repository root, printing what the README shows; every other `vistok ...` line of the README
and docs/ parses with the real parser and every training line resolves its config; the README's command table is
`vistok --help`'s, and every repository path, test name and Python name the documents mention exists."""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import importlib
import io
import itertools
import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vistok import cli
from vistok.errors import VistokError

from conftest import load_train_script, vistok

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
KINDS = ("Generator", "Tokenizer", "PairedGenerator", "Segmenter", "FeatureNet")  # one Python block each


def blocks(text: str, lang: str) -> list[str]:
    """The fenced code blocks of one language, in order."""
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.S | re.M)


def python_blocks() -> dict[str, str]:
    """The README's Python blocks by the model kind named in bold just above each (`**Generator** (...)`)."""
    section = README.read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    found = re.findall(r"^\*\*(\w+)\*\*[^\n]*\n\n```python\n(.*?)^```", section, re.S | re.M)
    return dict(found)


def jobs_block() -> str:
    """The README's Python block of whole jobs (after "**Saving, sharing, whole jobs.**" and its paragraph)."""
    section = README.read_text().split("**Saving, sharing, whole jobs.**", 1)[1]
    return blocks(section, "python")[0]


# ------------------------------------------------------------------------------------------ the Python examples
@pytest.fixture(scope="module")
def readme(tmp_path_factory, data_root) -> dict[str, dict]:
    """Each README Python block run as written, on its own, in a fresh folder (one thread, as the suite runs):
    its variables and what it printed, by kind ("jobs": the block of whole jobs)."""
    here, threads, out = Path.cwd(), torch.get_num_threads(), {}
    os.chdir(tmp_path_factory.mktemp("readme"))
    torch.set_num_threads(1)
    try:
        for kind, code in {**python_blocks(), "jobs": jobs_block()}.items():
            namespace, printed = {}, io.StringIO()
            with contextlib.redirect_stdout(printed):
                exec(compile(code, f"README.md ({kind})", "exec"), namespace)  # noqa: S102 - the test's point
            out[kind] = {**namespace, "printed": printed.getvalue(), "cwd": Path.cwd()}
    finally:
        os.chdir(here)
        torch.set_num_threads(threads)
    return out


def test_the_readme_has_one_python_example_per_model_kind() -> None:
    assert tuple(python_blocks()) == KINDS
    # and every Python block of the README is one of those or the block of whole jobs: none goes unrun
    assert blocks(README.read_text(), "python") == [*python_blocks().values(), jobs_block()]
    assert len(README.read_text().splitlines()) < 300  # a guide: results live in docs/


def test_the_generator_example(readme) -> None:
    from vistok.api import Generator, PairedGenerator

    ns = readme["Generator"]
    gen, images, quick = ns["gen"], ns["images"], ns["quick"]
    assert isinstance(gen, Generator) and not isinstance(gen, PairedGenerator)
    assert gen.settings().steps == 50 and gen.settings().cfg == 2.0  # the comment's export defaults
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8 and images.std() > 10
    assert quick.shape == images.shape and not np.array_equal(quick, images)  # other steps and cfg, other images
    # torch in, numpy out; the same seed gives the same bits, another seed other images
    assert np.array_equal(gen.sample(labels=torch.tensor([3, 5]), seed=0), images)
    fast = dict(steps=10, cfg=1.0)  # as `quick`, to keep the test cheap
    assert np.array_equal(gen.sample(labels=[3, 5], seed=0, **fast), quick)  # "cat", "dog" are the classes 3, 5
    assert not np.array_equal(gen.sample(labels=[3, 5], seed=1, **fast), quick)
    assert ns["printed"].splitlines() == ["0 (2, 32, 32, 3)", "2 (2, 32, 32, 3)"]  # as the comment says
    assert np.array_equal(np.asarray(Image.open(ns["cwd"] / "cat.png")), images[0])


def test_the_tokenizer_example(readme) -> None:
    from vistok.api import Tokenizer

    ns = readme["Tokenizer"]
    tok, photos, ids, recon, by_k = ns["tok"], ns["photos"], ns["ids"], ns["recon"], ns["by_k"]
    assert isinstance(tok, Tokenizer) and tok.registers == 16 and tok.vocab_size == 64_000
    assert photos.shape == (4, 32, 32, 3) and photos.dtype == np.uint8 and len(set(ns["labels"].tolist())) > 1
    assert ids.shape == (4, 16) and ids.dtype == np.int64 and ((ids >= 0) & (ids < 64_000)).all()
    assert recon.shape == (4, 32, 32, 3) and recon.dtype == np.uint8
    assert np.array_equal(tok.encode(torch.from_numpy(photos).permute(0, 3, 1, 2)), ids)  # NCHW works too
    assert sorted(by_k) == [1, 4, 16] and all(v.shape == photos.shape for v in by_k.values())
    mse = {k: np.mean((v.astype(np.float64) - photos) ** 2) for k, v in by_k.items()}
    assert mse[16] < mse[4] < mse[1]  # more tokens, closer to the image: FlexTok's ordering
    lat, same, noise = ns["lat"], ns["same"], ns["noise"]
    assert lat.shape == (4, *tok.latent_shape) and lat.dtype == np.float32
    assert np.array_equal(same, tok.decode(ids, k=4, steps=10, noise=noise))  # the given noise, not a seed
    assert not np.array_equal(same, tok.decode(ids, k=4, steps=10, seed=0))
    assert ns["ids_again"].shape == ids.shape and ns["ids_again"].dtype == np.int64


def test_the_paired_generator_example(readme) -> None:
    from vistok.api import PairedGenerator

    ns = readme["PairedGenerator"]
    paired, gpt = ns["paired"], ns["gpt"]
    assert isinstance(paired, PairedGenerator) and paired.kind == "xAR" and gpt.kind == "GPT"
    assert paired.valid_ks() == [1, 2, 4, 8, 16] and gpt.valid_ks() == list(range(1, 17))
    assert ns["imgs"].shape == (2, 32, 32, 3) and ns["imgs"].dtype == np.uint8
    batch = ns["batch"]
    assert batch["images"].shape == (2, 32, 32, 3) and batch["ids"].shape == (2, 2) and batch["ids"].dtype == np.int32
    assert ns["ships"].shape == (2, 32, 32, 3) and not np.array_equal(ns["ships"][0], ns["ships"][1])


def test_the_segmenter_example(readme) -> None:
    from vistok.api import Segmenter
    from vistok.em.metrics import evaluate

    ns = readme["Segmenter"]
    seg, volume, truth, scores = ns["seg"], ns["volume"], ns["truth"], ns["scores"]
    assert isinstance(ns["vistok"].load("em-segmamba-tiny-scratch"), Segmenter)
    assert seg.shape == volume.shape == truth.shape == (16, 64, 64) and seg.dtype == np.uint32
    assert len(np.unique(seg)) > 1
    one_segment = evaluate(np.ones_like(seg), truth)  # the trivial answer merges everything
    assert scores.voi < one_segment.voi and scores.arand < one_segment.arand
    assert scores.voi == pytest.approx(scores.voi_split + scores.voi_merge)
    affs = ns["affs"]
    assert affs.shape == (3, *volume.shape) and affs.dtype == np.float32 and 0 <= affs.min() <= affs.max() <= 1
    assert np.array_equal(ns["same"], seg)  # segment = affinities, then the post-processing


def test_the_feature_net_example(readme) -> None:
    from vistok.api import FeatureNet

    ns = readme["FeatureNet"]
    assert isinstance(ns["net"], FeatureNet)
    assert ns["features"].shape == (300, 256) and ns["features"].dtype == np.float32
    assert 0.8 < ns["accuracy"] < 0.95  # "about 0.88"
    assert 5 < ns["score"] < 100  # real test images against the train statistics: far below the demo's blurred 264.9


def test_the_jobs_example(readme) -> None:
    """save() writes an export that loads anywhere; jobs.sample_folder is `vistok sample` (the same images as the
    API), its summary is what the comment shows; reconstruct_report's metrics are what it printed."""
    import vistok

    ns = readme["jobs"]
    cwd, gen, run, rep = ns["cwd"], ns["gen"], ns["run"], ns["rep"]
    assert sorted(p.name for p in (cwd / "my-xar").iterdir()) >= ["config.json", "model.safetensors"]
    api = gen.sample(labels=[3, 5], steps=10, seed=0)
    assert np.array_equal(vistok.load(cwd / "my-xar").sample(labels=[3, 5], steps=10, seed=0), api)  # moved: the same
    with np.load(cwd / "samples" / "samples.npz") as z:
        assert np.array_equal(z["arr_0"], api)
    printed = ns["printed"].splitlines()
    assert printed[0] == run.summary() and re.match(r"2 images in [\d.]+ s \(steps 10, .*\) -> samples/grid\.png, ",
                                                    printed[0]), printed
    psnr = rep.metrics["metrics"]["4"]["psnr"]
    assert printed[1] == str(psnr) and 5 < psnr < 40 and rep.metrics["num"] == 8
    assert rep.metrics["metrics"]["4"]["mse"] < rep.metrics["metrics"]["1"]["mse"]  # 4 tokens beat 1


NUMBER = re.compile(r"\d+\.(\d+)")


def same_up_to_the_last_digit(got: str, want: str) -> bool:
    """The same words, and numbers that differ by at most one unit of the last digit `want` shows."""
    if NUMBER.sub("#", got) != NUMBER.sub("#", want):
        return False
    return all(abs(float(a.group()) - float(b.group())) <= 1.01 * 10 ** -len(b.group(1))
               for a, b in zip(NUMBER.finditer(got), NUMBER.finditer(want), strict=True))


def checkout_like(root: Path, data_root: Path) -> Path:
    """`root/main`, a folder laid out like the repository root, with the data at `../shared/data` as the README
    assumes; returns `root/main`."""
    (root / "main").mkdir()
    (root / "shared").mkdir()
    (root / "shared" / "data").symlink_to(data_root, target_is_directory=True)
    return root / "main"


DEMO_XAR = 20  # the demo's xAR samples here (it draws 300: 50 SDE steps each, most of its 33 s)


def test_the_demo_prints_what_the_readme_shows(tmp_path, monkeypatch, data_root) -> None:
    """`vistok demo`, the README's first command, from a repository-like folder: every line it prints is the README's
    (the FIDs of real, blurred and noise images, the FlexTok MSE ladder, the files), except that it samples DEMO_XAR
    xAR images instead of 300 (that line's format is the README's; its FID on 100 samples is the golden of the
    command block's fid line)."""
    from vistok import demo

    real_demo = demo._demo
    monkeypatch.setattr(demo, "_demo", lambda out, num, root, xar_num: real_demo(out, num, root, DEMO_XAR))
    monkeypatch.chdir(checkout_like(tmp_path, data_root))
    first = blocks(README.read_text(), "bash")[0].splitlines()[0]
    assert first.startswith("pip install -e . && VISTOK_DATA=../shared/data vistok demo ")
    words = shlex.split(first, comments=True)
    result = vistok(*words[words.index("vistok") + 1:], env={"VISTOK_DATA": "../shared/data"})  # the line's VAR=
    assert result.returncode == 0, result.stderr
    shown = blocks(README.read_text().split("The demo needs no download", 1)[1], "text")[0].splitlines()
    printed = result.stdout.splitlines()
    assert len(printed) == len(shown) == 7
    xar = re.escape(shown[5]).replace("300\\ samples", f"{DEMO_XAR}\\ samples").replace("187\\.381", r"[\d.]+")
    for got, want in zip(printed[:5], shown[:5], strict=True):  # the same text, the same numbers to the last digit
        assert same_up_to_the_last_digit(got, want), (got, want)  # shown (another CPU may round one the other way)
    assert re.fullmatch(xar, printed[5]) and printed[6] == shown[6], printed
    fids = [float(line.rsplit("= ", 1)[1]) for line in printed[1:4]]
    assert 3 * fids[0] < fids[1] < fids[2]  # real far below blurred, below noise
    written = {p.name for p in Path("demo_out").iterdir()}
    assert {"demo.json", "fid_sets.png", "flextok_recon.png", "xar_samples.png"} <= written, written


# ------------------------------------------------------------------- the same bits from the README and the CLI
def cli_ok(*argv: str) -> None:
    assert cli.main([*argv]) == 0, argv


def test_cli_sample_equals_the_readme_samples(readme, tmp_path) -> None:
    images, imgs = readme["Generator"]["images"], readme["PairedGenerator"]["imgs"]
    cli_ok("sample", "--ckpt", "cifar10-xar-tiny", "--labels", "3", "5", "--seed", "0", "--out", str(tmp_path / "x"),
           "--device", "cpu", "--quiet")
    with np.load(tmp_path / "x" / "samples.npz") as z:
        assert np.array_equal(z["arr_0"], images) and z["labels"].tolist() == [3, 5]
    cli_ok("sample", "--ckpt", "cifar10-flextok-xar-tiny", "--labels", "0,1", "--tokens", "8", "--seed", "0",
           "--out", str(tmp_path / "p"), "--device", "cpu", "--quiet")
    with np.load(tmp_path / "p" / "samples.npz") as z:
        assert np.array_equal(z["arr_0"], imgs)
    with np.load(tmp_path / "p" / "tokens.npz") as z:  # written by data.tokens, readable by `vistok decode`
        assert z["ids"].shape == (2, 8) and z["k"].tolist() == [8, 8] and z["labels"].tolist() == [0, 1]


def test_cli_decode_and_reconstruct_equal_the_readme(readme, tmp_path) -> None:
    ns = readme["Tokenizer"]
    tok, ids, images = ns["tok"], ns["ids"], readme["Generator"]["images"]
    np.savez(tmp_path / "ids.npz", ids=ids.astype(np.int32), k=np.full(len(ids), 4, np.int32))
    cli_ok("decode", "--ckpt", "cifar10-flextok-tiny", "--tokens", str(tmp_path / "ids.npz"), "--seed", "0",
           "--out", str(tmp_path / "dec"), "--device", "cpu", "--quiet")
    with np.load(tmp_path / "dec" / "samples.npz") as z:
        assert np.array_equal(z["arr_0"], ns["recon"])
    np.savez(tmp_path / "in.npz", arr_0=images)
    cli_ok("reconstruct", "--ckpt", "cifar10-flextok-tiny", "--input", str(tmp_path / "in.npz"), "--tokens", "2,16",
           "--steps", "3", "--seed", "5", "--no-fid", "--out", str(tmp_path / "rec"), "--device", "cpu", "--quiet")
    api = tok.reconstruct(images, [2, 16], seed=5, steps=3)
    for k in (2, 16):
        with np.load(tmp_path / "rec" / f"k{k:03d}.npz") as z:
            assert np.array_equal(z["arr_0"], api[k])
    assert not np.array_equal(api[2], api[16])
    assert np.array_equal(tok.reconstruct(images, 2, seed=5, steps=3), api[2])  # one k: an array, the same images


def test_cli_em_segment_equals_the_readme(readme, tmp_path) -> None:
    ns = readme["Segmenter"]
    np.save(tmp_path / "raw.npy", ns["volume"])
    cli_ok("em-segment", "--ckpt", "em-segmamba-tiny-scratch", "--input", str(tmp_path / "raw.npy"),
           "--out", str(tmp_path / "seg.npy"), "--device", "cpu")
    seg = np.load(tmp_path / "seg.npy")
    assert seg.dtype == ns["seg"].dtype and np.array_equal(seg, ns["seg"])


# ------------------------------------------------------------------------- the command block, run as written
def command_block() -> list[str]:
    """The lines of the bash block in "The `vistok` command" (variables filled in from its own assignments)."""
    section = README.read_text().split("## The `vistok` command", 1)[1].split("\n## ", 1)[0]
    return [line for line in shell_lines(section) if line.strip()]


def table_row(first_cell: str) -> list[float]:
    """The numbers of the README results row whose first cell starts with `first_cell`."""
    row = next(line for line in README.read_text().splitlines() if line.startswith(f"| {first_cell}"))
    return [float(cell) for cell in row.strip("|").split("|")[1:]]


@pytest.fixture(scope="module")
def block(tmp_path_factory, data_root) -> dict:
    """Every line of the command block run as written and in order (each `vistok` line in this process, the
    blockwise one's workers as processes), from a folder laid out like the repository root: `../shared/data` is the
    data. What each command gave, by subcommand (the last of a name wins), and the folder."""
    work = checkout_like(tmp_path_factory.mktemp("checkout"), data_root)
    here, threads, ran = Path.cwd(), torch.get_num_threads(), {}
    os.chdir(work)
    torch.set_num_threads(1)
    try:
        for line in command_block():
            words = shlex.split(line, comments=True)
            if ASSIGNMENTS.match(line.split("#", 1)[0].strip()):
                continue
            assert words[0] == "vistok", f"not a vistok line: {line}"
            result = vistok(*words[1:], env={"OMP_NUM_THREADS": "1"})  # the blockwise workers: one thread each
            assert result.returncode == 0, f"`{line}` failed:\n{result.stderr}"
            ran[words[1]] = result
    finally:
        os.chdir(here)
        torch.set_num_threads(threads)
    return {"cwd": work, **ran}


def test_the_command_block_runs_every_line_as_written(block) -> None:
    lines = command_block()
    assert sum(line.startswith("vistok ") for line in lines) == 10
    assert any(line.startswith("G=../shared/data/em/gala_fib_medulla.h5 ") for line in lines)
    assert {"sample", "fid", "reconstruct", "encode", "decode", "em-segment", "em-eval"} <= set(block)


def test_the_generator_lines(block) -> None:
    """The sample lines write what their comments say, image i the same as sampled alone; the fid line prints the
    recorded golden of the shipped model (test_shipped.py: the value, its tolerance, a broken sampler outside it)."""
    from test_shipped import XAR_FID, XAR_NUM, XAR_TOL

    from vistok import load
    from vistok.metrics import fid

    cwd = block["cwd"]
    with np.load(cwd / "samples" / "samples.npz") as z:
        images, labels = z["arr_0"], z["labels"]
    assert images.shape == (XAR_NUM, 32, 32, 3) and labels.tolist() == [i % 10 for i in range(XAR_NUM)]  # in turn
    assert len(list((cwd / "samples").glob("*.png"))) == XAR_NUM + 1  # the PNGs and grid.png, as the comment says
    gen = load("cifar10-xar-tiny")  # image i's noise depends on (seed, i) alone: the first two, sampled alone
    assert np.array_equal(gen.sample(labels=labels[:2], seed=0), images[:2])
    assert Image.open(cwd / "grid.png").size[0] > 32  # the GPT line: a grid of the two classes
    printed = re.fullmatch(rf"FID ([\d.]+)\s+\({XAR_NUM} images, cifar10-net, real: cifar10-train\)\n",
                           block["fid"].stdout)
    assert printed, block["fid"].stdout
    assert abs(float(printed.group(1)) - XAR_FID) < XAR_TOL, f"FID {printed.group(1)}, recorded {XAR_FID}"
    assert f"# {XAR_FID:.3f} " in next(line for line in command_block() if line.startswith("vistok fid"))
    with pytest.warns(UserWarning, match="rank-deficient"):
        score = fid.calculate(str(cwd / "samples" / "samples.npz"), "cifar10-train", extractor="cifar10-net")
    assert float(printed.group(1)) == pytest.approx(score["fid"], abs=1e-4)  # the command prints the API's value


def test_the_tokenizer_lines(block) -> None:
    import json

    cwd = block["cwd"]
    metrics = json.loads((cwd / "recon" / "metrics.json").read_text())
    assert metrics["num"] == 32 and sorted(metrics["metrics"], key=int) == ["1", "4", "16"]
    mse = [metrics["metrics"][k]["mse"] for k in ("1", "4", "16")]
    assert mse[0] > mse[1] > mse[2] and all("fid" in metrics["metrics"][k] for k in ("1", "4", "16"))
    with np.load(cwd / "tokens.npz") as z:
        ids, ks = z["ids"], z["k"]
    assert ids.shape == (32, 4) and ids.dtype == np.int32 and set(ks.tolist()) <= {1, 2, 4} and len(set(ks)) > 1
    with np.load(cwd / "decoded" / "samples.npz") as z:
        decoded = z["arr_0"]
    assert decoded.shape == (32, 32, 32, 3) and decoded.dtype == np.uint8


def test_the_em_lines_give_the_results_table(block, data_root) -> None:
    """em-segment + em-eval on the test volume give the README's results rows and the scores the shipped export
    records (its config.json's `eval`, for the default post-processing); the blockwise line's two daisy workers
    segment it as docs/em.md says."""
    import json

    from vistok.em.metrics import evaluate, evaluate_per_slice
    from vistok.em.volumes import read_volume
    from vistok.io.checks import read_config
    from vistok.io.sources import resolve_ckpt

    cwd, volume = block["cwd"], f"{data_root}/em/gala_fib_medulla.h5"
    truth = read_volume(f"{volume}:test/neuron_ids")
    scores = json.loads(block["em-eval"].stdout)
    seg = read_volume(cwd / "seg.h5:seg")
    row = [scores["voi"], scores["arand"], *evaluate_per_slice(seg, truth)[2:]]
    assert row == pytest.approx(table_row("`em-segmamba-tiny-tokenunify`"), abs=1e-4)
    stored = read_config(resolve_ckpt("em-segmamba-tiny-tokenunify"))["eval"]  # what the shipped export records
    assert [scores[k] for k in ("voi_split", "voi_merge", "voi", "arand")] == pytest.approx(
        [stored[k] for k in ("voi_split", "voi_merge", "voi", "arand")], abs=1e-6)
    assert len(np.unique(seg)) == stored["segments"]
    base = read_volume(cwd / "base.h5:seg")
    assert [*evaluate(base, truth)[2:], *evaluate_per_slice(base, truth)[2:]] == pytest.approx(
        table_row("no-network baseline"), abs=1e-4)
    assert "2 daisy workers" in block["em-segment"].stdout
    joined = read_volume(cwd / "seg.zarr:ids")
    assert joined.shape == truth.shape and joined.min() >= 1  # every voxel of every block relabelled
    blockwise = evaluate(joined, truth)
    assert blockwise.voi == pytest.approx(docs_blockwise_voi("50x100x100"), abs=1e-3)


def docs_blockwise_voi(block: str) -> float:
    """docs/em.md's blockwise VOI for one block shape ("blocks 50x100x100 1.371, ...")."""
    return float(re.search(rf"{block} ([\d.]+)", (REPO / "docs" / "em.md").read_text()).group(1))


# ------------------------------------------------------------------------------------------- the CLI lines
PLACEHOLDERS = {"k": "1", "S": "0", "HOST": "localhost"}  # shell variables of the documented loops and recipes
SEPARATORS = {"&&", "||", ";", "|", "&"}


ASSIGNMENTS = re.compile(r"^(?:export\s+)?((?:\w+=\S*\s*)+)$")  # a line of `A=x B=y`, exported or not


def shell_lines(text: str) -> list[str]:
    """The logical lines (continuations joined) of every bash block, variables filled in as the shell would from
    the block's own assignments (`G=path`, `export A=x B=y`: kept as lines), else placeholders."""
    out = []
    for block in blocks(text, "bash"):
        known = dict(PLACEHOLDERS)
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\$\{?(\w+)\}?", lambda m, known=known: known.get(m.group(1), "X"), line)
            if found := ASSIGNMENTS.match(line.split("#", 1)[0].strip()):
                known.update(word.split("=", 1) for word in found.group(1).split())
            out.append(line)
    return out


def vistok_commands(text: str) -> list[list[str]]:
    """The arguments of every `vistok ...` (or `torchrun ... -m vistok ...`) command in the bash blocks."""
    found = []
    for line in shell_lines(text):
        words = shlex.split(line.replace(";", " ; "), comments=True)
        for i, word in enumerate(words):
            before = list(itertools.takewhile(lambda w: re.match(r"\w+=", w), reversed(words[:i])))  # VAR=value
            start = i - len(before)
            if word == "vistok" and (start == 0 or words[start - 1] in SEPARATORS | {"-m", "do", "then"}):
                found.append(list(itertools.takewhile(lambda w: w not in SEPARATORS, words[i + 1:])))
    return found


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: p.name)
def test_every_vistok_line_parses_with_the_real_parser(doc) -> None:
    commands = vistok_commands(doc.read_text())
    if doc == README:
        assert len(commands) >= 15 and {c[0] for c in commands} >= {"sample", "fid", "convert", "cache-latents"}
    parser = cli.build_parser()
    for argv in commands:
        try:
            args = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"{doc.name}: `vistok {shlex.join(argv)}` does not parse (see the message above)")
        assert callable(args.func), argv


def training_commands(text: str) -> list[tuple[str, list[str]]]:
    """(script stem, its arguments) of every `python train/X.py ...` or `torchrun ... train/X.py ...` line."""
    found = []
    for line in shell_lines(text):
        words = shlex.split(line, comments=True)
        for i, word in enumerate(words):
            if (m := re.fullmatch(r"train/(\w+)\.py", word)) and i and (words[i - 1] == "python"
                                                                      or "torchrun" in words[:i]):
                found.append((m.group(1), words[i + 1:]))
    return found


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: p.name)
def test_every_training_line_resolves_its_config(doc, monkeypatch) -> None:
    """The training lines run for hours, so here each one's config file and key=value overrides go through the
    script's own parser and type checks (what its first line does); their runs at tiny size: test_recipes.py,
    test_paper.py and each script's tests."""
    from vistok.engine.loop import parse_cli

    monkeypatch.chdir(REPO)  # the lines run from the repository root
    commands = training_commands(doc.read_text())
    if doc == README:
        assert len(commands) >= 8 and any(argv[-1].startswith("data.latents=") for _, argv in commands)
    for stem, argv in commands:
        module = load_train_script(stem)
        try:
            parse_cli(module.Config, argv, module.__doc__ or "")
        except (SystemExit, VistokError) as err:
            pytest.fail(f"{doc.name}: `train/{stem}.py {shlex.join(argv)}` does not resolve: {err}")


def test_the_readme_command_table_is_vistok_help() -> None:
    rows = re.findall(r"^\| `vistok ([\w-]+)` \| (.*?) \|$", README.read_text(), re.M)
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert rows == [(action.dest, action.help) for action in sub._choices_actions]


def test_a_broken_line_would_be_caught() -> None:
    """The extractor sees commands inside loops, after torchrun's -m and across continuation lines."""
    text = ("```bash\nfor k in 1 2; do\n  vistok sample --ckpt a --tokens $k --out x   # note\ndone\n"
            "torchrun --nproc_per_node=2 -m vistok fid --fake a \\\n    --real b --kid\n"
            "pip install -e . && VISTOK_DATA=../d OMP_NUM_THREADS=1 vistok demo\necho vistok models\n"
            "export A=1 G=../v.h5   # a comment\nvistok em-eval --seg $G:s --gt ${G}:t\n```\n")
    assert vistok_commands(text) == [["sample", "--ckpt", "a", "--tokens", "1", "--out", "x"],
                                     ["fid", "--fake", "a", "--real", "b", "--kid"], ["demo"],
                                     ["em-eval", "--seg", "../v.h5:s", "--gt", "../v.h5:t"]]
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["sample", "--ckpt", "a", "--nmu", "3", "--out", "x"])


# ----------------------------------------------------------------------------------------------- the paths
ROOTS = ("vistok", "train", "benchmarks", "experiments", "tests", "assets", "docs", ".ci")
PATH = re.compile(rf"(?<![\w./-])((?:{'|'.join(re.escape(r) for r in ROOTS)})/[\w./{{}},*-]*[\w}}*])")


def expand(path: str) -> list[str]:
    """`a/{b,c}.py` -> [`a/b.py`, `a/c.py`] (one level of braces, possibly several groups)."""
    parts = re.split(r"\{([^}]*)\}", path)
    options = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(choice) for choice in itertools.product(*options)]


def exists(path: str) -> bool:
    return any(REPO.glob(path)) if "*" in path else (REPO / path).exists()


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: p.name)
def test_every_path_test_and_name_the_documents_mention_exists(doc) -> None:
    text = doc.read_text()
    missing = [p for m in PATH.findall(text) for p in expand(m) if not exists(p)]
    # markdown links and images, relative to the document
    missing += [t for t in re.findall(r"\]\(([^)#\s]+)\)", text)
                if "://" not in t and not (doc.parent / t).exists()]
    # bare file names (`flextok_sampling.py`, `xar_b_in256.yaml`) name some file of the repository
    names = {p.name for root in ROOTS for p in (REPO / root).rglob("*") if p.is_file()}
    bare = re.findall(r"`([\w{},*.-]+\.(?:py|yaml))`", text)
    missing += [n for b in bare for n in expand(b) if not any(fnmatch.fnmatch(x, n) for x in names)]
    # tests named as file::function
    for file, name in re.findall(r"(tests/test_\w+\.py)::(\w+)", text):
        if not re.search(rf"^def {name}\(", (REPO / file).read_text(), re.M):
            missing.append(f"{file}::{name}")
    for name in re.findall(r"(?<![\w/])test_\w+(?=`|\))", text):  # a test named alone
        if not any(re.search(rf"^def {name}\(", f.read_text(), re.M) for f in (REPO / "tests").glob("test_*.py")):
            missing.append(name)
    # dotted Python names (`vistok.engine.host_memory.keep_freed_memory()`)
    for dotted in re.findall(r"`(vistok(?:\.\w+)+)", text):
        if not resolves(dotted):
            missing.append(dotted)
    assert not missing, f"{doc.name} names what does not exist: {missing}"


def resolves(dotted: str) -> bool:
    """A module, or an attribute of the longest importable module prefix."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def test_the_path_check_catches_stale_names(tmp_path) -> None:
    """The names the README used to carry after their files were gone, and brace and glob forms."""
    assert not exists("vistok/generators/generate.py") and not exists("vistok/generators/paired.py")
    assert expand("vistok/generators/{ar,paired}.py") == ["vistok/generators/ar.py", "vistok/generators/paired.py"]
    assert PATH.findall("see `vistok/generators/{entities,xar}.py` and experiments/ablate_*.py.") == [
        "vistok/generators/{entities,xar}.py", "experiments/ablate_*.py"]
    assert exists("experiments/ablate_*.py") and not exists("experiments/nothing_*.py")
    assert resolves("vistok.engine.host_memory.keep_freed_memory") and not resolves("vistok.api.no_such_name")
