"""The module file imported with stand-ins for what only the Slicer application has (qt,
ScriptedLoadableModule, parameterNodeWrapper), on top of the real slicer-core. This catches wiring
errors only; it never replaces the adapter, panel and packaging tests, and the module's own
self-test (CTInvariancesTest) needs Slicer."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

slicer = pytest.importorskip("slicer", reason="needs slicer-core")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package is not slicer-core", allow_module_level=True)

MODULE = Path(__file__).resolve().parents[1] / "CTInvariances" / "CTInvariances.py"


@pytest.fixture
def module(monkeypatch):
    class _Base:
        def __init__(self, *args, **kwargs):
            pass

    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in (
        "ScriptedLoadableModule",
        "ScriptedLoadableModuleLogic",
        "ScriptedLoadableModuleTest",
        "ScriptedLoadableModuleWidget",
    ):
        setattr(slm, name, type(name, (_Base,), {}))
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.parameterNodeWrapper = lambda cls: cls
    pnw.WithinRange = lambda lo, hi: ("range", lo, hi)
    pnw.Choice = lambda items: ("choice", tuple(items))
    monkeypatch.setitem(sys.modules, "qt", types.ModuleType("qt"))
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", slm)
    monkeypatch.setitem(sys.modules, "slicer.parameterNodeWrapper", pnw)
    spec = importlib.util.spec_from_file_location("CTInvariances_module_under_test", MODULE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_module_imports_and_has_the_five_parts(module):
    for name in (
        "CTInvariances",
        "CTInvariancesParameterNode",
        "CTInvariancesWidget",
        "CTInvariancesLogic",
        "CTInvariancesTest",
    ):
        assert hasattr(module, name), name
    hints = module.CTInvariancesParameterNode.__annotations__
    assert {"inputVolume", "samples", "consistencySteps", "probePoint", "device"} <= set(hints)


def test_logic_turns_parameters_into_cli_options(module, monkeypatch):
    from CTInvariancesSlicer.logic import RunParameters

    scene = slicer.vtkMRMLScene()
    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
    monkeypatch.setattr(module, "pythonSlicer", lambda: sys.executable)
    logic = module.CTInvariancesLogic()
    p = types.SimpleNamespace(
        inputVolume=node,
        denoiser="redcnn",
        customDenoiserPath="",
        samples=8,
        temperature=1.0,
        seed=3,
        consistencySteps=40,
        sliceSelection="range",
        firstSlice=2,
        lastSlice=5,
        device="cpu",
        simulateLowDose=True,
        doseFraction=0.25,
    )
    params = logic.runParameters(p)
    assert isinstance(params, RunParameters)
    args = params.arguments()
    assert args[args.index("--slices") + 1] == "2:6"  # the panel's last slice is inclusive
    assert (
        args[args.index("--simulate-dose") + 1] == "0.25" and args[args.index("--denoiser") + 1] == "redcnn"
    )
    p.denoiser, p.customDenoiserPath = "custom file", ""
    with pytest.raises(ValueError, match="denoiser file"):
        logic.runParameters(p)
    assert (
        module._importName("pylibjpeg-openjpeg>=2.3") == "openjpeg"
        and module._importName("pynrrd>=1") == "nrrd"
    )
