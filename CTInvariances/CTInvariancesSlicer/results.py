"""Turn a run folder (``ctinvariances run`` or ``sample``) into MRML nodes on the input's geometry.

``load_results(run_dir, input_volume_node)`` creates, per denoiser: the denoised volume; the samples
as a sequence with a browser; the std map and the alteration frequency as overlay volumes with colour
tables; the alteration segmentation (reference geometry: the input); a findings table and a
per-sample table. All nodes sit in a subject-hierarchy folder under the input's study, are named
after the input and the denoiser, and carry the attribute ``CTInvariances.run``: a rerun replaces
its own nodes and never touches the user's. The input node is never modified.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import slicer
import vtk

RUN_ATTRIBUTE = "CTInvariances.run"
COLOUR_TABLES = {"std_map": "vtkMRMLColorTableNodeInferno", "alteration_map": "vtkMRMLColorTableNodeRainbow"}


def volume_to_file(volume_node, path: str | Path) -> Path:
    """Write the input volume (as the CLI reads it) without touching the node: a storage node of our
    own, removed again."""
    path = Path(path)
    storage = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    try:
        storage.SetFileName(str(path))
        storage.SetUseCompression(0)
        if not storage.WriteData(volume_node):
            raise OSError(f"could not write {volume_node.GetName()} to {path}")
    finally:
        slicer.mrmlScene.RemoveNode(storage)
    return path


def _read_nrrd(path: Path) -> np.ndarray:
    import nrrd

    data, header = nrrd.read(str(path), index_order="C")
    return np.asarray(data)


def _ijk_to_ras(input_node, first_slice: int) -> vtk.vtkMatrix4x4:
    m = vtk.vtkMatrix4x4()
    input_node.GetIJKToRASMatrix(m)
    if first_slice:
        shift = vtk.vtkMatrix4x4()
        shift.SetElement(2, 3, float(first_slice))
        out = vtk.vtkMatrix4x4()
        vtk.vtkMatrix4x4.Multiply4x4(m, shift, out)
        return out
    return m


def _place(sh, node, folder: int) -> None:
    """Put ``node`` under the subject-hierarchy ``folder`` (a bare scene makes no items itself)."""
    item = sh.GetItemByDataNode(node)
    if item:
        sh.SetItemParent(item, folder)
    else:
        sh.CreateItem(folder, node)


def _remove_earlier(scene, tag: str) -> None:
    for node in list(scene.GetNodes()):
        if node.GetAttribute(RUN_ATTRIBUTE) == tag:
            scene.RemoveNode(node)


def _volume(scene, array, ijk_to_ras, name, tag, folder, sh):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array, np.float32))
    node.SetIJKToRASMatrix(ijk_to_ras)
    node.SetAttribute(RUN_ATTRIBUTE, tag)
    _place(sh, node, folder)
    return node


def _colour(node, table_id: str, window: tuple[float, float] | None = None) -> None:
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is None:
        return
    if node.GetScene().GetNodeByID(table_id) is not None:
        display.SetAndObserveColorNodeID(table_id)
    if window is not None:
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(*window)


def _table(scene, path: Path, name: str, tag: str, folder, sh):
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    node.SetAttribute(RUN_ATTRIBUTE, tag)
    rows = list(csv.reader(open(path, newline=""))) if path.exists() else []
    header, body = (rows[0], rows[1:]) if rows else ([], [])
    table = node.GetTable()
    for j, column in enumerate(header):
        values = [r[j] for r in body]
        try:
            numbers = [float(v) for v in values]
            arr = vtk.vtkDoubleArray()
            for v in numbers:
                arr.InsertNextValue(v)
        except ValueError:
            arr = vtk.vtkStringArray()
            for v in values:
                arr.InsertNextValue(v)
        arr.SetName(column)
        table.AddColumn(arr)
    node.Modified()
    _place(sh, node, folder)
    return node


def _ensure_segmentation_rules() -> None:
    """Slicer registers the segmentation representations at start-up; slicer-core alone does not."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if factory.GetConverterRules():
        return
    factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
    factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())


def _temporary_labelmap(reference_node):
    """A labelmap node on the reference volume's grid (removed by the caller)."""
    node = reference_node.GetScene().AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__ctinvariances_temp__")
    m = vtk.vtkMatrix4x4()
    reference_node.GetIJKToRASMatrix(m)
    node.SetIJKToRASMatrix(m)
    return node


def _remove(node) -> None:
    scene = node.GetScene()
    display = node.GetDisplayNode()
    if display is not None:
        scene.RemoveNode(display)
    scene.RemoveNode(node)


def mask_to_segment(mask: np.ndarray, segmentation_node, segment_id: str, reference_node) -> None:
    """Set a segment from a [k, j, i] mask on the reference volume's grid. (Slicer's
    ``slicer.util.updateSegmentBinaryLabelmapFromArray`` needs ``slicer.modules``, which slicer-core
    lacks; the segmentations logic's static import works in both.)"""
    _ensure_segmentation_rules()
    labelmap = _temporary_labelmap(reference_node)
    try:
        slicer.util.updateVolumeFromArray(labelmap, (np.asarray(mask) > 0).astype(np.uint8))
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        if not logic.ImportLabelmapToSegmentationNode(labelmap, segmentation_node, ids):
            raise RuntimeError(f"could not set segment {segment_id}")
    finally:
        _remove(labelmap)


