"""The analysis methods on real CT: A (noise-referenced test) and B (structure findings) on
simulated repeat scans of the shared data with planted truth; C (probes) on the demo slice with
denoisers whose invariances are known (identity, clipping, Gaussian smoothing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from CTInvariancesLib.analysis import noise_referenced_test, structure_alterations, structure_probe
from CTInvariancesLib.analysis.probes import disc_profile
from CTInvariancesLib.denoisers.loading import Denoiser


@pytest.fixture(scope="module")
def demo_slice():
    from pydicom.data import get_testdata_file

    from CTInvariancesLib.io import read_volume

    vol = read_volume(get_testdata_file("explicit_VR-UN.dcm"))
    return vol.array[0], (vol.spacing[1], vol.spacing[0])


def _liver_centre(x, spacing, radius_mm=8.0):
    s = ndimage.gaussian_filter(x, 3)
    ok = ndimage.binary_erosion((s > 30) & (s < 90), iterations=int(radius_mm / spacing[0]) + 2)
    idx = np.argwhere(ok)
    r, c = idx[len(idx) // 2]
    return (r * spacing[0], c * spacing[1])


def _smoother(sigma_px: float):
    k = torch.arange(-12, 13, dtype=torch.float32)
    g = torch.exp(-(k**2) / (2 * sigma_px**2))
    g = g / g.sum()

    def f(t):
        t = torch.nn.functional.conv2d(
            torch.nn.functional.pad(t, (12, 12, 0, 0), mode="replicate"), g.view(1, 1, 1, -1)
        )
        return torch.nn.functional.conv2d(
            torch.nn.functional.pad(t, (0, 0, 12, 12), mode="replicate"), g.view(1, 1, -1, 1)
        )

    return f


def test_probe_identity_erases_nothing(demo_slice):
    x, sp = demo_slice
    den = Denoiser(lambda t: t, "identity", input_convention="hu")
    r = structure_probe(den, x, sp, [_liver_centre(x, sp)], 5.0, 40.0)
    assert abs(r.erasure[0]) < 0.02 and r.transfer[0] > 0.98


def test_probe_clipping_erases_bright_keeps_soft(demo_slice):
    x, sp = demo_slice
    den = Denoiser(lambda t: torch.clamp(t, max=100.0), "clip", input_convention="hu")
    c = _liver_centre(x, sp)
    bright = structure_probe(den, x, sp, [c], 8.0, 200.0)  # liver + 200 HU: above the clip
    soft = structure_probe(den, x, sp, [c], 8.0, 20.0)  # stays below it
    assert bright.erasure[0] > 0.8
    assert soft.erasure[0] < 0.1 and soft.transfer[0] > 0.9


def test_probe_smoother_erases_small_keeps_large(demo_slice):
    x, sp = demo_slice
    den = Denoiser(_smoother(3.0 / sp[0]), "gauss-3mm", input_convention="hu")
    c = _liver_centre(x, sp)
    small = structure_probe(den, x, sp, [c], 2.0, 10.0)
    large = structure_probe(den, x, sp, [c], 15.0, 100.0)
    assert small.erasure[0] > 0.7, small.erasure
    assert large.erasure[0] < 0.3, large.erasure
    # f's own contrast transfer says the same, the other way round
    assert small.transfer[0] < 0.2 < 0.6 < large.transfer[0]


def test_probes_far_apart_share_an_input(demo_slice):
    """Several probes in one consistency problem give each its own answer."""
    x, sp = demo_slice
    den = Denoiser(lambda t: torch.clamp(t, max=100.0), "clip", input_convention="hu")
    c = np.array(_liver_centre(x, sp))
    together = structure_probe(den, x, sp, [c, c + [0.0, 60.0]], 8.0, 200.0, min_separation_mm=40.0)
    alone = structure_probe(den, x, sp, [c], 8.0, 200.0)
    assert abs(together.erasure[0] - alone.erasure[0]) < 0.02


@pytest.mark.parametrize(
    "centre, diameter, match",
    [
        ((-5.0, 10.0), 5.0, "outside the image"),
        ((3.0, 3.0), 5.0, "outside the body"),
        (None, 1.0, "below two pixels"),
    ],
)
def test_probe_bad_input(demo_slice, centre, diameter, match):
    x, sp = demo_slice
    den = Denoiser(lambda t: t, "identity", input_convention="hu")
    with pytest.raises(ValueError, match=match):
        structure_probe(den, x, sp, [centre or _liver_centre(x, sp)], diameter, 20.0)


def test_method_a_bad_input(demo_slice):
    x, sp = demo_slice
    with pytest.raises(ValueError, match="at least 2 samples"):
        noise_referenced_test(x, x[None], sp)
    with pytest.raises(ValueError, match="samples must be"):
        noise_referenced_test(x, np.stack([x, x])[:, :100], sp)
    bad = np.stack([x, x]).copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        noise_referenced_test(x, bad, sp)


@pytest.fixture(scope="module")
def repeat_scans(abdomen_dir):
    """Six 25 % dose realisations of held-out abdomen slice 16 (liver), cached."""
    from CTInvariancesLib.datasets import slice_realisations

    return slice_realisations("abdomen-siemens-20", 16, 6, seed=20260)


@pytest.fixture(scope="module")
def reference(repeat_scans):
    from CTInvariancesLib.analysis import build_reference

    ld, fd, px = repeat_scans
    return build_reference(ld[0], px, seed=16)


def test_method_a_null_and_power(repeat_scans, reference):
    ld, fd, px = repeat_scans
    null = noise_referenced_test(ld[0], ld[1:], px, reference=reference)
    assert null.altered.sum() <= 1, null.p_values  # 5 repeat scans: expected 0.25 at alpha 0.05
    c = _liver_centre(fd, px, 6.0)
    disc = 40.0 * disc_profile(fd.shape, px, c, 10.0)
    res = noise_referenced_test(ld[0], np.stack([ld[1] + disc, ld[2]]), px, reference=reference)
    r0, c0 = int(round(c[0] / px[0])), int(round(c[1] / px[1]))
    assert res.p_values[0] < 1e-3 and res.maps[0][r0, c0]
    assert res.frequency[r0, c0] == pytest.approx(0.5 if not res.altered[1] else 1.0)


def test_method_b_finds_a_planted_nodule(repeat_scans, reference, abdomen_dir):
    from CTInvariancesLib.analysis import build_reference
    from CTInvariancesLib.datasets import slice_realisations

    ld, fd, px = repeat_scans
    noise_only = structure_alterations(ld[0], ld[1:], px, reference=reference)
    assert noise_only.counts().mean() <= 0.2
    # lung: training slice 0 holds the lung bases
    ldl, fdl, _ = slice_realisations("abdomen-siemens-20", 0, 2, seed=20260)
    ref = build_reference(ldl[0], px, seed=0)
    s = ndimage.gaussian_filter(fdl, 2.0)
    from CTInvariancesLib.metrics import body_mask

    ok = ndimage.binary_erosion(s < -700, iterations=6) & ndimage.binary_erosion(
        body_mask(fdl), iterations=10
    )
    r, col = np.argwhere(ok)[0]
    cen = (r * px[0], col * px[1])
    prof = disc_profile(fdl.shape, px, cen, 6.0)
    nodule = prof * (40.0 - ndimage.gaussian_filter(fdl, 1.0))
    true_area = float(prof.sum() * px[0] * px[1])
    for kind, x, sample in (("appeared", ldl[0], ldl[1] + nodule), ("disappeared", ldl[0] + nodule, ldl[1])):
        res = structure_alterations(x, sample[None], px, reference=ref)
        assert len(res.findings) >= 1
        f = min(res.findings, key=lambda f: np.hypot(f.centroid_mm[0] - cen[0], f.centroid_mm[1] - cen[1]))
        assert f.kind == kind
        assert np.hypot(f.centroid_mm[0] - cen[0], f.centroid_mm[1] - cen[1]) <= 2.0
        assert abs(f.area_mm2 - true_area) / true_area <= 0.3
        assert res.labels[int(r), int(col)] == f.id
