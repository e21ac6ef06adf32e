"""Low-dose simulation: projector/FBP correctness and the acceptance numbers on real data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from CTInvariancesLib.io import read_volume
from CTInvariancesLib.lowdose import (
    FanBeamGeometry,
    LowDoseSettings,
    LowDoseSimulator,
    estimate_noise_hu,
    fbp,
    flat_soft_tissue_mask,
    forward_project,
)

PHANTOM_ROI = (slice(110, 146), slice(110, 146))  # uniform water in the CCT189 phantom centre


def test_fbp_of_forward_projection_recovers_a_disc():
    g = FanBeamGeometry()
    H = W = 192
    px = (2.0, 2.0)
    yy, xx = np.mgrid[:H, :W]
    r = np.hypot(xx - 95.5 - 15, yy - 95.5) * 2.0
    mu = torch.tensor((r < 120) * 0.02, dtype=torch.float32)
    p = forward_project(mu, px, g, g.betas(), g.gammas(), step_mm=1.0)
    rec = fbp(p, (H, W), px, g).numpy()
    inside = rec[(r < 100)]
    assert abs(inside.mean() - 0.02) < 0.0002  # within 1 %
    assert abs(rec[r > 140].mean()) < 0.0005


@pytest.fixture(scope="module")
def abdomen_slice(abdomen_dir):
    vol = read_volume(abdomen_dir)
    return vol.array[17], (vol.spacing[1], vol.spacing[0])


@pytest.fixture(scope="module")
def quarter(abdomen_slice):
    fd, px = abdomen_slice
    sim = LowDoseSimulator(LowDoseSettings(dose_fraction=0.25))
    ld, i0 = sim.simulate(fd, px, seed=1)
    return fd, px, ld, i0


def test_mean_preserved_in_soft_tissue(quarter):
    fd, _, ld, _ = quarter
    mask = flat_soft_tissue_mask(fd)
    assert mask.sum() > 5000
    assert abs(float(np.mean(ld[mask] - fd[mask]))) < 2.0


def test_quarter_dose_doubles_noise_abdomen(quarter):
    fd, _, ld, _ = quarter
    mask = flat_soft_tissue_mask(fd)
    ratio = estimate_noise_hu(ld, mask) / estimate_noise_hu(fd, mask)
    assert 1.8 <= ratio <= 2.2, ratio


def test_noise_scaling_between_doses(quarter):
    fd, px, _, i0 = quarter
    mask = flat_soft_tissue_mask(fd)
    stds = {}
    for a in (0.10, 0.25):
        sim = LowDoseSimulator(LowDoseSettings(dose_fraction=a, i0=i0))
        stds[a] = float(np.std(sim.added_noise(fd, px, seed=3, i0=i0)[mask]))
    expected = math.sqrt((0.9 / 0.1) / (0.75 / 0.25))
    assert abs(stds[0.10] / stds[0.25] / expected - 1) < 0.10


def test_seeded_runs_identical_and_seeds_independent(quarter):
    fd, px, ld, i0 = quarter
    sim = LowDoseSimulator(LowDoseSettings(dose_fraction=0.25, i0=i0))
    again, _ = sim.simulate(fd, px, seed=1)
    assert np.array_equal(again, ld)
    other, _ = sim.simulate(fd, px, seed=2)
    mask = flat_soft_tissue_mask(fd)
    corr = np.corrcoef((ld - fd)[mask], (other - fd)[mask])[0, 1]
    assert abs(corr) < 0.05


def _phantom(phantom_dir, dose: str) -> np.ndarray:
    vol = read_volume(phantom_dir / f"dose_{dose}" / "signal_absent" / "signal_absent.mhd")
    return vol.array - 1000.0  # the phantom files store HU + 1000


def test_phantom_quarter_dose_doubles_roi_noise(phantom_dir):
    fd = _phantom(phantom_dir, "100")[0]
    sim = LowDoseSimulator(LowDoseSettings(dose_fraction=0.25))
    ld, _ = sim.simulate(fd, (1.0, 1.0), seed=5)
    ratio = ld[PHANTOM_ROI].std() / fd[PHANTOM_ROI].std()
    assert 1.8 <= ratio <= 2.2, ratio


def test_phantom_ten_percent_matches_the_real_ten_percent_scan(phantom_dir):
    """External check: 10 % simulated from the 100 % scan vs the FDA's own 10 % scans."""
    fd = _phantom(phantom_dir, "100")[0]
    real = _phantom(phantom_dir, "010")
    sim = LowDoseSimulator(LowDoseSettings(dose_fraction=0.10))
    ld, _ = sim.simulate(fd, (1.0, 1.0), seed=6)
    real_std = float(np.mean([r[PHANTOM_ROI].std() for r in real]))
    assert abs(ld[PHANTOM_ROI].std() / real_std - 1) < 0.15


def test_dose_fraction_validated():
    with pytest.raises(ValueError, match="dose fraction must be in"):
        LowDoseSimulator(LowDoseSettings(dose_fraction=1.5))


def test_anatomy_outside_the_field_of_view_is_refused():
    img = np.full((256, 256), -1000.0, dtype=np.float32)
    img[100:156, 100:156] = 40.0
    sim = LowDoseSimulator(LowDoseSettings(i0=1e5))
    sim.simulate(img, (1.0, 1.0), seed=0)  # 56 mm of tissue at the centre: fine
    img[0:10, 0:10] = 40.0  # a corner of a 600 mm image: 420 mm from the centre
    with pytest.raises(ValueError, match="outside the simulated scanner's 500 mm field of view"):
        sim.simulate(img, (2.34, 2.34), seed=0)


def test_simulate_slices_gives_each_slice_its_own_i0_and_seeds():
    """The batched path (make_pairs, training data) is the slice-by-slice path: each slice's I0
    from its own noise, each realisation from its own seed, bit for bit."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:128, :128]
    body = np.hypot(yy - 63.5, xx - 63.5) < 50
    slices = np.stack([np.where(body, 40.0, -1000.0) + rng.normal(0, s, (128, 128)) for s in (8.0, 20.0)])
    slices = slices.astype(np.float32)
    seeds = [[3, 4], [5, 6]]
    sim = LowDoseSimulator(LowDoseSettings(dose_fraction=0.25))
    ld, i0s = sim.simulate_slices(slices, (1.5, 1.5), seeds)
    assert ld.shape == (2, 2, 128, 128)
    assert i0s[0] > 4 * i0s[1]  # the quieter slice needs more photons
    for n in range(2):
        assert i0s[n] == sim.estimate_i0(slices[n], (1.5, 1.5))
        one = LowDoseSimulator(LowDoseSettings(dose_fraction=0.25, i0=float(i0s[n])))
        for r in range(2):
            assert np.array_equal(ld[n, r], one.simulate(slices[n], (1.5, 1.5), seeds[n][r])[0])
    with pytest.raises(ValueError, match="as many seeds for each"):
        sim.simulate_slices(slices, (1.5, 1.5), [[1, 2], [3]])
    # a smaller FBP batch (what simulate-low-dose picks under a memory limit): slice by slice, as
    # the progress calls show, and the same images
    calls = []
    small = LowDoseSimulator(LowDoseSettings(dose_fraction=0.25), fbp_batch=1)
    ld1, i0s1 = small.simulate_slices(slices, (1.5, 1.5), seeds, progress=calls.append)
    assert calls == [1, 1] and np.array_equal(ld1, ld) and np.array_equal(i0s1, i0s)
    with pytest.raises(ValueError, match="fbp_batch must be at least 1"):
        LowDoseSimulator(fbp_batch=0)
