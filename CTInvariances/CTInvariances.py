"""CTInvariances: what a low-dose CT denoiser ignores, shown on the scan.

The module file is thin: the work is done by the ``ctinvariances`` command line (``CTInvariancesLib``)
in a child process, and ``CTInvariancesSlicer`` turns its run folder into nodes. Nothing heavy (torch)
is imported when Slicer starts.
"""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

SAMPLE_FILE = "PancreasCT-abdomen-slice.nrrd"
SAMPLE_SHA256 = "780f1943ea3260c70142adc205697760a39cc103d9ddac17f15faac6da7f536b"


class CTInvariances(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "CT Invariances"
        self.parent.categories = ["Utilities"]
        self.parent.contributors = ["CTInvariances developers"]
        self.parent.helpText = (
            "Shows what a low-dose CT denoising network ignores: many inputs that it maps to the same "
            "output, where they differ from the scan by more than noise, and whether a structure of a "
            "given size and contrast would survive it. See the README of the extension."
        )
        self.parent.acknowledgementText = (
            "Implements Eulig et al., 'Reconstructing and analyzing the invariances of low-dose CT image "
            "denoising networks', Medical Physics 2025, with our own analysis methods. Sample CT: TCIA "
            "Pancreas-CT (Roth et al., CC BY 3.0)."
        )
        slicer.app.connect("startupCompleted()", registerSampleData)
        # models a user imports or trains: Slicer's user data folder, shared with the command line
        os.environ.setdefault("CTINVARIANCES_USER_MODELS", userModelsFolder())


def userModelsFolder():
    settings = os.path.dirname(slicer.app.slicerUserSettingsFilePath or "") or os.path.expanduser("~")
    return os.path.join(settings, "CTInvariances", "models")


def registerSampleData():
    import SampleData

    path = Path(__file__).parent / "Resources" / "SampleData" / SAMPLE_FILE
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="CTInvariances",
        sampleName="CTInvariancesAbdomen",
        uris=path.as_uri(),
        fileNames=SAMPLE_FILE,
        nodeNames="CTInvariancesAbdomen",
        checksums=f"SHA256:{SAMPLE_SHA256}",
        thumbnailFileName=str(Path(__file__).parent / "Resources" / "Icons" / "CTInvariances.png"),
    )


@parameterNodeWrapper
class CTInvariancesParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    simulateLowDose: bool = False
    doseFraction: Annotated[float, WithinRange(0.05, 0.95)] = 0.25
    denoiser: str = "cnn10"  # a name of `ctinvariances models list`, or "custom file"
    customDenoiserPath: str = ""
    samples: Annotated[int, WithinRange(2, 256)] = 16
    temperature: Annotated[float, WithinRange(0.1, 3.0)] = 1.0
    seed: Annotated[int, WithinRange(0, 2147483647)] = 0
    consistencySteps: Annotated[int, WithinRange(0, 1000)] = 40
    sliceSelection: Annotated[str, Choice(["current red slice", "range", "all"])] = "current red slice"
    firstSlice: Annotated[int, WithinRange(0, 100000)] = 0
    lastSlice: Annotated[int, WithinRange(0, 100000)] = 0
    probePoint: vtkMRMLMarkupsFiducialNode
    probeSegmentation: vtkMRMLSegmentationNode  # when set: each segment is probed (its own shape)
    probeDiameter: Annotated[float, WithinRange(1.0, 50.0)] = 5.0
    probeContrast: Annotated[float, WithinRange(-1000.0, 1000.0)] = 20.0
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"


def pythonSlicer() -> str:
    """The interpreter for the child process: PythonSlicer inside Slicer."""
    found = shutil.which("PythonSlicer", path=os.path.join(slicer.app.slicerHome, "bin"))
    return found or sys.executable


class CTInvariancesWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._job = None
        self._results = {}
        self._findingIndex = -1

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/CTInvariances.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = CTInvariancesLogic()
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.loadSampleButton.connect("clicked(bool)", self.onLoadSample)
        self.ui.probeButton.connect("clicked(bool)", self.onProbe)
        self.ui.showStdMapButton.connect("clicked(bool)", lambda: self.showOverlay("std_map"))
        self.ui.showAlterationMapButton.connect("clicked(bool)", lambda: self.showOverlay("alteration_map"))
        self.ui.showSegmentationButton.connect("clicked(bool)", self.showSegmentation)
        self.ui.nextFindingButton.connect("clicked(bool)", self.onNextFinding)
        self.ui.deviceCollapsibleButton.connect("contentsCollapsed(bool)", self.onDeviceSection)
        self.ui.modelsFolderLabel.text = self.logic.modelsFolder()
        self.fillDenoisers()
        self.timer = qt.QTimer()
        self.timer.setInterval(500)
        self.timer.connect("timeout()", self.onTimer)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.initializeParameterNode()

    def fillDenoisers(self):
        """The same list as `ctinvariances models list`: bundled, then the user's models folder."""
        combo = self.ui.denoiserComboBox
        current = combo.currentText
        combo.clear()
        for name in self.logic.denoiserNames() + ["custom file"]:
            combo.addItem(name)
        combo.currentText = current or "cnn10"

    def cleanup(self):
        self.removeObservers()
        if self._job is not None:
            self.logic.runner.cancel(self._job)

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)

    def onLoadSample(self):
        import SampleData

        registerSampleData()
        self._parameterNode.inputVolume = SampleData.downloadSample("CTInvariancesAbdomen")
        self._parameterNode.simulateLowDose = True

    def onDeviceSection(self, collapsed):
        if not collapsed and not self.ui.deviceInfoLabel.text:
            self.ui.deviceInfoLabel.text = self.logic.detectDevice()

    def onApply(self):
        from CTInvariancesSlicer.logic import InputNodeError

        with slicer.util.tryWithErrorDisplay("Could not start the analysis.", waitCursor=True):
            if not self.logic.ensureDependencies():
                return
            try:
                params = self.logic.runParameters(self._parameterNode)
                self._job = self.logic.runner.start(self._parameterNode.inputVolume, params)
            except (ValueError, InputNodeError) as exc:  # the user's choices: a message, no traceback
                slicer.util.errorDisplay(str(exc))
                return
            self.ui.applyButton.enabled, self.ui.cancelButton.enabled = False, True
            self.ui.progressBar.value = 0
            self.ui.logTextEdit.clear()
            self.ui.statusLabel.text = "Running..."
            self.timer.start()

    def onCancel(self):
        if self._job is not None:
            self.logic.runner.cancel(self._job)
            self._finishJob("Cancelled: nothing was written.")

    def onTimer(self):
        job = self._job
        seen = len(job.log)
        ended = self.logic.runner.poll(job)
        for line in job.log[seen:]:
            self.ui.logTextEdit.appendPlainText(line)
        if job.total:
            self.ui.progressBar.value = int(100 * job.done / job.total)
            eta = job.eta_seconds()
            self.ui.statusLabel.text = f"{job.done}/{job.total} slices" + (
                f", about {eta:.0f} s left" if eta else ""
            )
        if not ended:
            return
        if job.error:
            self._finishJob("Failed.")
            slicer.util.errorDisplay(job.error)  # the CLI's one-line error, no traceback
            return
        self._results = self.logic.runner.finish(job)
        self._finishJob("Done.")
        self.fillResultsTable(job.out_dir)
        self.showOverlay("std_map")

    def _finishJob(self, message):
        self.timer.stop()
        self._job = None
        self.ui.applyButton.enabled, self.ui.cancelButton.enabled = True, False
        self.ui.statusLabel.text = message

    def fillResultsTable(self, runDir):
        summary = json.loads((Path(runDir) / "summary.json").read_text())
        headers = ["denoiser", "median std (HU)", "samples altered", "findings", "fidelity", "erasure"]
        table = self.ui.resultsTableWidget
        table.setColumnCount(len(headers))
        table.setHorizontalHeaderLabels(headers)
        table.setRowCount(len(summary["comparison"]))
        for r, row in enumerate(summary["comparison"]):
            values = [
                row["denoiser"],
                f"{row['median_std_hu']:.1f}",
                f"{100 * row['fraction_samples_altered']:.0f} %",
                str(row["findings"]),
                f"{row['fidelity_ratio']:.3f}",
                str(row["median_erasure"] or "-"),
            ]
            for c, v in enumerate(values):
                table.setItem(r, c, qt.QTableWidgetItem(v))

    def _nodes(self):
        return next(iter(self._results.values()), {})

    def showOverlay(self, key):
        node = self._nodes().get(key)
        if node is not None:
            slicer.util.setSliceViewerLayers(
                background=self._parameterNode.inputVolume, foreground=node, foregroundOpacity=0.5
            )

    def showSegmentation(self):
        seg = self._nodes().get("segmentation")
        if seg is not None:
            seg.GetDisplayNode().SetVisibility(True)

    def onNextFinding(self):
        table = self._nodes().get("findings")
        if table is None or table.GetNumberOfRows() == 0:
            self.ui.statusLabel.text = "No findings."
            return
        self._findingIndex = (self._findingIndex + 1) % table.GetNumberOfRows()
        x, y, z = (
            float(table.GetCellText(self._findingIndex, table.GetColumnIndex(c)))
            for c in ("x_mm", "y_mm", "z_mm")
        )
        slicer.modules.markups.logic().JumpSlicesToLocation(-x, -y, z, True)  # LPS -> RAS

    def onProbe(self):
        with slicer.util.tryWithErrorDisplay("The probe failed.", waitCursor=True):
            try:
                answer, erasure = self.logic.probe(self._parameterNode)
            except (ValueError, RuntimeError) as exc:  # the user's input or the CLI's one line
                slicer.util.errorDisplay(f"The probe failed: {exc}")
                return
            self.ui.probeResultLabel.text = answer
            if erasure is None:  # segments: the answer lists each one
                return
            # the short answer at the point itself, in the slice views
            p = self._parameterNode
            p.probePoint.SetNthControlPointLabel(
                0, f"{p.probeDiameter:g} mm {p.probeContrast:+g} HU: {100 * erasure:.0f} % erased"
            )


