"""Full fp32 arithmetic for the denoiser on CUDA devices.

PyTorch's default lets cuDNN run fp32 convolutions in TF32 (10-bit mantissa) on Ampere and later
GPUs. The method needs f itself, not an approximation: the consistency step drives
|f(x~') - f(x)| to a few per cent of |x~' - x|, and TF32 rounding sets a floor under that. Measured on
one NVIDIA H200 (K = 16, abdomen slice 16, 25 % dose, the step's 80 iterations at most): with TF32
the step ended at a median fidelity ratio of 0.135 (cnn10) and 0.108 (wganvgg), above the 0.1
bound, after all 80 iterations; in full fp32 at 0.063 and 0.069, after fewer iterations
(benchmarks/results/speed_gpu_ncg.md, benchmarks/results/exact_invariances_ncg_gpu_*.log).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def _fp32_switches() -> list[tuple[object, str, object, object]]:
    """(object, attribute, full-fp32 value, current value) for cuDNN convolutions and CUDA matmuls;
    the per-backend ``fp32_precision`` API of newer PyTorch where it exists, else ``allow_tf32``
    (never both: PyTorch refuses to read flags set through a mix of the two)."""
    switches = []
    for legacy_owner, new_owner in ((torch.backends.cudnn, getattr(torch.backends.cudnn, "conv", None)),
                                    (torch.backends.cuda.matmul, torch.backends.cuda.matmul)):
        if new_owner is not None and hasattr(new_owner, "fp32_precision"):
            switches.append((new_owner, "fp32_precision", "ieee", new_owner.fp32_precision))
        else:
            switches.append((legacy_owner, "allow_tf32", False, legacy_owner.allow_tf32))
    return switches


@contextmanager
def full_fp32(device: torch.device | str) -> Iterator[None]:
    """Run the block with TF32 off on a CUDA device; the user's settings are restored afterwards.
    Nothing changes on other devices."""
    if torch.device(device).type != "cuda":
        yield
        return
    switches = _fp32_switches()
    for owner, attr, value, _ in switches:
        setattr(owner, attr, value)
    try:
        yield
    finally:
        for owner, attr, _, old in switches:
            setattr(owner, attr, old)
