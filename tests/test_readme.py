"""The README and docs/ as tested documents: every Python block of the README runs on its own and does what its
comments say (and what the CLI writes is the same bits), every `vistok ...` line of the README and docs/ parses with
the real parser, the README's command table is `vistok --help`'s, and every repository path, test name and Python name
the documents mention exists."""

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


# ------------------------------------------------------------------------------------------ the Python examples
@pytest.fixture(scope="module")
def readme(tmp_path_factory, data_root) -> dict[str, dict]:
    """Each README Python block run as written, on its own, in a fresh folder (one thread, as the suite runs):
    its variables and what it printed, by kind."""
    here, threads, out = Path.cwd(), torch.get_num_threads(), {}
    os.chdir(tmp_path_factory.mktemp("readme"))
    torch.set_num_threads(1)
    try:
        for kind, code in python_blocks().items():
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


# ------------------------------------------------------------------------------------------- the CLI lines
PLACEHOLDERS = {"k": "1", "S": "0", "HOST": "localhost"}  # shell variables of the documented loops and recipes
SEPARATORS = {"&&", "||", ";", "|", "&"}


def shell_lines(text: str) -> list[str]:
    """The logical lines (continuations joined, placeholders filled in) of every bash block."""
    out = []
    for block in blocks(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            out.append(re.sub(r"\$\{?(\w+)\}?", lambda m: PLACEHOLDERS.get(m.group(1), "X"), line))
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


def test_the_readme_command_table_is_vistok_help() -> None:
    rows = re.findall(r"^\| `vistok ([\w-]+)` \| (.*?) \|$", README.read_text(), re.M)
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert rows == [(action.dest, action.help) for action in sub._choices_actions]


def test_a_broken_line_would_be_caught() -> None:
    """The extractor sees commands inside loops, after torchrun's -m and across continuation lines."""
    text = ("```bash\nfor k in 1 2; do\n  vistok sample --ckpt a --tokens $k --out x   # note\ndone\n"
            "torchrun --nproc_per_node=2 -m vistok fid --fake a \\\n    --real b --kid\n"
            "pip install -e . && VISTOK_DATA=../d OMP_NUM_THREADS=1 vistok demo\necho vistok models\n```\n")
    assert vistok_commands(text) == [["sample", "--ckpt", "a", "--tokens", "1", "--out", "x"],
                                     ["fid", "--fake", "a", "--real", "b", "--kid"], ["demo"]]
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
