"""The ldct-benchmark intensity convention, in one place.

Stored value X = HU + 1024; normalised x = (X - MEAN) / STD with the low-dose training-set mean and
std of ldct-benchmark. The inverse adds MEAN back (ldct-benchmark 0.0.15's
``evaluate.utils.denormalize`` adds STD instead, a +20.7 HU error that must not be reproduced).
"""

from __future__ import annotations

from typing import TypeVar

HU_OFFSET = 1024.0
MEAN = 481.45419786099086
STD = 502.18507379395044

ArrayT = TypeVar("ArrayT")  # numpy array or torch tensor


def hu_to_normalized(hu: ArrayT) -> ArrayT:
    """HU -> network input units."""
    return (hu + (HU_OFFSET - MEAN)) / STD


def normalized_to_hu(x: ArrayT) -> ArrayT:
    """Network output units -> HU (exact inverse of :func:`hu_to_normalized`)."""
    return x * STD + (MEAN - HU_OFFSET)
