"""Bad input: each case gets its own, specific message naming the file; nothing is written."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from adversarial import dicom_slice

from conftest import pydicom_test_file
from CTInvariancesLib.errors import InputError
from CTInvariancesLib.io import parse_slices, read_volume
from CTInvariancesLib.io.dicom import read_dicom_file


def _ct_slice(ct_small: Path, dest: Path, z: float = 0.0, series: str | None = None, **changes):
    return dicom_slice(dest, z=z, series=series, source=ct_small, **changes)


def _series(ct_small, folder: Path, zs, series="1.2.3.4", **changes):
    for n, z in enumerate(zs):
        _ct_slice(ct_small, folder / f"s{n:03d}.dcm", z=z, series=series, **changes)
    return folder


def _raises(path, match, **kw):
    with pytest.raises(InputError, match=match) as info:
        read_volume(path, **kw)
    return info.value


def test_missing_path(tmp_path):
    err = _raises(tmp_path / "nope", "no such file or folder")
    assert err.path == str(tmp_path / "nope")


def test_empty_folder(tmp_path):
    _raises(tmp_path, "folder is empty")


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "image.png").write_bytes(b"\x89PNG....")
    err = _raises(tmp_path, r"no DICOM files in this folder \(2 other files")
    assert err.path == str(tmp_path)


def test_several_series_listed_and_picked(ct_small, tmp_path):
    _series(ct_small, tmp_path, [0, 5, 10], series="1.2.3.100")
    _series(ct_small, tmp_path / "x", [0, 5], series="1.2.3.200")
    for f in (tmp_path / "x").iterdir():
        shutil.move(f, tmp_path / f"b_{f.name}")
    err = _raises(tmp_path, "holds 2 series, pick one with --series UID")
    assert "1.2.3.100: 3 files" in str(err) and "1.2.3.200: 2 files" in str(err)
    assert read_volume(tmp_path, series_uid="1.2.3.200").shape == (2, 128, 128)
    _raises(tmp_path, "no series 9.9.9 here", series_uid="9.9.9")


def test_non_ct_modality(ct_small, tmp_path):
    _ct_slice(ct_small, tmp_path / "mr.dcm", Modality="MR")
    err = _raises(tmp_path / "mr.dcm", "modality is MR, not CT")
    assert err.path.endswith("mr.dcm")
    _raises(pydicom_test_file("MR_small.dcm"), "modality is MR, not CT")


def test_no_pixel_data(ct_small, tmp_path):
    _ct_slice(ct_small, tmp_path / "np.dcm", PixelData=None)
    _raises(tmp_path / "np.dcm", "has no pixel data")


def test_truncated_file(ct_small, tmp_path):
    data = ct_small.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 5000])
    err = _raises(tmp_path / "cut.dcm", "truncated")
    assert err.path.endswith("cut.dcm")
    _raises(pydicom_test_file("MR_truncated.dcm"), "modality is MR|truncated")


def test_truncated_file_in_series_is_named(ct_small, tmp_path):
    _series(ct_small, tmp_path, [0, 5, 10])
    victim = tmp_path / "s001.dcm"
    victim.write_bytes(victim.read_bytes()[:-3000])
    err = _raises(tmp_path, "truncated")
    assert err.path.endswith("s001.dcm")


def test_missing_rescale_refused_when_not_hu(ct_small, tmp_path):
    # CT_small stores HU + 1024 (intercept -1024): without the tags the values are not HU
    _ct_slice(ct_small, tmp_path / "raw.dcm", RescaleSlope=None, RescaleIntercept=None)
    _raises(tmp_path / "raw.dcm", "RescaleSlope/RescaleIntercept missing .* do not look like HU")


def test_missing_rescale_accepted_when_values_are_hu(head_dir, tmp_path):
    src = sorted(head_dir.glob("*.dcm"))[5]
    ds = pydicom.dcmread(src)
    del ds.RescaleSlope, ds.RescaleIntercept
    ds.save_as(tmp_path / "hu.dcm")
    vol = read_volume(tmp_path / "hu.dcm")
    assert vol.array.min() < -900  # signed HU kept as they are


def test_missing_slices_warn_with_gap_positions(abdomen_dir, tmp_path):
    files = sorted(p for p in abdomen_dir.iterdir() if p.name.startswith("CT"))
    for f in files[:6] + files[8:]:  # drop two slices
        shutil.copy(f, tmp_path / f.name)
    vol = read_volume(tmp_path)
    assert vol.shape[0] == 18
    (warning,) = [w for w in vol.warnings if "inconsistent slice spacing" in w]
    assert "6.00 mm between" in warning and "about 2 missing slices" in warning


def test_duplicate_slice_positions(ct_small, tmp_path):
    _series(ct_small, tmp_path, [0, 5, 5, 10])
    _raises(tmp_path, r"two slices at the same position \(5.00 mm\)")


def test_gantry_tilt_refused_or_resampled(head_dir):
    err = _raises(head_dir, "gantry tilt of 18.5 degrees .*--tilt resample", tilt="refuse")
    assert err.path == str(head_dir)
    vol = read_volume(head_dir)
    assert any("gantry tilt of 18.5 degrees" in w and "shifted in-plane" in w for w in vol.warnings)


def test_multiframe_file(ct_small, tmp_path):
    ds = pydicom.dcmread(ct_small)
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    ds.save_as(tmp_path / "mf.dcm")
    _raises(tmp_path / "mf.dcm", "is a multi-frame DICOM \\(2 frames")


def test_2d_only_file_without_geometry(ct_small, tmp_path):
    _ct_slice(ct_small, tmp_path / "sc.dcm")
    ds = pydicom.dcmread(tmp_path / "sc.dcm")
    del ds.ImagePositionPatient, ds.ImageOrientationPatient
    ds.save_as(tmp_path / "sc.dcm")
    _raises(tmp_path / "sc.dcm", "is a 2-D-only image: it has no ImagePositionPatient")


def test_colour_image(tmp_path):
    src = pydicom_test_file("SC_rgb_rle.dcm")
    ds = pydicom.dcmread(src)
    ds.Modality = "CT"
    ds.save_as(tmp_path / "rgb.dcm")
    _raises(tmp_path / "rgb.dcm", "is a colour image")


@pytest.mark.parametrize("name,what", [("rtstruct.dcm", "an RT Structure Set"), ("rtplan.dcm", "an RT Plan")])
def test_non_image_dicom(name, what):
    err = _raises(pydicom_test_file(name), f"is {what} object .* not an image")
    assert err.path.endswith(name)


def test_segmentation_object(ct_small, tmp_path):
    _ct_slice(ct_small, tmp_path / "seg.dcm", Modality="SEG", SOPClassUID="1.2.840.10008.5.1.4.1.1.66.4")
    _raises(tmp_path / "seg.dcm", "is a Segmentation object .*modality SEG.*not an image")


def test_unreadable_nrrd_header(tmp_path):
    (tmp_path / "bad.nrrd").write_text("this is not a nrrd header\n")
    _raises(tmp_path / "bad.nrrd", "unreadable NRRD header: the file must start with 'NRRD000x'")
    (tmp_path / "bad2.nrrd").write_text("NRRD0004\ntype: floaty\ndimension: 3\nsizes: 2 2\n\n")
    _raises(tmp_path / "bad2.nrrd", "unreadable NRRD header")


def test_metaimage_missing_data_file(tmp_path):
    (tmp_path / "v.mhd").write_text(
        "ObjectType = Image\nNDims = 2\nDimSize = 4 4\nElementType = MET_SHORT\nElementDataFile = v.raw\n"
    )
    _raises(tmp_path / "v.mhd", "MetaImage data file 'v.raw' is missing")


def test_empty_and_unsupported_files(tmp_path):
    (tmp_path / "e.dcm").write_bytes(b"")
    _raises(tmp_path / "e.dcm", "file is empty")
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n")
    _raises(tmp_path / "x.png", "unsupported file type")
    (tmp_path / "y.dcm").write_bytes(b"garbage" * 100)
    _raises(tmp_path / "y.dcm", "not a DICOM file")


def test_mixed_orientations(ct_small, tmp_path):
    _series(ct_small, tmp_path, [0, 5])
    _ct_slice(
        ct_small, tmp_path / "s009.dcm", z=10, series="1.2.3.4", ImageOrientationPatient=[0, 1, 0, 0, 0, -1]
    )
    _raises(tmp_path, "slice orientation differs")


def test_slices_selecting_nothing(ct_small):
    vol = read_dicom_file(ct_small)
    with pytest.raises(InputError, match="--slices 5:9 selects no slice of a volume with 1 slices"):
        vol.select_slices(parse_slices("5:9"))
    with pytest.raises(InputError, match="not of the form a:b"):
        parse_slices("x:y")


def test_nothing_written_next_to_input(abdomen_dir, head_dir, tmp_path):
    before = {d: sorted(p.name for p in d.iterdir()) for d in (abdomen_dir, head_dir)}
    read_volume(abdomen_dir)
    read_volume(head_dir)
    assert {d: sorted(p.name for p in d.iterdir()) for d in before} == before


def test_user_file_not_modified(ct_small, tmp_path):
    f = _ct_slice(ct_small, tmp_path / "a.dcm")
    data = f.read_bytes()
    vol = read_volume(f)
    vol.array[:] = 0  # mutating the result never reaches the file
    assert f.read_bytes() == data
    assert np.any(read_volume(f).array != 0)


def test_preamble_less_non_image_in_folder_is_named(tmp_path):
    shutil.copy(pydicom_test_file("rtstruct.dcm"), tmp_path / "rs")
    _raises(tmp_path, "is an RT Structure Set object")


def test_empty_slice_file_in_a_series_is_named(ct_small, tmp_path):
    folder = _series(ct_small, tmp_path / "s", [0.0, 1.0, 2.0, 3.0])
    (folder / "s002.dcm").write_bytes(b"")
    err = _raises(folder, "is empty")
    assert "s002.dcm" in str(err)


def test_unreadable_slice_file_in_a_series_is_named(ct_small, tmp_path):
    folder = _series(ct_small, tmp_path / "s", [0.0, 1.0, 2.0])
    (folder / "s001.dcm").write_bytes(b"not dicom at all" * 10)
    assert "s001.dcm" in str(_raises(folder, "not a readable DICOM"))


def test_pixel_spacing_differing_per_slice(ct_small, tmp_path):
    folder = _series(ct_small, tmp_path / "s", [0.0, 1.0])
    _ct_slice(ct_small, folder / "s002.dcm", z=2.0, series="1.2.3.4", PixelSpacing=[0.9, 0.9])
    assert "s002.dcm" in str(_raises(folder, "PixelSpacing"))


def test_bits_allocated_differing_per_slice(ct_small, tmp_path):
    folder = _series(ct_small, tmp_path / "s", [0.0, 1.0])
    _ct_slice(ct_small, folder / "s002.dcm", z=2.0, series="1.2.3.4", BitsStored=12)
    assert "s002.dcm" in str(_raises(folder, "BitsStored"))


def test_rescale_slope_zero(ct_small, tmp_path):
    folder = _series(ct_small, tmp_path / "s", [0.0, 1.0])
    _ct_slice(ct_small, folder / "s002.dcm", z=2.0, series="1.2.3.4", RescaleSlope=0)
    assert "s002.dcm" in str(_raises(folder, "RescaleSlope is 0"))


def test_bits_allocated_that_does_not_match_the_pixels(ct_small, tmp_path):
    path = _ct_slice(ct_small, tmp_path / "a.dcm", BitsAllocated=8, BitsStored=8, HighBit=7)
    assert "a.dcm" in str(_raises(path, "does not describe the pixels"))


def test_tilted_irregular_series_kept_says_how_far_off_the_grid_is(head_dir):
    """The head series is tilted and irregularly spaced: keeping it says so, with the distance."""
    vol = read_volume(head_dir, tilt="keep")
    warning = next(w for w in vol.warnings if "irregular slice spacing" in w)
    off = float(warning.split("up to ")[1].split(" mm")[0])
    assert off > 5.0 and "real positions" in warning
    assert len(vol.tags["slice_positions_mm"]) == vol.shape[0]


@pytest.mark.parametrize("tilt", ["keep", "resample"])
def test_irregular_series_locates_points_on_the_real_slice_positions(head_dir, tilt):
    """Findings, probes and --at points use the positions the files record, not the regular grid
    (which misplaces slices of the head series by up to 23 mm kept, 60 mm resampled)."""
    files = sorted(head_dir.glob("*.dcm"))
    ipp = np.array(
        [
            [float(v) for v in pydicom.dcmread(f, stop_before_pixels=True, force=True).ImagePositionPatient]
            for f in files
        ]
    )
    vol = read_volume(head_dir, tilt=tilt)
    d = vol.direction_matrix
    normal = np.cross(d[:, 0], d[:, 1])
    ipp = ipp[np.argsort(ipp @ normal)]
    got = np.array([vol.index_to_physical(k, 0, 0) for k in range(vol.shape[0])])
    assert np.abs((got - ipp) @ normal).max() < 1e-3  # each slice at its recorded height
    if tilt == "keep":
        assert np.linalg.norm(got - ipp, axis=1).max() < 1e-3  # and at its recorded in-plane place
    for k, j, i in [(0, 10.0, 20.0), (7, 100.0, 200.0), (27, 500.0, 3.0), (12.5, 256.0, 256.0)]:
        np.testing.assert_allclose(
            vol.physical_to_index(vol.index_to_physical(k, j, i)), [k, j, i], atol=1e-6
        )
    sub = vol.select_slices(slice(5, 9)).crop_in_plane(slice(30, 200), slice(40, 300))
    np.testing.assert_allclose(sub.index_to_physical(1, 2, 3), vol.index_to_physical(6, 32, 43), atol=1e-3)