class CTInvariancesLogic(ScriptedLoadableModuleLogic):
    """Slicer-side logic: parameters to CLI options, dependencies, and the runner (GUI-free)."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        from CTInvariancesSlicer.logic import CTInvariancesLogic as Runner

        self.runner = Runner(python=pythonSlicer())

    def getParameterNode(self):
        return CTInvariancesParameterNode(super().getParameterNode())

    def denoiserNames(self):
        from CTInvariancesLib.model_folders import denoiser_entries  # no torch: safe at any time

        return [e["name"] for e in denoiser_entries()]

    def modelsFolder(self):
        return os.environ.get("CTINVARIANCES_USER_MODELS") or userModelsFolder()

    def runParameters(self, p):
        from CTInvariancesSlicer.logic import RunParameters

        if p.inputVolume is None:
            raise ValueError("Select a CT volume first.")
        denoiser = p.customDenoiserPath if p.denoiser == "custom file" else p.denoiser
        if not denoiser:
            raise ValueError("Choose a denoiser file.")
        slices = None
        if p.sliceSelection == "current red slice":
            k = self.redSliceIndex(p.inputVolume)
            slices = f"{k}:{k + 1}"
        elif p.sliceSelection == "range":
            slices = f"{p.firstSlice}:{p.lastSlice + 1}"
        return RunParameters(
            denoisers=[denoiser],
            samples=p.samples,
            temperature=p.temperature,
            seed=p.seed,
            consistency=p.consistencySteps,
            slices=slices,
            device=p.device,
            simulate_dose=p.doseFraction if p.simulateLowDose else None,
        )

    @staticmethod
    def redSliceIndex(volumeNode):
        """The volume's slice index under the red view's centre (any orientation of the view)."""
        sliceNode = slicer.app.layoutManager().sliceWidget("Red").sliceLogic().GetSliceNode()
        center = sliceNode.GetSliceToRAS().MultiplyPoint((0.0, 0.0, 0.0, 1.0))
        ras2ijk = vtk.vtkMatrix4x4()
        volumeNode.GetRASToIJKMatrix(ras2ijk)
        k = ras2ijk.MultiplyPoint(center)[2]
        dims = volumeNode.GetImageData().GetDimensions()
        return int(min(max(round(k), 0), dims[2] - 1))

    def ensureDependencies(self):
        """torch through the PyTorch extension, the rest from requirements.txt; asks first."""
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            if not slicer.util.confirmOkCancelDisplay(
                "CT Invariances needs PyTorch. Install it now (several minutes)?"
            ):
                return False
            import PyTorchUtils

            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
                raise RuntimeError("PyTorch could not be installed (see the PyTorch extension's log).")
        req = Path(__file__).parent / "Resources" / "requirements.txt"
        missing = [
            ln.split(";")[0].strip()
            for ln in req.read_text().splitlines()
            if ln.strip() and not ln.startswith("#") and importlib.util.find_spec(_importName(ln)) is None
        ]
        if missing:
            if not slicer.util.confirmOkCancelDisplay(
                f"CT Invariances needs {', '.join(missing)}. Install now?"
            ):
                return False
            slicer.util.pip_install(missing)
        return True

    def detectDevice(self):
        code = (
            "import torch;print(torch.cuda.get_device_name(0)+', %.0f GiB' % "
            "(torch.cuda.get_device_properties(0).total_memory/2**30) "
            "if torch.cuda.is_available() else 'no CUDA GPU: CPU')"
        )
        try:
            return subprocess.run(
                [pythonSlicer(), "-c", code], capture_output=True, text=True, timeout=120
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            return f"unknown ({exc})"

    def probe(self, p):
        """Method C in a child process: a disc at the markup point, or each segment of the chosen
        segmentation with its own shape. Returns (the answer, the erasure or None for segments)."""
        import tempfile

        from CTInvariancesSlicer import volume_to_file
        from CTInvariancesSlicer.logic import check_input_node, cli_env
        from CTInvariancesSlicer.results import segments_to_file

        check_input_node(p.inputVolume)  # a ValueError with a message for the user
        segmentation = p.probeSegmentation
        point = p.probePoint
        if segmentation is None and (point is None or point.GetNumberOfControlPoints() == 0):
            raise ValueError("Place a point or choose a segmentation first.")
        if segmentation is not None and segmentation.GetSegmentation().GetNumberOfSegments() == 0:
            raise ValueError(f"'{segmentation.GetName()}' has no segments.")
        with tempfile.TemporaryDirectory(prefix="ctinvariances-") as tmp:
            path = volume_to_file(p.inputVolume, Path(tmp) / "input.nrrd")
            if segmentation is not None:
                names = segments_to_file(segmentation, p.inputVolume, Path(tmp) / "segments.nrrd")
                where = ["--mask", Path(tmp) / "segments.nrrd"]
            else:
                r, a, s = point.GetNthControlPointPositionWorld(0)
                where = ["--at", f"{-r},{-a},{s}", "--diameter", p.probeDiameter]
            denoiser = p.customDenoiserPath if p.denoiser == "custom file" else p.denoiser
            if not denoiser:
                raise ValueError("Choose a denoiser file.")
            proc = subprocess.run(
                self.runner.cli_command(
                    "probe",
                    path,
                    "--denoiser",
                    denoiser,
                    *where,
                    "--contrast",
                    p.probeContrast,
                    "--device",
                    p.device,
                    "--json",
                ),
                capture_output=True,
                text=True,
                env=cli_env(),
            )
        if proc.returncode != 0:
            raise RuntimeError((proc.stderr.strip().splitlines() or ["the probe failed"])[-1])
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        if segmentation is not None:
            lines = [
                f"'{names[st['label'] - 1]}' at {r['contrast_hu']:+g} HU "
                + ("would be erased" if st["erasure"] > 0.5 else "would survive")
                + f": {100 * st['erasure']:.0f} % invisible to {r['denoiser']} (f keeps "
                f"{100 * st['transfer']:.0f} %; {len(st['slices'])} slices)."
                for st in r["structures"]
            ]
            return "\n".join(lines), None
        verdict = "would be erased by" if r["erasure"] > 0.5 else "would survive"
        answer = (
            f"A {r['diameter_mm']:g} mm, {r['contrast_hu']:+g} HU structure here {verdict} "
            f"{r['denoiser']}: {100 * r['erasure']:.0f} % of its contrast is invisible to it "
            f"(f keeps {100 * r['transfer']:.0f} % of the contrast; slice {r['slice']})."
        )
        return answer, r["erasure"]


def _importName(requirement):
    name = requirement.split(";")[0].split("=")[0].split(">")[0].split("<")[0].strip()
    return {
        "pydicom-data": "data_store",
        "pylibjpeg-openjpeg": "openjpeg",
        "SimpleITK": "SimpleITK",
        "pynrrd": "nrrd",
        "scikit-image": "skimage",
    }.get(name, name.replace("-", "_"))


class CTInvariancesTest(ScriptedLoadableModuleTest):
    """A fast self-test for users and the build farm: a small synthetic CT on the CPU."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_logic_on_synthetic_volume()

    def test_logic_on_synthetic_volume(self):
        import numpy as np
        from CTInvariancesSlicer.logic import CTInvariancesLogic as Runner
        from CTInvariancesSlicer.logic import RunParameters

        yy, xx = np.mgrid[:192, :192]
        body = (yy - 96) ** 2 + (xx - 96) ** 2 < 80**2
        ct = np.where(body, 40.0, -1000.0).astype(np.float32)[None]
        ct += np.random.default_rng(0).normal(0, 15, ct.shape).astype(np.float32) * body
        node = slicer.util.addVolumeFromArray(ct, name="synthetic")
        node.SetSpacing(1.0, 1.0, 2.0)
        results = Runner(python=pythonSlicer()).process(
            node, RunParameters(denoisers=["cnn10"], samples=2, consistency=1, sampler="noise", device="cpu")
        )
        nodes = results["cnn10"]
        self.assertEqual(nodes["samples"].GetNumberOfDataNodes(), 2)
        self.assertIsNotNone(nodes["std_map"])
        logging.info("CTInvariances self-test passed")
        self.delayDisplay("Test passed")
