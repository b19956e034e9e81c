"""The argument parser of every `vistok` command: one-line errors, every flag that takes a value given at most once,
and the argument types the commands share. Parsing imports no torch, so every `--help` is quick."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence

from vistok.errors import VistokError


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors that refuses a flag given twice.

    argparse lets the last of `--labels 3 --labels 5` win silently (the user gets [5]); here every flag that takes a
    value may appear once per command (a flag and its alias, `--num` and `--samples`, count as one). Flags without a
    value (`--quiet`) may repeat: repeating them changes nothing."""

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        self._given: dict[str, str] = {}  # dest -> the option string that set it, for this parse
        for action in self._actions:
            if action.option_strings and action.nargs != 0 and not isinstance(action, Once):
                action.__class__ = once_action(type(action))
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> None:  # one line, not argparse's usage block
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


class Once(argparse.Action):
    """Marks an action that refuses to be given twice (see Parser)."""


@functools.cache
def once_action(cls: type[argparse.Action]) -> type[argparse.Action]:
    """`cls` with a __call__ that refuses a second value for the same destination in one parse."""
    def __call__(self, parser, namespace, values, option_string=None):
        given = getattr(parser, "_given", None)
        if given is not None:
            if self.dest in given:
                first = given[self.dest]
                what = f"{option_string} given twice" if first == option_string else \
                    f"{first} and {option_string} (the same setting) both given"
                listing = (f" (several values go after one flag: {option_string} A B)"
                           if self.nargs in ("+", "*") else "")
                parser.error(f"{what}; the second would silently replace the first, so give it once{listing}")
            given[self.dest] = option_string
        cls.__call__(self, parser, namespace, values, option_string)

    return type(f"Once{cls.__name__}", (cls, Once), {"__call__": __call__})


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid positive int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def same_named(args: argparse.Namespace, names: str) -> dict:
    """The flags named as the API's keywords, as keyword arguments: `same_named(args, "seed steps")`."""
    return {name: getattr(args, name) for name in names.split()}


def split_labels(items: Sequence[str] | None) -> list[str] | None:
    """--labels 3 5 / --labels 3,5 / --labels cat dog -> ["3", "5"] ...; a flag with only commas is refused."""
    if not items:
        return None
    labels = [s.strip() for item in items for s in item.split(",") if s.strip()]
    if not labels:
        raise VistokError(f"--labels {' '.join(items)!r} names no class; pass class indices or names: --labels 3 5")
    return labels
