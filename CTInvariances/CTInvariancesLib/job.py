"""The main job: sample, analyse and report, per denoiser, in one run folder.

``run_job`` writes into ``DIR/<denoiser>/``: denoised.nrrd, samples.seq.nrrd, std_map.nrrd,
alteration_frequency.nrrd (method A), alterations.seg.nrrd (method B, one segment per kind of
finding), erasure_map_<D>mm_<C>HU.nrrd (method C, per probe asked for), findings.csv/json,
per_sample.csv, summary.json, metrics.json, run.json and report.png; and into ``DIR/``:
comparison.csv, summary.json and run.json. Everything is written into a hidden folder beside DIR
and renamed to DIR at the end: a cancelled or failed job leaves nothing.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .analysis import (
    build_reference,
    erasure_map,
    noise_referenced_test,
    probe_grid,
    structure_alterations,
    structure_probe,
)
from .analysis.probes import NO_PROBE
from .analysis.structures import KINDS
from .errors import InputError
from .files import check_can_create, input_sha256, partial_name, remove_stale_partials
from .invariance.consistency import DEFAULT_STEPS
from .invariance.pipeline import finite_json, sample_volume
from .io.streaming import StreamingNrrdWriter
from .io.volume import CTVolume
from .metrics import body_mask

KIND_COLOURS = {
    "appeared": (0.95, 0.25, 0.2),
    "disappeared": (0.2, 0.55, 0.95),
    "changed class": (0.95, 0.8, 0.2),
}
FINDING_FIELDS = (
    "id",
    "slice",
    "kind",
    "class_in_input",
    "class_in_samples",
    "x_mm",
    "y_mm",
    "z_mm",
    "area_mm2",
    "mean_hu_change",
    "fraction_of_samples",
    "samples",
)
PER_SAMPLE_FIELDS = (
    "slice",
    "sample",
    "p_value",
    "significant",
    "alterations",
    "alteration_area_mm2",
    "fidelity_ratio",
    "rmse_output_hu",
)
COMPARISON_FIELDS = (
    "denoiser",
    "sampler",
    "median_std_hu",
    "fraction_samples_altered",
    "findings",
    "fidelity_ratio",
    "median_erasure",
)


@dataclass
class JobSettings:
    n_samples: int = 16
    seed: int = 0
    temperature: float = 1.0
    batch_size: int = 64
    consistency_steps: int = DEFAULT_STEPS
    alpha: float = 0.05
    probes: list = field(default_factory=list)  # [(diameter_mm, contrast_hu)]
    report_slices: int = 3
    device: str = "cpu"
    dicom_seg: bool = False  # also alterations.seg.dcm (DICOM SEG referencing the input series)


def check_job_folder(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError("exists and is not a folder", out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError("output folder is not empty; choose a new folder or give --overwrite", out)
    check_can_create(out)


def _probe_name(d: float, c: float) -> str:
    return f"erasure_map_{d:g}mm_{c:g}HU.nrrd"


class _References:
    """Method A's noise reference per slice, built once and shared by all denoisers (on disk, so
    memory does not grow with the number of slices)."""

    def __init__(self, folder: Path, seed: int, device: str) -> None:
        self.folder, self.seed, self.device = folder, seed, device
        folder.mkdir(parents=True, exist_ok=True)

    def get(self, k: int, x: np.ndarray, spacing: tuple[float, float]):
        from .analysis.reference import NoiseReference

        path = self.folder / f"{k}.npz"
        if path.exists():
            z = np.load(path)
            scales = tuple(float(s) for s in z["scales"])
            ref = NoiseReference(spacing, float(z["noise"]), z["body"], scales)
            ref.level = {s: z[f"level{i}"] for i, s in enumerate(scales)}
            ref.roughness = {s: float(r) for s, r in zip(scales, z["roughness"])}
            return ref
        ref = build_reference(x, spacing, seed=self.seed * 100003 + k, device=self.device)
        np.savez(
            path,
            scales=np.array(ref.scales_mm),
            noise=ref.noise_std_hu,
            body=ref.body,
            roughness=np.array([ref.roughness[s] for s in ref.scales_mm]),
            **{f"level{i}": ref.level[s] for i, s in enumerate(ref.scales_mm)},
        )
        return ref


class _DenoiserAnalysis:
    """Per slice (called by sample_volume while the samples are in memory): methods A, B, C."""

    def __init__(
        self,
        volume: CTVolume,
        denoiser,
        folder: Path,
        settings: JobSettings,
        refs: _References,
        report_slices: list[int],
        should_stop=None,
    ) -> None:
        self.volume, self.denoiser, self.folder, self.settings = volume, denoiser, folder, settings
        self.refs, self.report_slices, self.should_stop = refs, set(report_slices), should_stop
        self.spacing = (float(volume.spacing[1]), float(volume.spacing[0]))
        self.freq = StreamingNrrdWriter(folder / "alteration_frequency.nrrd", volume)
        # per sample: where it differs from x by more than noise (method A), beside samples.seq.nrrd
        self.sig = StreamingNrrdWriter(
            folder / "significance_maps.seq.nrrd", volume, n_items=settings.n_samples, dtype=np.uint8
        )
        self.erasure = {p: StreamingNrrdWriter(folder / _probe_name(*p), volume) for p in settings.probes}
        self.labels = np.lib.format.open_memmap(folder / ".labels.npy", "w+", np.uint8, volume.shape)
        self.findings: list[dict] = []
        self.per_sample: list[dict] = []
        self.erasures: dict = {p: [] for p in settings.probes}
        self.report: dict[int, dict] = {}

    def __call__(self, k: int, x: np.ndarray, samples: np.ndarray, fx: np.ndarray, entry: dict) -> None:
        vol, sp = self.volume, self.spacing
        try:
            ref = self.refs.get(int(vol.source_slice_indices[k]), x, sp)
        except ValueError as exc:  # e.g. a slice without soft tissue: say which one
            raise InputError(f"slice {vol.source_slice_indices[k]}: {exc}", vol.source) from None
        a = noise_referenced_test(x, samples, sp, alpha=self.settings.alpha, reference=ref)
        b = structure_alterations(
            x, samples, sp, reference=ref, index_to_mm=lambda r, c: tuple(vol.index_to_physical(k, r, c))
        )
        self.freq.write_slice(k, a.frequency)
        self.sig.write_slice(k, a.maps.astype(np.uint8))
        for f in b.findings:
            self.labels[k][b.labels == f.id] = 1 + KINDS.index(f.kind)
            d = f.as_dict()
            self.findings.append(
                {
                    "id": len(self.findings) + 1,
                    "slice": int(vol.source_slice_indices[k]),
                    "kind": f.kind,
                    "class_in_input": f.class_in_input,
                    "class_in_samples": f.class_in_samples,
                    "x_mm": d["centroid_mm"][0],
                    "y_mm": d["centroid_mm"][1],
                    "z_mm": d["centroid_mm"][2],
                    "area_mm2": d["area_mm2"],
                    "mean_hu_change": d["mean_hu_change"],
                    "fraction_of_samples": d["fraction_of_samples"],
                    "samples": " ".join(map(str, f.samples)),
                }
            )
        px_area = sp[0] * sp[1]
        for s in range(samples.shape[0]):
            self.per_sample.append(
                {
                    "slice": int(vol.source_slice_indices[k]),
                    "sample": s,
                    "p_value": float(a.p_values[s]),
                    "significant": bool(a.altered[s]),
                    "alterations": len(b.per_sample[s]),
                    "alteration_area_mm2": round(sum(area for _, area in b.per_sample[s]), 2),
                    "fidelity_ratio": entry["ratio"][s] if "ratio" in entry else None,
                    "rmse_output_hu": entry["rmse_output_hu"][s] if "rmse_output_hu" in entry else None,
                }
            )
        body = body_mask(x)
        for p in self.settings.probes:
            d_mm, c_hu = p
            centres = probe_grid(x, sp, d_mm)
            if len(centres):
                res = structure_probe(
                    self.denoiser,
                    x,
                    sp,
                    centres,
                    d_mm,
                    c_hu,
                    steps=self.settings.consistency_steps or DEFAULT_STEPS,
                    denoised_hu=fx,
                    should_stop=self.should_stop,
                )
                self.erasure[p].write_slice(k, erasure_map(x.shape, sp, res, body))
                self.erasures[p] += list(res.erasure)
            else:
                self.erasure[p].write_slice(k, np.full(x.shape, NO_PROBE, np.float32))
        entry["analysis"] = {
            "significant_samples": int(a.altered.sum()),
            "min_p_value": float(a.p_values.min()),
            "findings": len(b.findings),
            "altered_area_mm2": float((b.labels > 0).sum() * px_area),
        }
        if k in self.report_slices:
            self.report[k] = {
                "x": x,
                "fx": fx,
                "samples": samples[:3].copy(),
                "std": samples.std(0),
                "frequency": a.frequency,
                "labels": self.labels[k].copy(),
                "significant": int(a.altered.sum()),
                "findings": len(b.findings),
                "slice": int(vol.source_slice_indices[k]),  # as findings.csv names it
            }

    def close(self) -> None:
        self.freq.close()
        self.sig.close()
        for w in self.erasure.values():
            w.close()

    def abort(self) -> None:
        self.freq.abort()
        self.sig.abort()
        for w in self.erasure.values():
            w.abort()


def _write_csv(path: Path, rows: list[dict], fields) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields))
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k) for k in fields})


def _write_segmentation(path: Path, volume: CTVolume, labels: np.ndarray) -> None:
    """alterations.seg.nrrd: one segment per kind of finding, named and coloured, on the input's
    grid (Slicer opens it as a segmentation)."""
    import slicerio

    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = volume.direction_matrix @ np.diag(volume.spacing)
    ijk_to_lps[:3, 3] = volume.origin
    seg = slicerio.create_segmentation(tuple(int(v) for v in labels.shape[::-1]), ijk_to_lps)
    for i, kind in enumerate(KINDS):
        mask = np.ascontiguousarray(np.asarray(labels == i + 1).transpose(2, 1, 0))
        slicerio.add_segment(
            seg,
            mask,
            {"id": kind.replace(" ", "_"), "name": f"alteration: {kind}", "color": list(KIND_COLOURS[kind])},
        )
    slicerio.write_segmentation(str(path), seg)


def _window(x: np.ndarray) -> tuple[float, float, str]:
    body = body_mask(x)
    lung = float(((x < -600) & body).sum()) / max(int(body.sum()), 1)
    return (-1350.0, 150.0, "lung window") if lung > 0.15 else (-160.0, 240.0, "soft-tissue window")


def display_flips(volume: CTVolume) -> tuple[bool, bool]:
    """(flip rows, flip columns) that show a slice as radiologists read it: anterior up, the
    patient's right on the left (LPS: rows should run towards +y, columns towards +x)."""
    d = volume.direction_matrix
    return bool(d[1, 1] < 0), bool(d[0, 0] < 0)


