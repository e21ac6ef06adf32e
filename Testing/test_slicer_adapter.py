"""The run-folder -> MRML adapter against the real MRML layer (slicer-core, no Qt): a real DICOM
series read through slicer-core's reader, the main job run on it by the CLI (as the module's logic
does), results turned into volume, sequence, segmentation and table nodes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs slicer-core (pip install slicer-core)")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package is not slicer-core", allow_module_level=True)
import vtk  # noqa: E402
from CTInvariancesSlicer import RUN_ATTRIBUTE, load_results, volume_to_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
K = 3
FIRST = 8  # the run covers slices 8 and 9 of the series


def _matrix(node) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


@pytest.fixture(scope="module")
def scene_and_input(abdomen_dir):
    slicer.mrmlScene = slicer.vtkMRMLScene()
    files = sorted(p for p in abdomen_dir.iterdir() if p.name.startswith("CT"))
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "abdomen")
    storage = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(files[0]))
    for f in files:
        storage.AddFileName(str(f))
    assert storage.ReadData(node), "slicer-core could not read the DICOM series"
    return slicer.mrmlScene, node


@pytest.fixture(scope="module")
def run_dir(scene_and_input, tmp_path_factory):
    scene, node = scene_and_input
    tmp = tmp_path_factory.mktemp("slicer")
    volume = volume_to_file(node, tmp / "input.nrrd")
    out = tmp / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "CTInvariancesLib.cli.main",
            "run",
            str(volume),
            "--denoiser",
            "cnn10",
            "--samples",
            str(K),
            "--slices",
            f"{FIRST}:{FIRST + 2}",
            "--sampler",
            "noise",
            "--consistency",
            "2",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "CTInvariances")},
    )
    assert proc.returncode == 0, proc.stderr
    return out


def test_dicom_read_through_slicer_core_is_hu(scene_and_input):
    _, node = scene_and_input
    a = slicer.util.arrayFromVolume(node)
    assert a.shape == (20, 512, 512) and a.min() <= -1000 and 500 < a.max() < 3000


def test_results_become_nodes_on_the_input_geometry(scene_and_input, run_dir):
    scene, node = scene_and_input
    before = slicer.util.arrayFromVolume(node).copy()
    nodes = load_results(run_dir, node)["cnn10"]
    assert {
        "denoised",
        "samples",
        "browser",
        "std_map",
        "alteration_map",
        "segmentation",
        "findings",
        "per_sample",
    } <= set(nodes)
    # the same grid: voxel (i, j, 0) of an output is voxel (i, j, FIRST) of the input
    shift = np.eye(4)
    shift[2, 3] = FIRST
    for key in ("denoised", "std_map", "alteration_map"):
        np.testing.assert_allclose(_matrix(nodes[key]), _matrix(node) @ shift, atol=1e-6)
        assert slicer.util.arrayFromVolume(nodes[key]).shape == (2, 512, 512)
    seq = nodes["samples"]
    assert seq.GetNumberOfDataNodes() == K
    np.testing.assert_allclose(_matrix(seq.GetNthDataNode(0)), _matrix(node) @ shift, atol=1e-6)
    assert nodes["browser"].GetMasterSequenceNode() is seq
    maps = nodes["significance_maps"]  # method A per sample, stepping with the samples
    assert maps.GetNumberOfDataNodes() == K and nodes["browser"].IsSynchronizedSequenceNode(maps.GetID())
    sample0 = slicer.util.arrayFromVolume(seq.GetNthDataNode(0))
    assert np.abs(sample0 - before[FIRST : FIRST + 2]).mean() > 0.1  # a sample, not the input
    seg = nodes["segmentation"]
    names = [
        seg.GetSegmentation().GetNthSegment(i).GetName()
        for i in range(seg.GetSegmentation().GetNumberOfSegments())
    ]
    assert names == ["alteration: appeared", "alteration: disappeared", "alteration: changed class"]
    geometry = seg.GetSegmentation().GetConversionParameter("Reference image geometry")
    values = [float(v) for v in geometry.strip(";").split(";")]
    np.testing.assert_allclose(np.reshape(values[:16], (4, 4)), _matrix(node), atol=1e-4)
    assert values[16:] == [0, 511, 0, 511, 0, 19]  # the whole input grid
    assert nodes["per_sample"].GetNumberOfRows() == 2 * K
    assert nodes["per_sample"].GetTable().GetColumnByName("p_value") is not None
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), before)  # input untouched


def test_rerun_replaces_its_own_nodes_only(scene_and_input, run_dir):
    scene, node = scene_and_input
    user = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "abdomen cnn10 denoised")  # the user's
    load_results(run_dir, node)
    count = sum(1 for n in scene.GetNodes() if n.GetAttribute(RUN_ATTRIBUTE))
    again = load_results(run_dir, node)["cnn10"]
    assert sum(1 for n in scene.GetNodes() if n.GetAttribute(RUN_ATTRIBUTE)) == count
    assert scene.GetNodeByID(user.GetID()) is user
    sh = scene.GetSubjectHierarchyNode()
    assert sh.GetItemParent(again["folder"]) == (
        sh.GetItemParent(sh.GetItemByDataNode(node)) or sh.GetSceneItemID()
    )
    assert sh.GetItemParent(sh.GetItemByDataNode(again["denoised"])) == again["folder"]


def test_unfinished_run_folder_is_refused(scene_and_input, tmp_path):
    _, node = scene_and_input
    with pytest.raises(FileNotFoundError, match="not a finished run"):
        load_results(tmp_path, node)


def _synthetic_node(scene):
    yy, xx = np.mgrid[:192, :192]
    body = (yy - 96) ** 2 + (xx - 96) ** 2 < 80**2
    ct = np.where(body, 40.0, -1000.0).astype(np.float32)[None]
    ct += np.random.default_rng(0).normal(0, 15, ct.shape).astype(np.float32) * body
    node = slicer.util.addVolumeFromArray(ct, name="synthetic")
    node.SetSpacing(1.0, 1.0, 2.0)
    return node, ct


def test_logic_runs_the_job_in_a_child_process_and_loads_nodes(scene_and_input):
    """What the module's self-test does, and the Python-console path of the README."""
    from CTInvariancesSlicer.logic import CTInvariancesLogic, RunParameters

    node, ct = _synthetic_node(scene_and_input[0])
    logic = CTInvariancesLogic()
    params = RunParameters(denoisers=["cnn10"], samples=2, consistency=1, sampler="noise", device="cpu")
    job = logic.start(node, params)
    assert logic.poll(job, wait=True) and job.error is None, job.log
    assert job.total == 1 and job.done == 1  # progress lines were parsed
    nodes = logic.finish(job)["cnn10"]
    assert nodes["samples"].GetNumberOfDataNodes() == 2
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), ct)


