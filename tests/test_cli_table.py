"""The `vistok` command's shape: every flag of every subcommand parses to the dest/default/type/choices recorded in
tests/fixtures/cli_flags.json, so a refactoring that changes a flag by accident fails here. Regenerate the fixture
only for a deliberate flag change: `PYTHONPATH=$PWD python tests/test_cli_table.py > tests/fixtures/cli_flags.json`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "cli_flags.json"


def flag_table() -> dict[str, dict[str, list]]:
    """{command: {"--flag --alias" (or a positional's dest): [dest, default, type name, choices, nargs, required]}}."""
    from vistok.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    table = {}
    for command, parser in sub.choices.items():
        rows = {}
        for a in parser._actions:
            if isinstance(a, argparse._HelpAction):
                continue
            kind = None if a.type is None else a.type.__name__
            choices = None if a.choices is None else list(a.choices)
            rows[" ".join(a.option_strings) or a.dest] = [a.dest, a.default, kind, choices, a.nargs, a.required]
        table[command] = rows
    return json.loads(json.dumps(table))  # tuples -> lists, as the fixture holds them


def test_every_flag_parses_as_recorded() -> None:
    recorded = json.loads(FIXTURE.read_text())
    now = flag_table()
    assert list(now) == list(recorded)  # the same subcommands, in `vistok --help` order
    for command, rows in recorded.items():
        assert now[command] == rows, command


def test_every_flag_still_parses_to_its_default() -> None:
    """Beyond the recorded attributes: a parse with only the required values gives every recorded default."""
    from vistok.cli import build_parser

    for command, rows in json.loads(FIXTURE.read_text()).items():
        argv = [command]
        for names, (_dest, _default, _kind, choices, _nargs, required) in rows.items():
            if required or not names.startswith("-"):
                value = choices[0] if choices else "x"
                argv += [value] if not names.startswith("-") else [names.split()[0], value]
        args = vars(build_parser().parse_args(argv))
        for names, (dest, default, *_rest) in rows.items():
            if not rows[names][5] and names.startswith("-"):
                assert args[dest] == default, (command, names)


def test_the_cli_stays_thin() -> None:
    """The command module only parses, calls the API and prints: under 300 lines (its --help importing no torch is
    tests/test_help.py's subject)."""
    assert len((ROOT / "vistok" / "cli.py").read_text().splitlines()) < 300


if __name__ == "__main__":
    print(json.dumps(flag_table(), indent=1))
