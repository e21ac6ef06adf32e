"""Method B: structure-level comparison of x and each sample, as findings a radiologist can read.

x and every sample are smoothed with one fixed Gaussian (independent of the analysed denoiser) and
labelled with HU tissue classes. A pixel is altered in sample k when its class differs from x's
*and* the smoothed difference exceeds ``margin`` times the local noise of a smoothed difference
(the method-A reference at the smoothing scale): a class flip at a boundary that noise explains is
not a finding. Connected altered regions of at least ``min_area_mm2`` are the sample's alterations
(their area: the half-maximum contour of the difference);
overlapping alterations of the same kind are merged across samples into findings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from .reference import NoiseReference, build_reference, smooth
from .significance import check_inputs

# HU classes (upper bounds): air / lung, fat, soft tissue, contrast-enhanced tissue / bone
CLASS_NAMES = ("air/lung", "fat", "soft tissue", "contrast/bone")
CLASS_EDGES_HU = (-400.0, -30.0, 180.0)
KINDS = ("appeared", "disappeared", "changed class")


@dataclass
class Finding:
    id: int
    kind: str
    class_in_input: str
    class_in_samples: str
    centroid_mm: tuple
    area_mm2: float
    mean_hu_change: float
    fraction_of_samples: float
    samples: list = field(default_factory=list)
    slice_index: int | None = None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["centroid_mm"] = [round(float(v), 2) for v in self.centroid_mm]
        d["area_mm2"] = round(self.area_mm2, 2)
        d["mean_hu_change"] = round(self.mean_hu_change, 1)
        d["fraction_of_samples"] = round(self.fraction_of_samples, 4)
        return d


@dataclass
class StructureResult:
    findings: list
    labels: np.ndarray  # [H, W] int32: 0 none, i = finding id i
    per_sample: list  # per sample: list of (kind, area_mm2) of its alterations

    def counts(self) -> np.ndarray:
        return np.array([len(a) for a in self.per_sample])


def tissue_classes(image_hu: np.ndarray) -> np.ndarray:
    return np.digitize(image_hu, CLASS_EDGES_HU).astype(np.int8)


class _Components:
    """Connected components of each class of one class map, labelled once when first asked for."""

    def __init__(self, cls: np.ndarray) -> None:
        self.cls = cls
        self._labels: dict[int, np.ndarray] = {}

    def __call__(self, c: int) -> np.ndarray:
        if c not in self._labels:
            self._labels[c] = ndimage.label(self.cls == c)[0]
        return self._labels[c]


def _kind(region: np.ndarray, comp_x: _Components, comp_s: _Components, a: int, b: int) -> str:
    """appeared: the sample's class-b structure lies (>= 80 %) inside the region, so it is new;
    disappeared: x's class-a structure lies (>= 80 %) inside it, so it is gone; else changed class."""

    def contained(components: _Components, c: int) -> bool:
        lab = components(c)
        ids = np.unique(lab[region])
        ids = ids[ids > 0]
        if ids.size == 0:
            return False
        comp = np.isin(lab, ids)
        return (comp & region).sum() >= 0.8 * comp.sum()

    if contained(comp_s, b):
        return "appeared"
    if contained(comp_x, a):
        return "disappeared"
    return "changed class"


