"""Reading real CT and writing NRRD/NIfTI keeps values and geometry."""

from __future__ import annotations

import numpy as np
import pytest

from CTInvariancesLib.io import CTVolume, parse_slices, read_volume, write_volume


def _assert_same(a: CTVolume, b: CTVolume, geom_tol: float) -> None:
    assert a.shape == b.shape
    assert np.array_equal(a.array, b.array)
    np.testing.assert_allclose(a.spacing, b.spacing, atol=geom_tol, rtol=0)
    np.testing.assert_allclose(a.origin, b.origin, atol=geom_tol, rtol=0)
    np.testing.assert_allclose(a.direction, b.direction, atol=geom_tol, rtol=0)


@pytest.mark.parametrize("suffix,tol", [(".nrrd", 1e-12), (".nii.gz", 1e-5)])
def test_roundtrip_abdomen_jpeg2000(abdomen_dir, tmp_path, suffix, tol):
    vol = read_volume(abdomen_dir)
    assert vol.shape == (20, 512, 512)
    assert vol.array.dtype == np.float32
    assert vol.array.min() == -1024.0  # HU: air, rescale intercept applied
    assert vol.tags["kernel"].startswith("Br38f") and vol.tags["kvp"] == 120.0
    assert vol.spacing == pytest.approx((0.9765625, 0.9765625, 2.0))
    out = write_volume(vol, tmp_path / f"abd{suffix}")
    again = read_volume(out)
    # NIfTI stores geometry in float32 (qform/sform), hence its looser tolerance
    _assert_same(vol, again, tol)
    _assert_same(again, read_volume(write_volume(again, tmp_path / f"abd2{suffix}")), tol)


def test_roundtrip_head_tilted(head_dir, tmp_path):
    vol = read_volume(head_dir)
    assert vol.tags["gantry_tilt_deg"] == pytest.approx(18.5, abs=0.05)
    _assert_same(vol, read_volume(write_volume(vol, tmp_path / "head.nrrd")), 1e-12)


def test_roundtrip_phantom_mhd(phantom_dir, tmp_path):
    vol = read_volume(phantom_dir / "dose_100" / "signal_absent" / "signal_absent.mhd")
    assert vol.shape == (10, 256, 256)
    _assert_same(vol, read_volume(write_volume(vol, tmp_path / "ph.nrrd")), 1e-12)
    _assert_same(vol, read_volume(write_volume(vol, tmp_path / "ph.mha")), 1e-12)


def test_roundtrip_ct_small(ct_small, tmp_path):
    import pydicom

    vol = read_volume(ct_small)
    ds = pydicom.dcmread(ct_small)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert np.array_equal(vol.array[0], expected.astype(np.float32))
    assert vol.origin == pytest.approx(tuple(float(v) for v in ds.ImagePositionPatient))
    for suffix, tol in ((".nrrd", 1e-12), (".nii", 1e-5)):
        _assert_same(vol, read_volume(write_volume(vol, tmp_path / f"s{suffix}")), tol)


def test_dicom_matches_pydicom_on_every_slice(abdomen_dir):
    import pydicom

    vol = read_volume(abdomen_dir)
    files = sorted(p for p in abdomen_dir.iterdir() if p.name.startswith("CT"))
    by_z = {}
    for f in files:
        ds = pydicom.dcmread(f)
        by_z[float(ds.ImagePositionPatient[2])] = pydicom.pixels.apply_rescale(ds.pixel_array, ds)
    for k, z in enumerate(vol.tags["slice_positions_mm"]):
        assert np.array_equal(vol.array[k], by_z[z].astype(np.float32))


def test_tilt_resampled_geometry_is_orthogonal_and_correct(head_dir):
    import pydicom

    vol = read_volume(head_dir, tilt="resample")
    d = vol.direction_matrix
    np.testing.assert_allclose(d.T @ d, np.eye(3), atol=1e-9)
    # a pixel of an acquired slice sits at the same physical point in the resampled volume
    files = sorted(head_dir.glob("*.dcm"))
    ds = pydicom.dcmread(files[10])
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    j, i = 256, 300
    p = ipp + i * float(ds.PixelSpacing[1]) * iop[:3] + j * float(ds.PixelSpacing[0]) * iop[3:]
    idx = np.linalg.solve(d * np.asarray(vol.spacing), p - np.asarray(vol.origin))
    k = int(round(idx[2]))
    assert abs(idx[2] - k) < 1e-3  # lies on a resampled slice plane
    raw = pydicom.pixels.apply_rescale(ds.pixel_array, ds).astype(np.float64)
    from scipy import ndimage

    got = ndimage.map_coordinates(vol.array[k].astype(np.float64), [[idx[1]], [idx[0]]], order=1)[0]
    local = raw[j - 1 : j + 2, i - 1 : i + 2]
    assert local.min() - 1 <= got <= local.max() + 1
    kept = read_volume(head_dir, tilt="keep")
    assert np.array_equal(kept.array[10], raw.astype(np.float32))


def test_select_slices_updates_origin(abdomen_dir):
    vol = read_volume(abdomen_dir)
    sub = vol.select_slices(parse_slices("5:8"))
    assert sub.shape == (3, 512, 512)
    assert np.array_equal(sub.array, vol.array[5:8])
    np.testing.assert_allclose(sub.origin, vol.index_to_physical(5, 0, 0))
    assert sub.source_slice_indices == [5, 6, 7]
    assert sub.select_slices(parse_slices("-1:")).source_slice_indices == [7]
    assert sub.tags["slice_positions_mm"] == vol.tags["slice_positions_mm"][5:8]
    assert parse_slices("3") == slice(3, 4)
    assert parse_slices(None) == slice(None)


def test_written_files_get_normal_permissions(ct_small, tmp_path):
    import os
    import stat

    out = write_volume(read_volume(ct_small), tmp_path / "o.nrrd")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    assert not list(tmp_path.glob(".partial-*"))