def segments_to_labels(segmentation_node, reference_node) -> tuple[np.ndarray, list[str]]:
    """Every segment as one label value (1, 2, ... in segment order) of a [k, j, i] array on the
    reference volume's grid (a later segment wins where segments overlap), and the segment names."""
    _ensure_segmentation_rules()
    seg = segmentation_node.GetSegmentation()
    dims = reference_node.GetImageData().GetDimensions()
    labels = np.zeros((dims[2], dims[1], dims[0]), np.int16)
    names = []
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    for n in range(seg.GetNumberOfSegments()):
        sid = seg.GetNthSegmentID(n)
        names.append(seg.GetSegment(sid).GetName())
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(sid)
        labelmap = _temporary_labelmap(reference_node)
        try:
            if not logic.ExportSegmentsToLabelmapNode(segmentation_node, ids, labelmap, reference_node):
                raise RuntimeError(f"could not export segment '{names[-1]}'")
            labels[slicer.util.arrayFromVolume(labelmap) > 0] = n + 1
        finally:
            _remove(labelmap)
    return labels, names


def segments_to_file(segmentation_node, reference_node, path: str | Path) -> list[str]:
    """``segments_to_labels`` written as a label image beside the reference volume's file (same grid);
    returns the segment names (label value = index + 1)."""
    labels, names = segments_to_labels(segmentation_node, reference_node)
    node = _temporary_labelmap(reference_node)
    try:
        slicer.util.updateVolumeFromArray(node, labels)
        volume_to_file(node, path)
    finally:
        _remove(node)
    return names


def _segmentation(scene, path: Path, input_node, first_slice: int, name: str, tag: str, folder, sh):
    import slicerio

    _ensure_segmentation_rules()
    seg_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    seg_node.SetAttribute(RUN_ATTRIBUTE, tag)
    seg_node.SetReferenceImageGeometryParameterFromVolumeNode(input_node)
    seg_node.CreateDefaultDisplayNodes()
    seg = slicerio.read_segmentation(str(path))
    voxels = np.asarray(seg["voxels"])
    if voxels.ndim == 4:  # several layers: segments are disjoint here, one layer is expected
        voxels = voxels[..., 0] if voxels.shape[-1] < voxels.shape[0] else voxels[0]
    dims = input_node.GetImageData().GetDimensions()  # (i, j, k)
    for segment in seg["segments"]:
        mask_ijk = voxels == segment["labelValue"]
        mask = np.zeros((dims[2], dims[1], dims[0]), np.uint8)  # [k, j, i] on the input's grid
        part = mask_ijk.transpose(2, 1, 0)
        mask[first_slice : first_slice + part.shape[0]] = part
        sid = seg_node.GetSegmentation().AddEmptySegment(segment["id"], segment["name"], segment["color"])
        if mask.any():
            mask_to_segment(mask, seg_node, sid, input_node)
    _place(sh, seg_node, folder)
    return seg_node


def _sequence(scene, browser, ijk_to_ras, tag, sh, folder_item, path: Path, name: str, proxy_name: str):
    """A sequence node of the items of a ``.seq.nrrd`` [K, k, j, i] on the given geometry, browsed by
    ``browser`` (the first one is its master, later ones step with it)."""
    items = _read_nrrd(path)
    seq = scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
    seq.SetAttribute(RUN_ATTRIBUTE, tag)
    seq.SetIndexName("sample")
    seq.SetIndexUnit("")
    tmp = slicer.vtkMRMLScalarVolumeNode()
    for k in range(items.shape[0]):
        slicer.util.updateVolumeFromArray(tmp, np.ascontiguousarray(items[k], np.float32))
        tmp.SetIJKToRASMatrix(ijk_to_ras)
        seq.SetDataNodeAtValue(tmp, str(k))
    if browser.GetMasterSequenceNode() is None:
        browser.SetAndObserveMasterSequenceNodeID(seq.GetID())
    else:
        browser.AddSynchronizedSequenceNode(seq)
    proxy = browser.GetProxyNode(seq)
    if proxy is None:  # Slicer's sequences module makes it; a bare scene (slicer-core) needs a logic
        logic = slicer.vtkSlicerSequencesLogic()
        logic.SetMRMLScene(scene)
        logic.UpdateProxyNodesFromSequences(browser)
        proxy = browser.GetProxyNode(seq)
    if proxy is not None:
        proxy.SetName(proxy_name)
        proxy.SetAttribute(RUN_ATTRIBUTE, tag)
        _place(sh, proxy, folder_item)
    _place(sh, seq, folder_item)
    return seq


def _denoiser_folders(run_dir: Path) -> list[Path]:
    if (run_dir / "samples.seq.nrrd").exists():
        return [run_dir]
    return sorted(p for p in run_dir.iterdir() if (p / "samples.seq.nrrd").exists())


