"""`vistok --help` and every subcommand's `--help` import no torch (about 6 CPU-seconds): argument parsing imports
only light modules, and the packages' re-exports (`vistok.em`, `vistok.data`) resolve on first use."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import contextlib, io, json, sys
from vistok.cli import build_parser, main
import argparse
sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
seen = {}
for argv in [["--help"]] + [[name, "--help"] for name in sub.choices]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main(argv)
    seen[" ".join(argv)] = ["torch" in sys.modules, len(out.getvalue())]
print(json.dumps(seen))
"""


def test_every_help_imports_no_torch() -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(seen) >= 14 and "em-view --help" in seen and "convert --help" in seen
    for argv, (torch_imported, printed) in seen.items():
        assert printed > 100, argv  # the help text itself was printed
        assert not torch_imported, f"vistok {argv} imported torch"


def test_the_lazy_packages_still_export_their_names() -> None:
    import vistok.data as data
    import vistok.em as em

    assert em.SegMamba.__name__ == "SegMamba" and callable(em.evaluate) and em.volumes.Volume is em.Volume
    assert callable(data.build_loader) and data.images.to_uint8 is data.to_uint8
    try:
        _ = em.not_a_name  # the lookup is what must raise
    except AttributeError as err:
        assert "not_a_name" in str(err)
    else:
        raise AssertionError("an unknown name must raise AttributeError")