def write_report(path: Path, name: str, report: dict, summary: dict, flips=(False, False)) -> None:
    """report.png: per analysed slice, the input, f(x), three samples, the std map, and the input
    with method A's alteration frequency and method B's outlines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(report)
    if not rows:
        return

    def oriented(img):
        img = img[::-1] if flips[0] else img
        return img[:, ::-1] if flips[1] else img

    report = {
        k: {
            key: oriented(v)
            if key in ("x", "fx", "std", "frequency", "labels")
            else ([oriented(s) for s in v] if key == "samples" else v)
            for key, v in d.items()
        }
        for k, d in report.items()
    }
    fig, axes = plt.subplots(len(rows), 7, figsize=(21, 3.3 * len(rows) + 0.6), squeeze=False)
    for r, k in enumerate(rows):
        d = report[k]
        lo, hi, wname = _window(d["x"])
        body = body_mask(d["x"])
        ys, xs = np.nonzero(body)
        box = (slice(max(ys.min() - 8, 0), ys.max() + 9), slice(max(xs.min() - 8, 0), xs.max() + 9))
        panels = [("input x", d["x"]), ("f(x)", d["fx"])] + [
            (f"sample {i + 1}", s) for i, s in enumerate(d["samples"])
        ]
        for c, (title, img) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img[box], cmap="gray", vmin=lo, vmax=hi)
            where = f"  (slice {d.get('slice', k)}, {wname})" if c == 0 else ""
            ax.set_title(f"{title}{where}", fontsize=9)
        std = np.where(body, d["std"], 0)[box]
        vmax = max(5.0, float(np.percentile(d["std"][body], 99))) if body.any() else 5.0
        im = axes[r, 5].imshow(std, cmap="magma", vmin=0, vmax=vmax)
        axes[r, 5].set_title(f"std over samples (HU, median {np.median(d['std'][body]):.1f})", fontsize=9)
        fig.colorbar(im, ax=axes[r, 5], fraction=0.046, pad=0.02)
        ax = axes[r, 6]
        ax.imshow(d["x"][box], cmap="gray", vmin=lo, vmax=hi)
        freq = np.ma.masked_where(d["frequency"][box] <= 0, d["frequency"][box])
        im = ax.imshow(freq, cmap="autumn", vmin=0, vmax=1, alpha=0.8)
        for i, kind in enumerate(KINDS):
            m = d["labels"][box] == i + 1
            if m.any():
                ax.contour(m, levels=[0.5], colors=[KIND_COLOURS[kind]], linewidths=1.2)
        ax.set_title(
            f"A: altered in {d['significant']}/{len(d['samples']) and summary['n_samples']} samples"
            f"  B: {d['findings']} findings",
            fontsize=9,
        )
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="fraction of samples")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        f"{name}: what it ignores. Median std {summary['median_std_hu']:.1f} HU; "
        f"{100 * summary['fraction_samples_altered']:.0f} % of samples significantly altered (method A, "
        f"alpha {summary['alpha']}); {summary['findings']} findings (method B: red appeared, blue "
        f"disappeared, yellow changed class); fidelity ratio {summary['fidelity_ratio']:.3f}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _report_slices(n: int, count: int) -> list[int]:
    if n <= count:
        return list(range(n))
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, count)})


def run_job(
    volume: CTVolume,
    denoisers: list,
    out_dir: str | Path,
    make_sampler: Callable,
    settings: JobSettings | None = None,
    progress: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    overwrite: bool = False,
    parameters: dict | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Sample and analyse ``volume`` for each denoiser; returns the top-level summary."""
    settings = settings or JobSettings()
    out = Path(out_dir)
    check_job_folder(out, overwrite)
    names = [d.name for d in denoisers]
    if len(set(names)) != len(names):
        raise InputError(f"denoiser names must differ (got {', '.join(names)})", out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out.parent)  # what a run killed outright (no clean-up ran) left behind
    tmp = out.parent / f".{partial_name(out.name)}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    t0 = time.perf_counter()
    rows = []
    try:
        refs = _References(tmp / ".references", settings.seed, settings.device)
        report_slices = _report_slices(volume.shape[0], settings.report_slices)
        for den in denoisers:
            sub = tmp / den.name
            sub.mkdir()
            sampler = make_sampler(den)
            analysis = _DenoiserAnalysis(volume, den, sub, settings, refs, report_slices, should_stop)
            try:
                metrics = sample_volume(
                    volume,
                    sampler,
                    sub,
                    n_samples=settings.n_samples,
                    seed=settings.seed,
                    temperature=settings.temperature,
                    batch_size=settings.batch_size,
                    consistency_steps=settings.consistency_steps,
                    progress=progress,
                    should_stop=should_stop,
                    parameters=parameters,
                    overwrite=True,
                    slice_hook=analysis,
                )
                analysis.close()
            except BaseException:
                analysis.abort()
                raise
            _write_csv(sub / "findings.csv", analysis.findings, FINDING_FIELDS)
            (sub / "findings.json").write_text(json.dumps(finite_json(analysis.findings), indent=1) + "\n")
            _write_csv(sub / "per_sample.csv", analysis.per_sample, PER_SAMPLE_FIELDS)
            _write_segmentation(sub / "alterations.seg.nrrd", volume, np.asarray(analysis.labels))
            if settings.dicom_seg:
                from .dicom_seg import write_dicom_seg

                write_dicom_seg(sub / "alterations.seg.dcm", volume, np.asarray(analysis.labels))
            del analysis.labels
            (sub / ".labels.npy").unlink()
            sig = [r["significant"] for r in analysis.per_sample]
            fid = metrics.get("fidelity", {})
            summary = {
                "denoiser": den.name,
                "sampler": getattr(sampler, "kind", ""),
                "n_samples": settings.n_samples,
                "n_slices": volume.shape[0],
                "alpha": settings.alpha,
                "median_std_hu": float(
                    np.median([s["std_map_median_hu_body"] for s in metrics["per_slice"]])
                ),
                "fraction_samples_altered": float(np.mean(sig)) if sig else 0.0,
                "findings": len(analysis.findings),
                "fidelity_ratio": float(fid.get("median_ratio", float("nan"))),
                "median_erasure": {
                    f"{d:g}mm_{c:g}HU": float(np.median(v)) if v else None
                    for (d, c), v in analysis.erasures.items()
                },
                "files": sorted(p.name for p in sub.iterdir()),
            }
            (sub / "summary.json").write_text(json.dumps(finite_json(summary), indent=2) + "\n")
            write_report(sub / "report.png", den.name, analysis.report, summary, display_flips(volume))
            rows.append(summary)
            log(
                f"{den.name}: std {summary['median_std_hu']:.1f} HU, "
                f"{100 * summary['fraction_samples_altered']:.0f} % of samples altered, "
                f"{summary['findings']} findings, fidelity {summary['fidelity_ratio']:.3f}"
            )
        shutil.rmtree(tmp / ".references", ignore_errors=True)
        comparison = []
        for s in rows:
            er = [v for v in s["median_erasure"].values() if v is not None]
            comparison.append(
                {
                    "denoiser": s["denoiser"],
                    "sampler": s["sampler"],
                    "median_std_hu": round(s["median_std_hu"], 2),
                    "fraction_samples_altered": round(s["fraction_samples_altered"], 4),
                    "findings": s["findings"],
                    "fidelity_ratio": round(s["fidelity_ratio"], 4),
                    "median_erasure": round(float(np.median(er)), 3) if er else "",
                }
            )
        _write_csv(tmp / "comparison.csv", comparison, COMPARISON_FIELDS)
        top = {
            "input": volume.source,
            "n_slices": volume.shape[0],
            "n_samples": settings.n_samples,
            "alpha": settings.alpha,
            "probes": [list(p) for p in settings.probes],
            "denoisers": rows,
            "comparison": comparison,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        run = {
            "ctinvariances_version": __version__,
            "command": "run",
            "settings": settings.__dict__,
            "parameters": parameters or {},
            "denoisers": [d.describe() for d in denoisers],
            "input": {
                "source": volume.source,
                "sha256": input_sha256(volume.source) if volume.source else None,
                "shape_kji": list(volume.shape),
                "slices": volume.source_slice_indices,
            },
        }
        (tmp / "summary.json").write_text(json.dumps(finite_json(top), indent=2) + "\n")
        (tmp / "run.json").write_text(json.dumps(finite_json(run), indent=2, default=str) + "\n")
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return top


def comparison_table(summary: dict) -> str:
    """The comparison as a fixed-width text table (what the CLI prints)."""
    head = (
        f"{'denoiser':10s} {'sampler':8s} {'std HU':>7s} {'altered':>8s} {'findings':>8s} "
        f"{'fidelity':>8s} {'erasure':>8s}"
    )
    lines = [head, "-" * len(head)]
    for r in summary["comparison"]:
        er = f"{r['median_erasure']:.2f}" if r["median_erasure"] != "" else "-"
        lines.append(
            f"{r['denoiser']:10s} {r['sampler']:8s} {r['median_std_hu']:7.1f} "
            f"{100 * r['fraction_samples_altered']:7.0f}% {r['findings']:8d} "
            f"{r['fidelity_ratio']:8.3f} {er:>8s}"
        )
    return "\n".join(lines)
