"""Progress bars for long commands (tqdm on stderr): on when stderr is a terminal, off otherwise or when asked.

    with progress(total=len(images), desc="decode", enabled=not quiet) as bar:
        for batch in ...:
            ...
            bar.update(len(batch))

`progress(iterable, ...)` wraps an iterable instead. `enabled=None` means "stderr is a terminal"; a disabled bar
accepts the same calls and prints nothing, so callers never branch on it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def is_terminal() -> bool:
    """Whether stderr (where bars go) is an interactive terminal."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress(iterable: Iterable[Any] | None = None, total: int | None = None, desc: str = "",
             enabled: bool | None = None, unit: str = "img") -> tqdm:
    """A tqdm bar on stderr; `enabled` None: only when stderr is a terminal; False: silent (same interface)."""
    on = is_terminal() if enabled is None else bool(enabled) and is_terminal()
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not on, file=sys.stderr, dynamic_ncols=True,
                leave=False)


__all__ = ["is_terminal", "progress"]
