"""The hostile battery (issue 25, items 6 and 7): inputs a new user or an attacker hands vistok, each of which gave a
traceback or a silent wrong result with exit status 0. Each must now give one line naming the problem (the CLI: exit
1, or 2 for argparse's own refusals, before any output is written) or, from Python, a VistokError that is also the
TypeError/ValueError Python itself would raise, naming the argument and its valid range.

Everything runs in-process (`vistok.cli.main`, `vistok.load`) on the tiny shipped models; no case needs a process
boundary.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import vistok
from vistok import cli
from vistok.checks import MAX_GUIDANCE, MAX_STEPS, array_arg, float_arg, int_arg
from vistok.errors import ArgumentTypeError, ArgumentValueError, VistokError

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    """(exit status, stderr) of `vistok ARGV` in this process; argparse's refusals (SystemExit) count as statuses."""
    capsys.readouterr()
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def one_line(err: str, *fragments: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def copy_export(name: str, dst: Path, edit=None, weights=None) -> Path:
    """A shipped export copied to `dst`, its config.json rewritten by `edit(meta) -> meta | str` and its tensors by
    `weights(state)`."""
    shutil.copytree(ASSETS / name, dst)
    if edit is not None:
        meta = edit(json.loads((dst / "config.json").read_text()))
        (dst / "config.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
    if weights is not None:
        state = load_file(dst / "model.safetensors")
        weights(state)
        save_file(state, dst / "model.safetensors")
    return dst


@pytest.fixture(scope="module")
def xar():
    return vistok.load("cifar10-xar-tiny")


@pytest.fixture(scope="module")
def flextok():
    return vistok.load("cifar10-flextok-tiny")


@pytest.fixture(scope="module")
def segmenter():
    return vistok.load("em-segmamba-tiny-scratch")


# ------------------------------------------------------------------------------------------------- the checks
def test_checks_refuse_wrong_types_and_ranges_and_accept_numpy_scalars():
    assert int_arg(np.int64(3), "seed", 0) == 3 and type(int_arg(np.int64(3), "seed", 0)) is int
    assert float_arg(np.float32(2.5), "cfg", 0, 10) == 2.5 and float_arg(3, "cfg", 0, 10) == 3.0
    for bad in (1.5, 2.0, "2", True, None, [1]):
        with pytest.raises(TypeError) as err:
            int_arg(bad, "seed", 0)
        assert isinstance(err.value, VistokError) and str(err.value).startswith("seed must be an integer >= 0")
    with pytest.raises(ValueError, match=r"steps must be an integer in \[1, 5\], got 6"):
        int_arg(6, "steps", 1, 5)
    for bad in (float("nan"), float("inf"), 0.0, 11.0):
        with pytest.raises(ArgumentValueError, match=r"cfg must be a finite number in \(0, 10\]"):
            float_arg(bad, "cfg", 0, 10, lo_open=True)
    with pytest.raises(ArgumentTypeError, match="cfg must be a number"):
        float_arg("2", "cfg", 0, 10)
    with pytest.raises(ArgumentValueError, match="is empty"):
        array_arg(np.zeros((0, 3)), "x")
    with pytest.raises(ArgumentValueError, match=r"NaN or infinite values \(1 of 3\)"):
        array_arg([1.0, np.inf, 2.0], "x")
    with pytest.raises(ArgumentValueError, match="must have 3 axes"):
        array_arg(np.zeros((2, 2)), "x", ndim=3)
    assert array_arg(torch.arange(3), "x").tolist() == [0, 1, 2]


# ------------------------------------------------------------------------------------------------ tracebacks
def test_hf_source_with_dots_is_one_line(capsys, tmp_path):
    """`--ckpt hf://../../etc` raised huggingface_hub's HFValidationError as a traceback."""
    code, err = run_cli(capsys, "sample", "--ckpt", "hf://../../etc", "--out", tmp_path / "s")
    assert code == 1
    one_line(err, "vistok sample: error:", "'..' is not a valid Hugging Face name")
    with pytest.raises(VistokError, match="not a valid Hugging Face name"):
        vistok.load("hf://org/repo/sub/../../x")  # a sub-folder cannot climb out of the snapshot either
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("case, fragment", [
    ("heads0", "model.heads=0 must be >= 1"),  # ZeroDivisionError
    ("width0", "model.width=0"),  # ZeroDivisionError
    ("list", "the top level is a JSON array"),  # AttributeError: 'list' object has no attribute 'get'
    ("nested", "RecursionError"),  # a RecursionError traceback
    ("nested_config", "nested more than 16 levels"),
    ("tokenizer_string", "'tokenizer' must be an object"),  # AttributeError
    ("tokenizer_config_list", "'tokenizer.config' must be an object"),  # TypeError
    ("classes_int", "'classes' must be a list of class names"),  # TypeError: 'int' object is not iterable
    ("sample_list", "'sample' must be an object"),  # TypeError: 'list' object is not a mapping
    ("family_missing", "'family' must be a string"),
    ("config_null", "'config' must be an object"),
    ("classes_short", "names 1 classes but its model has 10"),  # silently sampled class 0 only
    ("sample_cfg_huge", "guidance scale must be a positive number at most 100"),
])
def test_bad_config_json_is_one_line(tmp_path, capsys, case, fragment):
    edits = {
        "heads0": lambda m: {**m, "config": {**m["config"], "heads": 0}},
        "width0": lambda m: {**m, "config": {**m["config"], "width": 0}},
        "list": lambda m: [m],
        "nested": lambda m: "[" * 100_000 + "]" * 100_000,
        "nested_config": lambda m: {**m, "config": {**m["config"], "extra": json.loads("[" * 40 + "]" * 40)}},
        "tokenizer_string": lambda m: {**m, "tokenizer": "pixel"},
        "tokenizer_config_list": lambda m: {**m, "tokenizer": {"family": "pixel", "config": [4]}},
        "classes_int": lambda m: {**m, "classes": 10},
        "sample_list": lambda m: {**m, "sample": [50]},
        "family_missing": lambda m: {k: v for k, v in m.items() if k != "family"},
        "config_null": lambda m: {**m, "config": None},
        "classes_short": lambda m: {**m, "classes": ["cat"]},
        "sample_cfg_huge": lambda m: {**m, "sample": {**m["sample"], "cfg": 1e308}},
    }
    folder = copy_export("cifar10-xar-tiny", tmp_path / "export", edit=edits[case])
    with pytest.raises(VistokError, match=None) as err:
        vistok.load(str(folder))
    assert fragment in str(err.value) and "\n" not in str(err.value)
    code, err_text = run_cli(capsys, "sample", "--ckpt", folder, "--num", "1", "--out", tmp_path / "s")
    assert code == 1
    one_line(err_text, fragment)
    assert not (tmp_path / "s").exists()


def test_paired_and_flextok_configs_are_checked(tmp_path):
    """heads 0 in a GPT on FlexTok tokens, a string code scale, a string resolution: one line each."""
    cases = [
        ("cifar10-flextok-gpt-tiny", lambda m: {**m, "config": {**m["config"], "heads": 0}}, "model.heads=0"),
        ("cifar10-flextok-gpt-tiny", lambda m: {**m, "tokenizer": {**m["tokenizer"], "code_scale": "x"}},
         "'tokenizer.code_scale' must be a positive number"),
        ("cifar10-flextok-tiny", lambda m: {**m, "resolution": "big"}, "'resolution' must be a positive integer"),
        ("cifar10-flextok-tiny", lambda m: {**m, "config": {**m["config"], "patch": 0}}, "model.patch=0"),
        ("em-segmamba-tiny-scratch", lambda m: {**m, "inference": [1]}, "'inference' must be an object"),
    ]
    for i, (name, edit, fragment) in enumerate(cases):
        folder = copy_export(name, tmp_path / str(i), edit=edit)
        with pytest.raises(VistokError) as err:
            vistok.load(str(folder))
        assert fragment in str(err.value), (name, str(err.value))


def test_em_segment_of_an_empty_volume_is_one_line(tmp_path, capsys, segmenter):
    """A 0-slice volume raised numpy's 'zero-size array to reduction operation minimum' as a traceback."""
    np.save(tmp_path / "empty.npy", np.zeros((0, 16, 16), np.uint8))
    code, err = run_cli(capsys, "em-segment", "--ckpt", "em-segmamba-tiny-scratch", "--input", tmp_path / "empty.npy",
                        "--out", tmp_path / "seg.npy")
    assert code == 1
    one_line(err, "is empty (shape (0, 16, 16))")
    assert not (tmp_path / "seg.npy").exists()
    with pytest.raises(ValueError) as exc:  # the API: a VistokError that is a ValueError, naming the argument
        segmenter.segment(np.zeros((0, 16, 16), np.uint8))
    assert isinstance(exc.value, VistokError) and str(exc.value).startswith("volume (Z, Y, X) is empty")


# ------------------------------------------------------------------------------------------ silent wrong results
def test_huge_guidance_scale_is_refused_before_any_file(tmp_path, capsys):
    """`--cfg 1e308` wrote garbage images with exit 0; 100 is the bound (the papers use 1-10), 100 itself passes."""
    for cfg in ("1e308", "101"):
        code, err = run_cli(capsys, "sample", "--ckpt", "cifar10-xar-tiny", "--num", "1", "--steps", "1", "--cfg", cfg,
                            "--out", tmp_path / "s")
        assert code == 1
        one_line(err, "guidance scale must be a positive number at most 100", "the papers use 1-10")
        assert not (tmp_path / "s").exists()
    code, err = run_cli(capsys, "decode", "--ckpt", "cifar10-flextok-tiny", "--tokens", _ids(tmp_path, 2), "--cfg",
                        "1e308", "--steps", "1", "--out", tmp_path / "d")
    assert code == 1 and "at most 100" in one_line(err)
    from vistok.generators.sampling import ARSampleConfig, SampleConfig
    from vistok.tokenizers.flextok_sampling import DecodeConfig

    for config in (SampleConfig, ARSampleConfig, DecodeConfig):
        assert config(cfg=MAX_GUIDANCE).cfg == MAX_GUIDANCE
        with pytest.raises(ArgumentValueError):
            config(cfg=MAX_GUIDANCE * 1.01)


def test_endless_step_counts_are_refused(tmp_path, capsys):
    """--steps 100000000 ran for days; steps are bounded by MAX_STEPS for xAR and FlexTok decoding alike."""
    code, err = run_cli(capsys, "sample", "--ckpt", "cifar10-xar-tiny", "--num", "1", "--steps", "100000000",
                        "--cfg", "nan", "--out", tmp_path / "s")  # (nan: main refuses it, instead of running for days)
    assert code == 1
    one_line(err, f"steps (flow steps per entity) must be an integer in [1, {MAX_STEPS}], got 100000000")
    code, err = run_cli(capsys, "sample", "--ckpt", "cifar10-flextok-gpt-tiny", "--num", "1", "--temperature", "1e300",
                        "--decode-steps", "1", "--out", tmp_path / "s")
    assert code == 1 and "temperature must be a finite number in [0, 100]" in one_line(err)
    assert not (tmp_path / "s").exists()


def _nan_weights(state: dict[str, torch.Tensor]) -> None:
    for name, tensor in state.items():
        if tensor.is_floating_point():
            state[name] = torch.full_like(tensor, float("nan"))
            return  # one tensor is enough to make every image black


@pytest.mark.parametrize("name", ["cifar10-xar-tiny", "cifar10-flextok-tiny", "em-segmamba-tiny-scratch",
                                  "cifar10-net"])
def test_non_finite_weights_are_refused_at_load(tmp_path, name):
    """An export whose weights hold NaN loaded and gave black images with exit 0; now loading names the tensor."""
    folder = copy_export(name, tmp_path / "export", weights=_nan_weights)
    first = next(k for k, v in load_file(folder / "model.safetensors").items() if v.is_floating_point())
    with pytest.raises(VistokError) as err:
        vistok.load(str(folder))
    assert f"non-finite (NaN or infinite) weights in {first}" in str(err.value)


def test_non_finite_weights_are_refused_by_the_cli(tmp_path, capsys):
    folder = copy_export("cifar10-xar-tiny", tmp_path / "export", weights=_nan_weights)
    code, err = run_cli(capsys, "sample", "--ckpt", folder, "--num", "1", "--steps", "1", "--out", tmp_path / "s")
    assert code == 1
    one_line(err, "non-finite (NaN or infinite) weights in")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("fill", [np.nan, np.inf])
@pytest.mark.parametrize("fraction", [1.0, 0.01])
def test_non_finite_em_volume_is_refused(tmp_path, capsys, segmenter, fill, fraction):
    """An all-NaN volume gave "41 segments" with exit 0 (a few NaN voxels are as wrong: min-max scaling spreads
    them)."""
    volume = np.random.default_rng(0).random((16, 32, 32)).astype(np.float32)
    volume[np.random.default_rng(1).random(volume.shape) < fraction] = fill
    np.save(tmp_path / "vol.npy", volume)
    code, err = run_cli(capsys, "em-segment", "--ckpt", "em-segmamba-tiny-scratch", "--input", tmp_path / "vol.npy",
                        "--out", tmp_path / "seg.npy")
    assert code == 1
    one_line(err, "NaN or infinite values")
    assert not (tmp_path / "seg.npy").exists()
    with pytest.raises(ValueError, match=r"volume \(Z, Y, X\) holds NaN or infinite values"):
        segmenter.segment(volume)
    from vistok.em.volumes import Volume, intensity_range

    for mode in ("exact", "sample"):  # training reads ranges this way too (the builtin min would drop a NaN)
        with pytest.raises(VistokError, match="NaN or infinite values"):
            intensity_range(Volume(tmp_path / "vol.npy"), mode, samples=64, block=(16, 32, 32))


@pytest.mark.parametrize("num", ["0", "-5"])
def test_demo_counts_must_be_positive(capsys, tmp_path, num):
    """`demo --num 0` / `--num -5` ran on all 10,000 images; now argparse refuses it (the data root would fail
    later)."""
    code, err = run_cli(capsys, "demo", "--num", num, "--out", tmp_path / "demo", "--data-root", tmp_path / "none")
    assert code == 2
    one_line(err, f"argument --num: must be at least 1, got {num}")


def test_repeated_flags_are_refused(capsys, tmp_path):
    """`--labels 3 --labels 5` sampled [5] alone with exit 0: every flag that takes a value may be given once, and
    an alias counts as the same flag; several values still go after one flag."""
    out = tmp_path / "s"
    cases = [
        (["sample", "--ckpt", "cifar10-xar-tiny", "--labels", "3", "--labels", "5", "--out", out],
         "--labels given twice", "--labels A B"),
        (["sample", "--ckpt", "cifar10-xar-tiny", "--num", "3", "--samples", "5", "--out", out],
         "--num and --samples (the same setting) both given", None),
        (["sample", "--ckpt", "cifar10-xar-tiny", "--seed", "1", "--seed=2", "--out", out], "--seed given twice", None),
        (["em-eval", "--seg", "a.npy", "--seg", "b.npy", "--gt", "c.npy"], "--seg given twice", None),
        (["convert", "--from", "xar", "--from", "mamba", "--input", "x", "--out", out], "--from given twice", None),
    ]
    for argv, fragment, hint in cases:
        code, err = run_cli(capsys, *argv)
        assert code == 2, argv
        line = one_line(err, fragment, "would silently replace the first")
        assert hint is None or hint in line
    assert not out.exists()
    args = cli.build_parser().parse_args(["sample", "--ckpt", "x", "--out", "o", "--labels", "3", "5", "--quiet",
                                          "--quiet"])  # a list after one flag; a value-less flag may repeat
    assert args.labels == ["3", "5"] and args.quiet
    args = cli.build_parser().parse_args(["sample", "--ckpt", "x", "--out", "o", "--seed", "4"])  # a fresh parse
    assert args.seed == 4


def test_huge_image_counts_are_one_line(capsys, tmp_path):
    """`--num 1000000000000` raised a MemoryError traceback (7 TiB of labels)."""
    code, err = run_cli(capsys, "sample", "--ckpt", "cifar10-xar-tiny", "--num", "1000000000000", "--out",
                        tmp_path / "s")
    assert code == 1
    one_line(err, "num must be an integer in [1, 10000000], got 1000000000000")
    assert not (tmp_path / "s").exists()


def test_labels_of_only_commas_is_one_line(capsys, tmp_path):
    code, err = run_cli(capsys, "sample", "--ckpt", "cifar10-xar-tiny", "--labels", ",", "--num", "1", "--steps", "1",
                        "--out", tmp_path / "s")  # an IndexError traceback before
    assert code == 1
    one_line(err, "--labels ',' names no class")


def _ids(tmp_path: Path, n: int, **extra: np.ndarray) -> Path:
    path = tmp_path / f"ids{n}-{'-'.join(extra)}.npz"
    np.savez(path, ids=np.zeros((n, 4), np.int32), **extra)
    return path


def test_decoding_no_ids_is_refused(capsys, tmp_path, flextok):
    """0 ids decoded to a (0, 1, 1, 3) array and an empty samples.npz with exit 0."""
    code, err = run_cli(capsys, "decode", "--ckpt", "cifar10-flextok-tiny", "--tokens", _ids(tmp_path, 0),
                        "--out", tmp_path / "d")
    assert code == 1
    one_line(err, "token ids is empty (shape (0, 4))")
    assert not (tmp_path / "d").exists()
    with pytest.raises(ValueError) as exc:
        flextok.decode(np.zeros((0, 4), np.int64))
    assert isinstance(exc.value, VistokError)


def test_token_file_labels_must_be_one_integer_per_image(capsys, tmp_path):
    """Float labels were written beside the images as they were; a short labels array failed after the work."""
    for labels, shown in ((np.array([0.5, 1.0]), "float64 (2,)"), (np.array([1]), "int64 (1,)")):
        code, err = run_cli(capsys, "decode", "--ckpt", "cifar10-flextok-tiny", "--steps", "1", "--out", tmp_path / "d",
                            "--tokens", _ids(tmp_path, 2, labels=labels))
        assert code == 1
        one_line(err, "'labels' must hold one integer class per image (2)", shown)
    assert not (tmp_path / "d").exists()


# --------------------------------------------------------------------------------------------------- Python API
@pytest.mark.parametrize("kwargs, error, fragment", [
    ({"seed": 1.5}, TypeError, "seed must be an integer >= 0, got float 1.5"),
    ({"seed": -1}, ValueError, "seed must be an integer >= 0, got -1"),
    ({"steps": 2.5}, TypeError, "steps (flow steps per entity) must be an integer in [1, 10000], got float 2.5"),
    ({"cfg": "2"}, TypeError, "cfg: the guidance scale must be a positive number, got str '2'"),
    ({"cfg": float("nan")}, ValueError, "guidance scale must be a positive number at most 100, got nan"),
    ({"num": 0}, ValueError, "num must be an integer in [1, 10000000], got 0"),
    ({"num": 2.5}, TypeError, "num must be an integer in [1, 10000000]"),
    ({"num": 10**12}, ValueError, "num must be an integer in [1, 10000000], got 1000000000000"),  # a MemoryError
    ({"batch_size": 0}, ValueError, "batch_size must be an integer >= 1, got 0"),
    ({"precision": "fp16"}, ValueError, "precision must be one of fp32, bf16"),
    ({"labels": []}, ValueError, "labels is empty"),
    ({"labels": 3}, TypeError, "labels must be a list of class indices or names, got int 3"),
])
def test_generator_arguments_raise_named_errors(xar, kwargs, error, fragment):
    args = {"labels": [3], "steps": 1, **kwargs}
    if "num" in kwargs:
        args.pop("labels")
    with pytest.raises(error) as exc:
        xar.sample(**args)
    assert isinstance(exc.value, VistokError) and fragment in str(exc.value), str(exc.value)


def test_valid_numpy_arguments_still_sample_the_same_images(xar):
    """The checks turn numpy scalars into Python ones without changing a bit of the result."""
    a = xar.sample([3, 5], seed=7, steps=1, cfg=2.0)
    b = xar.sample(np.array([3, 5]), seed=np.int64(7), steps=np.int32(1), cfg=np.float32(2.0), batch_size=np.int64(1))
    assert a.shape == (2, 32, 32, 3) and np.array_equal(a, b)


def test_paired_generator_arguments_raise_named_errors():
    gpt = vistok.load("cifar10-flextok-gpt-tiny")
    for kwargs, error, fragment in [({"tokens": 2.5}, TypeError, "tokens must be an integer, got float 2.5"),
                                    ({"tokens": 0}, VistokError, "--tokens 0 is not a length this generator stops at"),
                                    ({"decode_steps": 1.5}, TypeError,
                                     "steps (decoder Euler steps) must be an integer"),
                                    ({"top_k": 1.5}, TypeError, "top_k must be an integer >= 0"),
                                    ({"temperature": "1"}, TypeError, "temperature must be a number in [0, 100]")]:
        with pytest.raises(error) as exc:
            gpt.sample([3], **kwargs)
        assert isinstance(exc.value, VistokError) and fragment in str(exc.value), str(exc.value)


def test_tokenizer_arguments_raise_named_errors(flextok):
    images = np.zeros((2, 32, 32, 3), np.uint8)
    ids = np.zeros((2, 4), np.int64)
    cases = [
        (lambda: flextok.encode(images[:0]), ValueError, "images hold no pixels (shape (0, 32, 32, 3))"),
        (lambda: flextok.encode(images.astype(np.float32)), TypeError, "images must be uint8"),
        (lambda: flextok.encode(images[0]), ValueError, "images must be uint8 (N, H, W, 3)"),
        (lambda: flextok.encode(images, seed=0.5), TypeError, "seed must be an integer >= 0"),
        (lambda: flextok.decode(ids.astype(float)), TypeError, "token ids must be integers"),
        (lambda: flextok.decode(ids[0]), ValueError, "token ids must be (N, K), got shape (4,)"),
        (lambda: flextok.decode(ids, 2.5), TypeError, "k must be integers"),
        (lambda: flextok.decode(ids, 0), ValueError, "k must lie in 1..4"),
        (lambda: flextok.decode(ids, cfg="2", steps=1), TypeError, "guidance scale must be a positive number"),
        (lambda: flextok.decode(ids, steps=2.5), TypeError, "steps (decoder Euler steps) must be an integer"),
        (lambda: flextok.reconstruct(images, 2.5), TypeError, "k must be an integer in [1, 16], got float 2.5"),
        (lambda: flextok.reconstruct(images, 99), ValueError, "k must be an integer in [1, 16], got 99"),
        (lambda: flextok.reconstruct(images, []), ValueError, "k is empty"),
    ]
    for call, error, fragment in cases:
        with pytest.raises(error) as exc:
            call()
        assert isinstance(exc.value, VistokError) and fragment in str(exc.value), (fragment, str(exc.value))


def test_segmenter_and_feature_arguments_raise_named_errors(segmenter):
    features = vistok.load("cifar10-net")
    volume = np.zeros((8, 32, 32), np.float32)
    cases = [
        (lambda: segmenter.segment(np.zeros((32, 32))), ValueError, "volume (Z, Y, X) must have 3 axes"),
        (lambda: segmenter.segment(np.full((1, 1, 1), "a", dtype=object)), TypeError, "must hold numbers"),
        (lambda: segmenter.segment(volume, roi=(1.5, 2, 2)), TypeError, "roi entries must be an integer >= 1"),
        (lambda: segmenter.segment(volume, roi="16,32,32"), TypeError, "roi must be three window sizes"),
        (lambda: segmenter.segment(volume, overlap="0.5"), TypeError, "overlap must be a number in [0, 1]"),
        (lambda: features.features(np.zeros((0, 32, 32, 3), np.uint8)), ValueError, "images hold no pixels"),
        (lambda: features.features(np.zeros((2, 32, 32, 3), np.uint8), batch_size=0), ValueError,
         "batch_size must be an integer >= 1"),
    ]
    for call, error, fragment in cases:
        with pytest.raises(error) as exc:
            call()
        assert isinstance(exc.value, VistokError) and fragment in str(exc.value), (fragment, str(exc.value))