def test_logic_cancel_ends_the_child_and_leaves_nothing(scene_and_input):
    import time

    from CTInvariancesSlicer.logic import CTInvariancesLogic, RunParameters

    node, _ = _synthetic_node(scene_and_input[0])
    logic = CTInvariancesLogic()
    job = logic.start(node, RunParameters(denoisers=["cnn10"], samples=64, sampler="noise", device="cpu"))
    time.sleep(3)
    logic.cancel(job)
    assert job.process.poll() is not None and job.error == "cancelled"
    assert not job.work_dir.exists()
    with pytest.raises(RuntimeError, match="cancelled"):
        logic.finish(job)


def test_logic_failure_gives_the_cli_one_line_error(scene_and_input):
    from CTInvariancesSlicer.logic import CTInvariancesLogic, RunParameters

    node, _ = _synthetic_node(scene_and_input[0])
    logic = CTInvariancesLogic()
    job = logic.start(node, RunParameters(denoisers=["no-such-denoiser"], samples=2, device="cpu"))
    logic.poll(job, wait=True)
    assert job.error and job.error.startswith("error:") and "\n" not in job.error
    assert "Traceback" not in "\n".join(job.log)


def _bad_nodes(scene):
    """Volume nodes a user can pick that hold no usable CT, with what the message must say."""
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty volume")
    nan = np.zeros((2, 16, 16), np.float32)
    nan[1, 3, 4] = np.nan
    nan_node = slicer.util.addVolumeFromArray(nan, name="volume with NaN")
    flat = slicer.util.addVolumeFromArray(np.zeros((2, 16, 16), np.float32), name="zero spacing")
    flat.SetSpacing(1.0, 0.0, 1.0)
    rgb = slicer.util.addVolumeFromArray(
        np.zeros((2, 16, 16, 3), np.uint8), name="colour", nodeClassName="vtkMRMLVectorVolumeNode"
    )
    label = slicer.util.addVolumeFromArray(
        np.zeros((2, 16, 16), np.int16), name="a labelmap", nodeClassName="vtkMRMLLabelMapVolumeNode"
    )
    return [
        (empty, "holds no image data"),
        (nan_node, "1 voxels are NaN"),
        (flat, "spacing"),
        (rgb, "3 components per voxel"),
        (label, "not a CT"),
        (None, "choose a CT volume"),
    ]


