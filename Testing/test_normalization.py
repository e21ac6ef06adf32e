"""The ldct-benchmark convention and its exact inverse (no +20.7 HU denormalisation bug)."""

import numpy as np
import torch

from CTInvariancesLib.denoisers import Denoiser
from CTInvariancesLib.normalization import MEAN, STD, hu_to_normalized, normalized_to_hu


def test_constants_are_ldct_benchmark():
    assert MEAN == 481.45419786099086
    assert STD == 502.18507379395044
    # stored value HU + 1024: air (-1024 HU) is stored 0
    assert abs(hu_to_normalized(np.float64(-1024.0)) - (-MEAN / STD)) < 1e-12


def test_roundtrip_below_1e3_hu():
    hu = np.linspace(-1024, 3071, 100001, dtype=np.float32)
    back = normalized_to_hu(hu_to_normalized(hu))
    assert np.max(np.abs(back - hu)) < 1e-3
    t = torch.from_numpy(hu)
    assert float((normalized_to_hu(hu_to_normalized(t)) - t).abs().max()) < 1e-3


def test_identity_network_returns_input_in_hu():
    """ldct-benchmark 0.0.15's denormalise adds STD (+20.7 HU); ours must give the input back."""
    den = Denoiser(torch.nn.Identity(), "identity", input_convention="normalized")
    x = torch.tensor([[[[-1000.0, 0.0, 40.0, 1000.0]]]])
    y = den(x)
    assert float((y - x).abs().max()) < 1e-3
    buggy = hu_to_normalized(x) * STD + STD - 1024.0
    assert float((buggy - x).mean()) > 20.0  # what the bug would have given
