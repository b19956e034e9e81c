"""Checks of the values a user hands the Python API: one place, so every method names the argument and its valid range
the same way, before numpy or torch fail deep inside with a message about their own internals.

Each check returns the value in its plain Python or numpy form and raises `ArgumentTypeError` (also a TypeError) for a
wrong type or `ArgumentValueError` (also a ValueError) for a value outside its range. Bounds that are not physical
limits but sanity limits (the guidance scale, the number of flow steps) live here as named constants: a guidance scale
of 1e308 or 1e8 Euler steps is never what a user meant, and the first gives garbage images, the second never ends.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from vistok.errors import ArgumentTypeError, ArgumentValueError

MAX_GUIDANCE = 100.0  # CFG/APG scales in the papers are 1..10; above ~100 the guided velocity is noise times the scale
GUIDANCE_WHY = " (the papers use 1-10; a larger scale turns the guided velocity into noise times the scale)"
MAX_STEPS = 10_000  # flow / decoder Euler steps: the papers use 25-100 (xAR: 50 per entity)
MAX_IMAGES = 10_000_000  # images per sampling call: 200x an FID-50k run; more would only exhaust memory for labels
MAX_TEMPERATURE = 100.0  # GPT softmax temperature; far above 1 the logits no longer matter (uniform tokens)


def _range_text(lo: float | None, hi: float | None, lo_open: bool = False) -> str:
    def show(v: float) -> str:
        return str(v) if isinstance(v, int) else f"{v:g}"

    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{show(lo)}, {show(hi)}]"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {show(lo)}"
    return f"<= {show(hi)}" if hi is not None else ""


def _space(text: str) -> str:
    return f" {text}" if text else ""


def guidance_arg(value: Any) -> float:
    """A guidance scale (CFG or APG; 1 = none) in (0, MAX_GUIDANCE]: inf gave all-black images and 1e308 garbage ones,
    both with exit status 0."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"cfg: the guidance scale must be a positive number, got {type(value).__name__} "
                                f"{value!r}")
    if not (math.isfinite(value) and 0 < value <= MAX_GUIDANCE):
        raise ArgumentValueError(f"cfg: the guidance scale must be a positive number at most {MAX_GUIDANCE:g}, got "
                                 f"{float(value)}{GUIDANCE_WHY}")
    return float(value)


def int_arg(value: Any, name: str, lo: int | None = None, hi: int | None = None, why: str = "") -> int:
    """`value` as an int in [lo, hi]; a bool, float (2.5 and 2.0 alike), string or array is refused by type. `why`
    (e.g. "; the papers use 25-100") is added to the range error."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{name} must be an integer{_space(_range_text(lo, hi))}, got {type(value).__name__} "
                                f"{value!r}")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ArgumentValueError(f"{name} must be an integer{_space(_range_text(lo, hi))}, got {value}{why}")
    return value


def float_arg(value: Any, name: str, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
              why: str = "") -> float:
    """`value` as a finite float in [lo, hi] (or (lo, hi] with lo_open); strings, bools and arrays are refused. `why`
    is added to the range error."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be a number{_space(_range_text(lo, hi, lo_open))}, got "
                                f"{type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or (lo is not None and (value <= lo if lo_open else value < lo)) \
            or (hi is not None and value > hi):
        raise ArgumentValueError(f"{name} must be a finite number{_space(_range_text(lo, hi, lo_open))}, "
                                 f"got {value}{why}")
    return value


def choice_arg(value: Any, name: str, choices: tuple[str, ...]) -> str:
    """`value` if it is one of the strings `choices`."""
    if not isinstance(value, str):
        raise ArgumentTypeError(f"{name} must be one of {', '.join(choices)}, got {type(value).__name__} {value!r}")
    if value not in choices:
        raise ArgumentValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def array_arg(value: Any, name: str, ndim: int | None = None, nonempty: bool = True, finite: bool = True) -> np.ndarray:
    """A numpy view of a numpy array, torch tensor or nested list, checked for its number of axes, at least one element
    and (for float data) no NaN or infinity: an empty or NaN input otherwise gives empty or garbage results silently."""
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as err:  # ragged lists
        raise ArgumentTypeError(f"{name} must be an array, got {type(value).__name__} ({err})") from None
    if arr.dtype.kind not in "biuf":
        raise ArgumentTypeError(f"{name} must hold numbers, got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ArgumentValueError(f"{name} must have {ndim} axes, got shape {arr.shape}")
    if nonempty and arr.size == 0:
        raise ArgumentValueError(f"{name} is empty (shape {arr.shape}); pass at least one element")
    if finite and arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ArgumentValueError(f"{name} holds NaN or infinite values ({int((~np.isfinite(arr)).sum())} of "
                                 f"{arr.size}); clean or mask them first")
    return arr


__all__ = ["GUIDANCE_WHY", "MAX_GUIDANCE", "MAX_IMAGES", "MAX_STEPS", "MAX_TEMPERATURE", "array_arg", "choice_arg",
           "float_arg", "guidance_arg", "int_arg"]


def sizes_arg(text: str, name: str, example: str = "16,64,64") -> tuple[int, int, int]:
    """'Z,Y,X' (or 'ZxYxX') -> three positive ints, e.g. a block, window or crop size given on the command line."""
    try:
        sizes = tuple(int(v) for v in str(text).replace("x", ",").split(","))
    except ValueError:
        sizes = ()
    if len(sizes) != 3 or min(sizes) < 1:
        raise ArgumentValueError(f"{name} {text!r} must be three positive sizes Z,Y,X, e.g. {example}")
    return sizes
