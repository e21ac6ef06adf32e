"""Typed command-line options, checked before any work starts: a number out of range, NaN or
infinite is refused by argparse with a message that names the option and the allowed range."""

from __future__ import annotations

import argparse
import math

SEED_MAX = 2**32 - 1


def _describe(lo, hi, lo_open: bool, hi_open: bool) -> str:
    if hi is None:
        return f"{'>' if lo_open else '>='} {lo}"
    return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def int_in(lo: int, hi: int | None = None):
    """An integer in [lo, hi] (hi None: no upper bound)."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(
                f"{value} is out of range: must be {_describe(lo, hi, False, False)}"
            )
        return value

    parse.__name__ = "integer"
    return parse


def float_in(lo: float, hi: float | None = None, lo_open: bool = False, hi_open: bool = False):
    """A finite number in the given range (open or closed ends; hi None: no upper bound)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        below = value <= lo if lo_open else value < lo
        above = hi is not None and (value >= hi if hi_open else value > hi)
        if below or above:
            raise argparse.ArgumentTypeError(
                f"{value:g} is out of range: must be {_describe(lo, hi, lo_open, hi_open)}"
            )
        return value

    parse.__name__ = "number"
    return parse


seed = int_in(0, SEED_MAX)
positive_int = int_in(1)
non_negative_int = int_in(0)
positive_float = float_in(0.0, lo_open=True)
non_negative_float = float_in(0.0)
dose_fraction = float_in(0.0, 1.0, lo_open=True, hi_open=True)


def probe(text: str) -> tuple[float, float]:
    """``D_MM,C_HU``: a probe's diameter (mm, > 0) and contrast (HU, non-zero), both finite."""
    from ..errors import CTInvariancesError

    parts = text.split(",")
    try:
        d, c = (float(v) for v in parts)
    except ValueError:
        raise CTInvariancesError(f"--probe {text!r}: give D_MM,C_HU, e.g. 5,20") from None
    if not (math.isfinite(d) and math.isfinite(c)) or d <= 0 or c == 0:
        raise CTInvariancesError(f"--probe {text}: the diameter must be > 0 mm and the contrast non-zero")
    return (d, c)
