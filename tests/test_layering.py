"""Imports run one way, read from the source files' syntax trees (nothing is imported, so this runs in a second).

The layers, lowest first; a module imports only modules of its own layer or lower, at the top of a file or lazily
inside a function (a lazy upward import is still upward):

    0  errors, checks, lazy, graph_ops           plain helpers every layer may use
    1  config, io, flow, seeding, progress, viz  configs, export I/O (sources, config.json, loader, atomic writes)
    2  engine, data                              training machinery and datasets
    3  modules, metrics                          network blocks, FID and its feature networks
    4  tokenizers, em                            tokenizers, EM models and pipelines
    5  generators                                xAR, GPT, sampling
    6  registry                                  presets by name
    7  api, demo                                 `vistok.load` and the typed objects
    8  vistok, cli, __main__, em.cli, convert    the command line and converters (anything unlisted sits here)

So models (modules, generators, tokenizers, em) and metrics never import the registry, the API, the CLI or the demo;
`vistok.io` and `vistok.config` import nothing from engine/api/cli; engine never imports api or cli. `vistok.io.exports`
reaches model classes only through its family table of module names (importlib), which is what lets it sit low.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

LAYERS = [
    (0, ["vistok.errors", "vistok.checks", "vistok.lazy", "vistok.graph_ops"]),
    (1, ["vistok.config", "vistok.io", "vistok.flow", "vistok.seeding", "vistok.progress", "vistok.viz"]),
    (2, ["vistok.engine", "vistok.data"]),
    (3, ["vistok.modules", "vistok.metrics"]),
    (4, ["vistok.tokenizers", "vistok.em"]),
    (5, ["vistok.generators"]),
    (6, ["vistok.registry"]),
    (7, ["vistok.api", "vistok.demo"]),
    (8, ["vistok", "vistok.cli", "vistok.__main__", "vistok.em.cli", "vistok.convert"]),
]


def layer(module: str) -> int:
    """The rank of the longest listed prefix of `module` (`vistok` itself matches everything: the top)."""
    matches = [(len(p), rank) for rank, prefixes in LAYERS for p in prefixes
               if module == p or module.startswith(p + ".")]
    return max(matches)[1]


def imports(source: str, dotted: str) -> list[str]:
    """Every vistok module (or name in one) a file imports, at the top or inside functions; relative imports are
    resolved against the file's dotted path `dotted` (`...__init__` kept, so `.` of a package is the package)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import x / from ..io import y
                base = ".".join(dotted.split(".")[:-node.level] + ([base] if base else []))
            out += [f"{base}.{a.name}" for a in node.names]  # a name may be a submodule: `from vistok import api`
    return [m for m in out if m.split(".")[0] == "vistok" and m != "vistok"]


def upward_imports(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        dotted = ".".join(path.relative_to(root.parent).with_suffix("").parts)
        module = dotted.removesuffix(".__init__")
        found += [f"{module} -> {m}" for m in imports(path.read_text(), dotted) if layer(m) > layer(module)]
    return found


def test_no_import_runs_upward() -> None:
    assert upward_imports(REPO / "vistok") == []


def test_the_check_catches_planted_upward_imports(tmp_path) -> None:
    """Each rule of the module docstring, planted once (lazily, relatively, by `from vistok import x`), is caught."""
    fake = tmp_path / "vistok"
    planted = {
        "tokenizers/x.py": "def f():\n    from vistok import registry\n    import vistok.api\n",
        "metrics/m.py": "from vistok.cli import main\nfrom vistok import demo\n",
        "io/y.py": "from vistok.engine import checkpoint\nfrom ..api import load\n",
        "config.py": "from vistok.engine.dist import DistEnv\n",
        "engine/z.py": "def g():\n    from vistok.api.models import Generator\n    from vistok.cli import main\n",
        "engine/ok.py": "from vistok.io import atomic\nfrom vistok.config import from_dict\nfrom . import dist\n",
    }
    for name, text in planted.items():
        (fake / name).parent.mkdir(parents=True, exist_ok=True)
        (fake / name).write_text(text)
    assert upward_imports(fake) == [
        "vistok.config -> vistok.engine.dist.DistEnv",
        "vistok.engine.z -> vistok.api.models.Generator", "vistok.engine.z -> vistok.cli.main",
        "vistok.io.y -> vistok.engine.checkpoint", "vistok.io.y -> vistok.api.load",
        "vistok.metrics.m -> vistok.cli.main", "vistok.metrics.m -> vistok.demo",
        "vistok.tokenizers.x -> vistok.registry", "vistok.tokenizers.x -> vistok.api",
    ]


def test_engine_holds_training_code_only() -> None:
    """Export I/O lives in vistok.io; no file in engine/ reads or writes exports or resolves sources."""
    engine = REPO / "vistok" / "engine"
    moved = {"atomic.py", "safeload.py", "export_check.py", "outputs.py", "lock.py"}  # now in vistok/io
    assert not moved & {p.name for p in engine.glob("*.py")}
    for path in engine.glob("*.py"):
        tree = ast.parse(path.read_text())
        # module-level definitions (Trainer.export, the end of a run, calls vistok.io.exports.write_export)
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        assert not defined & {"export", "read_export", "load_state_strict", "resolve_ckpt", "read_config"}, path
