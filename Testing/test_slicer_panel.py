"""The module's panel: the real .ui file loaded offscreen with PySide6's QUiLoader. Every widget the
module file uses exists, every parameter field has a widget bound to it, and a PNG is rendered."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

pytest.importorskip("PySide6", reason="needs PySide6-Essentials")

from panel import load_panel  # noqa: E402

MODULE = Path(__file__).resolve().parents[1] / "CTInvariances" / "CTInvariances.py"


def _parameter_fields() -> set[str]:
    tree = ast.parse(MODULE.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "CTInvariancesParameterNode")
    return {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)}


@pytest.fixture(scope="module")
def panel():
    app, panel = load_panel()
    yield panel
    panel.close()


def test_every_parameter_field_has_a_bound_widget(panel):
    from PySide6.QtWidgets import QWidget

    bound = {}
    for w in panel.findChildren(QWidget):
        name = w.property("SlicerParameterName")
        if name:
            bound.setdefault(str(name), []).append(w.objectName())
    fields = _parameter_fields()
    assert fields == set(bound), fields ^ set(bound)
    assert all(len(v) == 1 for v in bound.values()), bound


def test_every_widget_the_module_uses_exists(panel):
    from PySide6.QtCore import QObject

    used = set(re.findall(r"self\.ui\.(\w+)", MODULE.read_text()))
    assert used, "the module uses no widgets?"
    missing = sorted(n for n in used if panel.findChild(QObject, n) is None)
    assert not missing, missing


def test_choices_in_the_panel_match_the_parameter_choices(panel):
    from PySide6.QtWidgets import QComboBox

    text = MODULE.read_text()
    for combo_name, field in (("deviceComboBox", "device"), ("sliceSelectionComboBox", "sliceSelection")):
        combo = panel.findChild(QComboBox, combo_name)
        items = [combo.itemText(i) for i in range(combo.count())]
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(f"{field}:"))
        choices = ast.literal_eval(re.search(r"Choice\((\[.*?\])\)", line).group(1))
        assert items == choices, (combo_name, items, choices)


def test_panel_renders(panel, tmp_path):
    panel.resize(440, 1000)
    image = panel.grab()
    path = tmp_path / "panel.png"
    assert image.save(str(path)) and path.stat().st_size > 5_000


def test_denoiser_list_is_the_models_list(tmp_path, monkeypatch):
    """The panel fills its denoiser list from the same function as `ctinvariances models list`;
    a model in the user folder appears in both, bundled ones first."""
    import shutil

    from CTInvariancesLib.model_folders import denoiser_entries, models_dir

    monkeypatch.setenv("CTINVARIANCES_USER_MODELS", str(tmp_path))
    (tmp_path / "denoisers").mkdir()
    shutil.copy(models_dir() / "denoisers" / "cnn10.safetensors", tmp_path / "denoisers" / "mine.safetensors")
    shutil.copy(
        models_dir() / "denoisers" / "cnn10.safetensors", tmp_path / "denoisers" / "cnn10.safetensors"
    )
    names = [e["name"] for e in denoiser_entries()]
    assert names == ["cnn10", "redcnn", "wganvgg", "dugan", "user/cnn10", "mine"]
    assert "denoiserNames" in MODULE.read_text() and "denoiser_entries" in MODULE.read_text()


def test_every_node_selector_gets_the_scene():
    """In Slicer a qMRMLNodeComboBox lists nodes only once the module's mrmlSceneChanged signal is
    connected to its setMRMLScene slot in the .ui; a selector without it stays empty."""
    import xml.etree.ElementTree as ET

    ui = ET.parse(MODULE.parent / "Resources" / "UI" / "CTInvariances.ui").getroot()
    selectors = {w.get("name") for w in ui.iter("widget") if w.get("class") == "qMRMLNodeComboBox"}
    connected = {
        c.findtext("receiver")
        for c in ui.iter("connection")
        if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
        and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    assert selectors and selectors <= connected, selectors - connected