def test_a_bad_volume_node_gives_a_message_and_starts_nothing(scene_and_input, tmp_path):
    from CTInvariancesSlicer.logic import CTInvariancesLogic, InputNodeError, RunParameters

    logic = CTInvariancesLogic()
    for node, why in _bad_nodes(scene_and_input[0]):
        work = tmp_path / f"work-{id(node)}"
        before = None if node is None else node.GetMTime()
        with pytest.raises(InputNodeError, match=why) as info:
            logic.start(node, RunParameters(samples=2, device="cpu"), work_dir=work)
        assert "\n" not in str(info.value)
        assert node is None or node.GetName() in str(info.value)
        assert not work.exists()  # nothing written, no child started
        assert node is None or node.GetMTime() == before


def test_segments_round_trip_and_become_a_label_image_on_the_input_grid(scene_and_input, tmp_path):
    """What the probe section does with a segmentation: each segment one label value, written on the
    input volume's grid, so that `probe --mask` accepts it."""
    from CTInvariancesSlicer.results import (
        _ensure_segmentation_rules,
        mask_to_segment,
        segments_to_file,
        segments_to_labels,
    )

    from CTInvariancesLib.io import read_volume

    node, _ = _synthetic_node(scene_and_input[0])
    node.SetOrigin(-12.0, 30.0, 7.5)
    _ensure_segmentation_rules()  # Slicer does this at start-up
    seg = scene_and_input[0].AddNewNodeByClass("vtkMRMLSegmentationNode", "lesions")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(node)
    masks = np.zeros((2, 1, 192, 192), np.uint8)
    masks[0, 0, 50:58, 60:70] = 1
    masks[1, 0, 120:140, 100:104] = 1
    for name, mask in zip(("lesion A", "lesion B"), masks):
        sid = seg.GetSegmentation().AddEmptySegment("", name)
        mask_to_segment(mask, seg, sid, node)
    labels, names = segments_to_labels(seg, node)
    assert names == ["lesion A", "lesion B"]
    np.testing.assert_array_equal(labels, masks[0] + 2 * masks[1])
    assert segments_to_file(seg, node, tmp_path / "labels.nrrd") == names
    written, ct = (
        read_volume(tmp_path / "labels.nrrd"),
        read_volume(volume_to_file(node, tmp_path / "ct.nrrd")),
    )
    assert written.shape == ct.shape
    for what in ("spacing", "origin", "direction"):
        np.testing.assert_allclose(getattr(written, what), getattr(ct, what), atol=1e-6)
    np.testing.assert_array_equal(written.array, labels)
    assert not [n for n in slicer.util.getNodes("__ctinvariances_temp__*")]  # no helper nodes left


def test_results_follow_the_input_s_transform(scene_and_input, run_dir):
    """A registered input (under a transform) gets its results under the same transform."""
    scene, node = scene_and_input
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    node.SetAndObserveTransformNodeID(transform.GetID())
    try:
        nodes = load_results(run_dir, node)["cnn10"]
        for key in ("denoised", "std_map", "alteration_map", "segmentation"):
            assert nodes[key].GetTransformNodeID() == transform.GetID(), key
        proxy = nodes["browser"].GetProxyNode(nodes["samples"])
        assert proxy is not None and proxy.GetTransformNodeID() == transform.GetID()
    finally:
        node.SetAndObserveTransformNodeID(None)
        scene.RemoveNode(transform)
