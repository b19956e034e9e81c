"""vistok's user-facing error type.

Errors a user can cause (a bad path, an unknown config key, a corrupt file, a missing optional dependency) raise
`VistokError` with one line that names the problem and the fix; the CLI and the training scripts print that line and
exit non-zero without a traceback.
"""

from __future__ import annotations


class VistokError(Exception):
    """A mistake the user can fix; `str(err)` is a one-line message that says how."""


def require(condition: bool, message: str) -> None:
    """Raise `VistokError(message)` unless `condition` holds (fail loudly and early)."""
    if not condition:
        raise VistokError(message)


class ArgumentValueError(VistokError, ValueError):
    """A Python API argument of the right type outside its valid range (also a ValueError, as Python's own)."""


class ArgumentTypeError(VistokError, TypeError):
    """A Python API argument of the wrong type, e.g. steps=2.5 or cfg="2" (also a TypeError, as Python's own)."""