def structure_alterations(
    x_hu,
    samples_hu,
    spacing_mm: tuple[float, float],
    smoothing_mm: float = 1.0,
    min_area_mm2: float = 7.0,
    margin: float = 4.0,
    reference: NoiseReference | None = None,
    index_to_mm: Callable[[float, float], tuple] | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> StructureResult:
    """Tissue-class changes between x and each sample (method B): merged findings and a label map.

    ``index_to_mm(row, col)`` maps a pixel to patient coordinates (default: row, col times the
    spacing, in-plane)."""
    x, s = check_inputs(x_hu, samples_hu, spacing_mm)
    if min_area_mm2 < 0 or smoothing_mm <= 0 or margin < 0:
        raise ValueError("min_area_mm2 and margin must be >= 0, smoothing_mm > 0")
    spacing_mm = (float(spacing_mm[0]), float(spacing_mm[1]))
    px_area = spacing_mm[0] * spacing_mm[1]
    if index_to_mm is None:

        def index_to_mm(r, c):
            return (r * spacing_mm[0], c * spacing_mm[1])

    ref = reference
    if ref is None or smoothing_mm not in ref.level:
        ref = build_reference(x, spacing_mm, (smoothing_mm,), seed=seed, device=device)
    level = ref.level[smoothing_mm]
    body = ref.body
    sx = smooth(x, smoothing_mm, spacing_mm)
    cls_x = tissue_classes(sx)
    comp_x = _Components(cls_x)
    occurrences = []  # (sample, kind, a, b, mask, area, dhu)
    per_sample = []
    for k in range(s.shape[0]):
        ss = smooth(s[k], smoothing_mm, spacing_mm)
        cls_s = tissue_classes(ss)
        comp_s = _Components(cls_s)
        diff = ss - sx
        altered = body & (cls_s != cls_x) & (np.abs(diff) > margin * level)
        mine = []
        lab, n = ndimage.label(altered, structure=np.ones((3, 3)))
        for i in range(1, n + 1):
            region = lab == i
            area = float(region.sum()) * px_area
            if area < min_area_mm2:
                continue
            # the region's classes: its most common (class in x, class in the sample) pair; a
            # nodule's soft edge passes through fat's HU range but is one alteration
            codes = cls_x[region].astype(np.int32) * 8 + cls_s[region]
            code = int(np.bincount(codes).argmax())
            a, b = code // 8, code % 8
            kind = _kind(region, comp_x, comp_s, a, b)
            # size: the half-maximum contour of the difference (as a structure's FWHM), which does
            # not depend on where a class edge happens to cut the structure's soft edge
            near = ndimage.binary_dilation(region, iterations=3) & body
            peak = diff[region][np.argmax(np.abs(diff[region]))]
            half = near & (np.sign(diff) == np.sign(peak)) & (np.abs(diff) >= 0.5 * abs(peak))
            lab_h, _ = ndimage.label(half)
            core = np.isin(lab_h, np.unique(lab_h[region & half]))
            area = float(core.sum()) * px_area if core.any() else area
            occurrences.append((k, kind, a, b, region, area, float(diff[region].mean())))
            mine.append((kind, area))
        per_sample.append(mine)
    # merge overlapping occurrences of the same kind and classes across samples
    findings, labels = [], np.zeros(x.shape, np.int32)
    groups: list[list] = []
    for occ in occurrences:
        for g in groups:
            if g[0][1:4] == occ[1:4] and any((o[4] & occ[4]).any() for o in g):
                g.append(occ)
                break
        else:
            groups.append([occ])
    K = s.shape[0]
    groups.sort(key=lambda g: (-len({o[0] for o in g}), -max(o[5] for o in g)))
    for fid, g in enumerate(groups, start=1):
        union = np.logical_or.reduce([o[4] for o in g])
        rc = ndimage.center_of_mass(union)
        labels[union & (labels == 0)] = fid
        findings.append(
            Finding(
                id=fid,
                kind=g[0][1],
                class_in_input=CLASS_NAMES[g[0][2]],
                class_in_samples=CLASS_NAMES[g[0][3]],
                centroid_mm=tuple(float(v) for v in index_to_mm(*rc)),
                area_mm2=float(np.median([o[5] for o in g])),
                mean_hu_change=float(np.mean([o[6] for o in g])),
                fraction_of_samples=len({o[0] for o in g}) / K,
                samples=sorted({int(o[0]) for o in g}),
            )
        )
    return StructureResult(findings=findings, labels=labels, per_sample=per_sample)
