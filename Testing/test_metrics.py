"""Windowed PSNR/SSIM and the patient-body region."""

import numpy as np
import pytest

from CTInvariancesLib.io import read_volume
from CTInvariancesLib.metrics import LUNG, SOFT_TISSUE, body_mask, parse_window, psnr, ssim


def test_window_mapping_and_parsing():
    assert SOFT_TISSUE.apply(np.array([-1000.0, -160.0, 40.0, 240.0, 3000.0])).tolist() == [0, 0, 0.5, 1, 1]
    assert parse_window("lung") is LUNG
    w = parse_window("50,350")
    assert (w.center, w.width) == (50.0, 350.0)
    with pytest.raises(ValueError, match="window"):
        parse_window("wide")


def test_psnr_and_ssim_known_values():
    rng = np.random.default_rng(0)
    ref = rng.uniform(-100, 200, (64, 64))
    assert psnr(ref, ref) == float("inf") and ssim(ref, ref) == pytest.approx(1.0)
    noisy = ref + 40.0  # constant 40 HU = 0.1 of the window -> MSE 0.01 -> 20 dB (no clipping)
    assert psnr(noisy.clip(-160, 240), ref.clip(-160, 240)) == pytest.approx(20.0, abs=0.7)
    mask = np.zeros_like(ref, bool)
    mask[:32] = True
    worse = ref.copy()
    worse[:32] += rng.normal(0, 50, (32, 64))
    assert ssim(worse, ref, mask=mask) < ssim(worse, ref)  # the untouched half dilutes the mean


def test_body_mask_on_real_slice(abdomen_dir):
    vol = read_volume(abdomen_dir)
    mask = body_mask(vol.array[15])
    assert 0.2 < mask.mean() < 0.7
    assert mask[256, 256] and not mask[5, 5]
