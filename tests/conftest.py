"""Shared fixtures and helpers: the shared data root, a persistent decode cache, a small generated image folder,
running a script in a child process and `vistok ARGV` in this one."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):  # under `-n N`: one thread per worker, set before torch and numpy read it
    # `one_thread` below covers each test's own body; this also covers module fixtures (set up before it), numpy's
    # BLAS and every child process, which would otherwise each start one thread per core and oversubscribe the
    # cores (OpenMP threads spin while they wait): `-n 2` took 298.7 s of wall and 539 CPU-s with it against 319.6 s
    # and 580 CPU-s without, back to back on this two-core machine. A thread count the user set is kept.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# a data root the user set is honoured (the README's "point VISTOK_DATA at yours"); else the repo's sibling shared/data
USER_DATA_ROOT = os.environ.get("VISTOK_DATA") or None
DATA_ROOT = Path(USER_DATA_ROOT).expanduser().resolve() if USER_DATA_ROOT else REPO.parent / "shared" / "data"
CACHE = Path(os.environ.get("VISTOK_TEST_CACHE", Path.home() / ".cache" / "vistok-test"))


# ------------------------------------------------------------------------------------------------ scheduling (-n N)
# Seconds each file's tests took, summed, in a two-worker run (`--durations=0`, tests/README.md says how to refresh
# it); a file not listed counts as FILE_SECONDS_DEFAULT. Under `pytest -n N` whole files go to a worker, the longest
# first: every module fixture is then built once, on one worker, and no long file starts last. Measured on main
# with nothing else running (787 tests, 227 s of wall time, 430 s summed). Only the order matters.
FILE_SECONDS: dict[str, float] = {
    "test_readme.py": 70, "test_perf.py": 51, "test_paper.py": 40, "test_fid.py": 39, "test_shipped.py": 30,
    "test_train.py": 30, "test_faults.py": 28, "test_em_blockwise.py": 28, "test_em_train.py": 19,
    "test_pairing.py": 15, "test_eval_scripts.py": 13, "test_em.py": 11, "test_data.py": 11, "test_wheel.py": 8,
    "test_convert.py": 7, "test_hostile_files.py": 6, "test_api.py": 6, "test_sharing.py": 5, "test_api_jobs.py": 4,
    "test_flextok.py": 4,
}
FILE_SECONDS_DEFAULT = 3.0


def pytest_configure(config: pytest.Config) -> None:
    """`-n N` without a `--dist` of the user's: whole files per worker in the order collected (longest first)."""
    given = any(str(a).startswith("--dist") or str(a) == "-d" for a in config.invocation_params.args)
    if getattr(config.option, "dist", "no") == "load" and not given:
        config.option.dist = "loadfile"
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest files first (a stable sort: each file's own order is kept)."""
    items.sort(key=lambda item: -FILE_SECONDS.get(item.path.name, FILE_SECONDS_DEFAULT))


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The data folder with CIFAR-10 ($VISTOK_DATA when set, else the repo's sibling shared/data), exported as
    VISTOK_DATA for this process and subprocesses."""
    if not ((DATA_ROOT / "cifar10-jpeg.tar.gz").is_file() or (DATA_ROOT / "cifar-10-batches-py").is_dir()):
        where = "VISTOK_DATA" if USER_DATA_ROOT else "the repo's sibling shared/data"
        pytest.fail(f"CIFAR-10 not found: expected {DATA_ROOT}/cifar10-jpeg.tar.gz or cifar-10-batches-py/ ({where})")
    os.environ["VISTOK_DATA"] = str(DATA_ROOT)
    return DATA_ROOT


@pytest.fixture(scope="session", autouse=True)
def vistok_env() -> None:
    """A persistent decode cache, so repeated test runs decode CIFAR-10 once; no downloads leak in; VISTOK_DATA is the
    user's when set, else the shared data folder."""
    CACHE.mkdir(parents=True, exist_ok=True)
    os.environ["VISTOK_CACHE"] = str(CACHE)
    os.environ.pop("VISTOK_DOWNLOAD", None)
    if DATA_ROOT.is_dir():
        os.environ["VISTOK_DATA"] = str(DATA_ROOT)


def write_image_folder(root: Path, classes: tuple[str, ...] = ("cats", "dogs"), per_class: int = 16,
                       seed: int = 0) -> Path:
    """`per_class` random 32x32 RGB PNGs in each class sub-folder of `root`, the same bytes for the same seed."""
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i:03d}.png")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """tmp_path/images/{cats,dogs}/000..015.png: 2 classes x 16 random 32x32 PNGs (fixed seed)."""
    return write_image_folder(tmp_path / "images")


@pytest.fixture(scope="session")
def shared_image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same folder, written once per session (for read-only use by several tests)."""
    return write_image_folder(tmp_path_factory.mktemp("shared") / "images")


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init inception-v3-compat weights file (96 MB, seed 0), written once per session, read only."""
    from vistok.metrics.fid import write_random_inception_weights

    return write_random_inception_weights(tmp_path_factory.mktemp("inception") / "inception.pth")


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable


def load_train_script(stem: str):
    """train/STEM.py imported as a module (its Config dataclass, checks and main), without running main."""
    import importlib.util

    name = f"vistok_test_{stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "train" / f"{stem}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses resolve string annotations through sys.modules
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def fid_net_script():
    """train/train_fid_net.py imported as a module (its Config dataclass), without running main."""
    return load_train_script("train_fid_net")


@pytest.fixture(autouse=True)
def one_thread():
    """Every test's models are tiny: they run fastest on one thread, and far faster than on two on a busy two-core
    machine (two OpenMP threads then wait on each other at every op). Subprocesses set OMP_NUM_THREADS themselves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------- processes and the CLI
def script_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: one thread (the machine is small and shared, and compared runs must use the
    same thread count), unbuffered output, this checkout first on the path, plus `extra`."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": path, **extra}