def load_results(run_dir: str | Path, input_volume_node, scene=None) -> dict[str, dict]:
    """Nodes for every denoiser folder in ``run_dir`` (or ``run_dir`` itself when it is one):
    ``{denoiser: {"denoised", "samples", "browser", "std_map", "alteration_map", "segmentation",
    "findings", "per_sample", "folder"}}`` (absent files give no node)."""
    scene = scene or slicer.mrmlScene
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: not a run folder")
    folders = _denoiser_folders(run_dir)
    if not folders:
        raise FileNotFoundError(f"{run_dir}: holds no samples.seq.nrrd (not a finished run)")
    if not scene.IsNodeClassRegistered("vtkMRMLSequenceBrowserNode"):  # a bare scene (slicer-core)
        scene.RegisterNodeClass(slicer.vtkMRMLSequenceBrowserNode())
    sh = scene.GetSubjectHierarchyNode()
    input_item = sh.GetItemByDataNode(input_volume_node)
    parent = (sh.GetItemParent(input_item) if input_item else 0) or sh.GetSceneItemID()
    base = input_volume_node.GetName()
    out = {}
    for folder in folders:
        run = json.loads((folder / "run.json").read_text()) if (folder / "run.json").exists() else {}
        name = (run.get("denoiser") or {}).get("name") or folder.name
        slices = (run.get("input") or {}).get("slices") or [0]
        first = int(slices[0])
        tag = f"{input_volume_node.GetID()}/{name}"
        _remove_earlier(scene, tag)
        for item in _folders_tagged(sh, tag):
            sh.RemoveItem(item)
        fitem = sh.CreateFolderItem(parent, f"CTInvariances {name} ({base})")
        sh.SetItemAttribute(fitem, RUN_ATTRIBUTE, tag)
        m = _ijk_to_ras(input_volume_node, first)
        nodes: dict = {"folder": fitem}
        if (folder / "denoised.nrrd").exists():
            nodes["denoised"] = _volume(
                scene, _read_nrrd(folder / "denoised.nrrd"), m, f"{base} {name} denoised", tag, fitem, sh
            )
            _colour(nodes["denoised"], "vtkMRMLColorTableNodeGrey", (-160.0, 240.0))
        browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", f"{base} {name} samples browser")
        browser.SetAttribute(RUN_ATTRIBUTE, tag)
        _place(sh, browser, fitem)
        where = (scene, browser, m, tag, sh, fitem)
        nodes["samples"] = _sequence(
            *where, folder / "samples.seq.nrrd", f"{base} {name} samples", f"{base} {name} sample"
        )
        nodes["browser"] = browser
        if (folder / "significance_maps.seq.nrrd").exists():  # method A per sample, stepping with the samples
            nodes["significance_maps"] = _sequence(
                *where,
                folder / "significance_maps.seq.nrrd",
                f"{base} {name} significance maps",
                f"{base} {name} significance map",
            )
        for key, file, title in (
            ("std_map", "std_map.nrrd", "std map (HU)"),
            ("alteration_map", "alteration_frequency.nrrd", "alteration frequency"),
        ):
            if (folder / file).exists():
                nodes[key] = _volume(
                    scene, _read_nrrd(folder / file), m, f"{base} {name} {title}", tag, fitem, sh
                )
                _colour(nodes[key], COLOUR_TABLES[key])
        if (folder / "alterations.seg.nrrd").exists():
            nodes["segmentation"] = _segmentation(
                scene,
                folder / "alterations.seg.nrrd",
                input_volume_node,
                first,
                f"{base} {name} alterations",
                tag,
                fitem,
                sh,
            )
        for key, file, title in (
            ("findings", "findings.csv", "findings"),
            ("per_sample", "per_sample.csv", "per-sample statistics"),
        ):
            if (folder / file).exists():
                nodes[key] = _table(scene, folder / file, f"{base} {name} {title}", tag, fitem, sh)
        _follow_transform(nodes, input_volume_node)
        out[name] = nodes
    return out


def _follow_transform(nodes: dict, input_node) -> None:
    """Results lie where the input lies: under the input's parent transform (a registered scan),
    including the samples browser's proxy volumes."""
    transform_id = input_node.GetTransformNodeID()
    targets = [n for n in nodes.values() if hasattr(n, "IsA") and n.IsA("vtkMRMLTransformableNode")]
    browser = nodes.get("browser")
    if browser is not None:
        for key in ("samples", "significance_maps"):
            if nodes.get(key) is not None and browser.GetProxyNode(nodes[key]) is not None:
                targets.append(browser.GetProxyNode(nodes[key]))
    for node in targets:
        node.SetAndObserveTransformNodeID(transform_id)


def _folders_tagged(sh, tag: str) -> list[int]:
    ids = vtk.vtkIdList()
    sh.GetItemChildren(sh.GetSceneItemID(), ids, True)
    return [
        ids.GetId(i)
        for i in range(ids.GetNumberOfIds())
        if sh.GetItemAttribute(ids.GetId(i), RUN_ATTRIBUTE) == tag
        and sh.GetItemDataNode(ids.GetId(i)) is None
    ]
