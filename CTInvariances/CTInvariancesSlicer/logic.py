"""The module's logic without any GUI: run the main job on a volume node in a child process and turn
its run folder into nodes. Works from Slicer's Python console:

    logic = CTInvariancesLogic()
    nodes = logic.process(slicer.util.getNode("CT"), denoisers=["cnn10"], samples=8)
    nodes["cnn10"]["std_map"]

``start`` / ``poll`` / ``cancel`` are the non-blocking path the panel uses (the GUI stays
responsive; Cancel ends the child process, which removes its half-written output and frees the GPU).
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

LIB_DIR = Path(__file__).resolve().parents[1]  # the folder holding CTInvariancesLib


class InputNodeError(ValueError):
    """The chosen volume node holds no usable CT; the message names the node and says why."""


def check_input_node(node) -> None:
    """What the CLI checks of a file, checked on the node before anything is written or started:
    a scalar volume with image data, finite voxels, a positive spacing and a usable orientation."""
    import numpy as np

    if node is None:
        raise InputNodeError("choose a CT volume first")
    name = node.GetName() or node.GetID()
    if not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputNodeError(f"'{name}' is a {node.GetClassName()}, not a CT (scalar) volume")
    image = node.GetImageData()
    if image is None or 0 in image.GetDimensions():
        raise InputNodeError(f"'{name}' holds no image data (empty or not loaded yet)")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputNodeError(
            f"'{name}' has {image.GetNumberOfScalarComponents()} components per voxel: a CT image has one"
        )
    from vtk.util.numpy_support import vtk_to_numpy

    values = vtk_to_numpy(image.GetPointData().GetScalars())
    bad = int(values.size - np.count_nonzero(np.isfinite(values)))
    if bad:
        raise InputNodeError(f"'{name}': {bad} voxels are NaN or infinite: not a usable CT image")
    spacing = np.asarray(node.GetSpacing(), dtype=float)
    if not (np.isfinite(spacing).all() and (spacing > 0).all()):
        raise InputNodeError(f"'{name}': voxel spacing {tuple(spacing)} is not positive and finite")
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASDirectionMatrix(m)
    d = np.array([[m.GetElement(r, c) for c in range(3)] for r in range(3)])
    if not (np.isfinite(d).all() and abs(np.linalg.det(d)) > 1e-6):
        raise InputNodeError(f"'{name}': the image orientation is degenerate")


@dataclass
class RunParameters:
    denoisers: list = field(default_factory=lambda: ["cnn10"])
    samples: int = 16
    temperature: float = 1.0
    seed: int = 0
    consistency: int | None = None  # None: the engine's default
    slices: str | None = None  # "A:B" (Python style) or None for all
    probes: list = field(default_factory=list)  # [(diameter_mm, contrast_hu)]
    device: str = "auto"
    sampler: str | None = None
    simulate_dose: float | None = None  # the input is full dose: simulate this fraction first

    def arguments(self) -> list[str]:
        args = [
            "--denoiser",
            ",".join(self.denoisers),
            "--samples",
            str(int(self.samples)),
            "--temperature",
            repr(float(self.temperature)),
            "--seed",
            str(int(self.seed)),
            "--device",
            self.device,
        ]
        if self.consistency is not None:
            args += ["--consistency", str(int(self.consistency))]
        if self.slices:
            args += ["--slices", self.slices]
        if self.sampler:
            args += ["--sampler", self.sampler]
        if self.simulate_dose is not None:
            args += ["--simulate-dose", repr(float(self.simulate_dose))]
        for d, c in self.probes:
            args += ["--probe", f"{float(d):g},{float(c):g}"]
        return args


@dataclass
class JobState:
    process: subprocess.Popen
    work_dir: Path
    out_dir: Path
    input_node: object
    done: int = 0
    total: int = 0
    started: float = field(default_factory=time.monotonic)
    log: list = field(default_factory=list)
    error: str | None = None
    lines: queue.Queue = field(default_factory=queue.Queue)
    reader: threading.Thread | None = None

    def eta_seconds(self) -> float | None:
        if self.done <= 0 or self.total <= 0:
            return None
        elapsed = time.monotonic() - self.started
        return elapsed / self.done * (self.total - self.done)


def cli_env(**extra: str) -> dict:
    """The environment of a child running the command line: this one, the core library first on
    PYTHONPATH, and ``extra``."""
    path = os.pathsep.join([str(LIB_DIR), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "PYTHONPATH": path, **extra}


def _read_lines(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    stream.close()


def parse_progress(line: str) -> tuple[int, int] | None:
    """``progress: DONE/TOTAL ...`` -> (DONE, TOTAL)."""
    if not line.startswith("progress: "):
        return None
    try:
        done, total = line.split()[1].split("/")
        return int(done), int(total)
    except (IndexError, ValueError):
        return None


class CTInvariancesLogic:
    """GUI-free: builds the CLI call, runs it in a child process, loads the results as nodes."""

    def __init__(self, python: str | None = None) -> None:
        # inside Slicer: PythonSlicer (the module passes it); elsewhere this interpreter
        self.python = python or sys.executable

    def cli_command(self, verb: str, *args: str) -> list[str]:
        """``ctinvariances VERB ARGS`` for the child interpreter (the core library is on its path
        through ``cli_env``)."""
        return [self.python, "-m", "CTInvariancesLib.cli.main", verb, *map(str, args)]

    def command(self, input_path: Path, out_dir: Path, params: RunParameters) -> list[str]:
        return self.cli_command("run", input_path, "--out", out_dir, *params.arguments())

    def start(self, input_node, params: RunParameters, work_dir: str | Path | None = None) -> JobState:
        """Write the input to a scratch folder (the node is not modified) and start the job. A node
        that holds no usable CT raises :class:`InputNodeError` (a message for the user) first."""
        from .results import volume_to_file

        check_input_node(input_node)
        work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="ctinvariances-"))
        work.mkdir(parents=True, exist_ok=True)
        volume = volume_to_file(input_node, work / "input.nrrd")
        out = work / "run"
        env = cli_env(CTINVARIANCES_PROGRESS="lines", PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(
            self.command(volume, out, params),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env=env,
            start_new_session=True,
        )
        job = JobState(process=proc, work_dir=work, out_dir=out, input_node=input_node)
        job.reader = threading.Thread(target=_read_lines, args=(proc.stdout, job.lines), daemon=True)
        job.reader.start()
        return job

    def poll(self, job: JobState, wait: bool = False) -> bool:
        """Take in what the child printed (a reader thread collects it, so this never blocks unless
        ``wait``); True once it has ended (``job.error`` then says whether it failed)."""
        if wait:
            job.process.wait()
            job.reader.join()
        while True:
            try:
                line = job.lines.get_nowait()
            except queue.Empty:
                break
            p = parse_progress(line)
            if p:
                job.done, job.total = p
            else:
                job.log.append(line)
        if job.process.poll() is None or job.reader.is_alive():
            return False
        if job.process.returncode != 0 and job.error is None:
            errors = [ln for ln in job.log if ln.startswith("error:")]
            job.error = errors[-1] if errors else f"the job ended with status {job.process.returncode}"
        return True

    def cancel(self, job: JobState) -> None:
        """End the child (SIGTERM: it removes its half-written output), then its scratch folder."""
        if job.process.poll() is None:
            try:
                os.killpg(job.process.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError, AttributeError):
                job.process.terminate()
            try:
                job.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                job.process.kill()
                job.process.wait()
        job.error = job.error or "cancelled"
        shutil.rmtree(job.work_dir, ignore_errors=True)

    def finish(self, job: JobState) -> dict:
        """Nodes of a finished job (``load_results``); raises RuntimeError with the CLI's one-line
        error when it failed."""
        from .results import load_results

        if job.error:
            raise RuntimeError(job.error)
        return load_results(job.out_dir, job.input_node)

    def process(self, input_node, params: RunParameters | None = None, **kwargs) -> dict:
        """Blocking: run, wait, load. ``kwargs`` set RunParameters fields."""
        params = params or RunParameters(**kwargs)
        job = self.start(input_node, params)
        self.poll(job, wait=True)
        return self.finish(job)