def run(*cmd: str, timeout: float = 120, env: dict[str, str] | None = None,
        cwd: Path = REPO) -> subprocess.CompletedProcess:
    """`python CMD...` in a child process from the repo root (for tests whose subject is a process: a training script,
    torchrun, a kill); `cmd` starting with an executable path other than python's is run as it is."""
    argv = list(cmd) if cmd and cmd[0] == sys.executable else [sys.executable, *cmd]
    return subprocess.run(argv, cwd=cwd, env=env or script_env(), capture_output=True, text=True, timeout=timeout)


def check_ok(proc) -> None:
    """Exit 0, else the tails of both streams in the failure."""
    assert proc.returncode == 0, (f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n"
                                  f"stderr:\n{proc.stderr[-3000:]}")


@dataclass
class CliResult:
    """What `vistok ARGV` gave: its exit code and everything it wrote (warnings it raised count as stderr lines, as a
    process's stderr would show them)."""

    returncode: int
    stdout: str
    stderr: str


def in_process(call, argv: list[str] | None = None, env: dict[str, str] | None = None) -> CliResult:
    """`call()` in this process as if it were a command: its exit code (its return value, or a SystemExit's code),
    stdout and stderr (warnings count as stderr lines, as a process would show them). `argv` replaces `sys.argv` and
    `env` is set for the call only."""
    out, err = io.StringIO(), io.StringIO()
    saved = {k: os.environ.get(k) for k in env or {}}
    saved_argv = sys.argv
    os.environ.update(env or {})
    sys.argv = argv if argv is not None else sys.argv
    try:
        with (warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out),
              contextlib.redirect_stderr(err)):
            warnings.simplefilter("default")
            try:
                code = call() or 0
            except SystemExit as exit_:  # argparse: --help (0) and usage errors (2); run_main: 1
                code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = saved_argv
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    # a ResourceWarning comes when the garbage collector happens to run, in a process or not: not part of the output
    shown = [w for w in caught if not issubclass(w.category, ResourceWarning)]
    stderr = "".join(f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}\n" for w in shown) + err.getvalue()
    return CliResult(code, out.getvalue(), stderr)


def vistok(*argv: str, check: bool = False, env: dict[str, str] | None = None) -> CliResult:
    """`vistok ARGV` in this process (`vistok.cli.main`), for tests whose subject is the command, not the process
    boundary: an interpreter start saved per call."""
    from vistok import cli

    result = in_process(lambda: cli.main(list(argv)), env=env)
    if check:
        check_ok(result)
    return result


def script_main(stem: str, *argv: str) -> CliResult:
    """`python train/STEM.py ARGV` in this process: the script's own `run_main(main)` with that argv (a VistokError
    becomes its one line and exit 1), for tests whose subject is what the script does, not a process boundary."""
    from vistok.engine.loop import run_main

    module = load_train_script(stem)
    return in_process(lambda: run_main(module.main), argv=[f"train/{stem}.py", *argv])


def assert_one_line_error(proc, code: int, fragment: str) -> str:
    """Exit `code` and exactly one line on stderr (warnings included: none may precede the error), naming `fragment`,
    no traceback; the line is returned."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.rstrip("\n").split("\n")
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]
