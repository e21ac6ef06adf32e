"""Load the module's real .ui file with PySide6 (offscreen), for the panel test and the screenshot.

Slicer's own widgets (CTK, qMRML) are not available outside Slicer; stand-ins from Qt's widgets
are registered under their class names so that the layout, object names and ``SlicerParameterName``
properties of the file are exercised as written.
"""

from __future__ import annotations

import os
from pathlib import Path

UI_FILE = Path(__file__).resolve().parents[1] / "CTInvariances" / "Resources" / "UI" / "CTInvariances.ui"


def load_panel():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QFile
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import QApplication, QComboBox, QDoubleSpinBox, QGroupBox, QLineEdit, QWidget

    app = QApplication.instance() or QApplication([])

    class ctkCollapsibleButton(QGroupBox):  # noqa: N801 - Slicer's class name
        pass

    class qMRMLNodeComboBox(QComboBox):  # noqa: N801
        pass

    class ctkSliderWidget(QDoubleSpinBox):  # noqa: N801
        pass

    class ctkPathLineEdit(QLineEdit):  # noqa: N801
        pass

    class qMRMLWidget(QWidget):  # noqa: N801
        pass

    loader = QUiLoader()
    for cls in (ctkCollapsibleButton, qMRMLNodeComboBox, ctkSliderWidget, ctkPathLineEdit, qMRMLWidget):
        loader.registerCustomWidget(cls)
    f = QFile(str(UI_FILE))
    f.open(QFile.ReadOnly)
    panel = loader.load(f)
    f.close()
    if panel is None:
        raise RuntimeError(f"{UI_FILE}: QUiLoader could not load it: {loader.errorString()}")
    for box in panel.findChildren(QGroupBox):
        box.setTitle(str(box.property("text") or ""))
    for combo in panel.findChildren(qMRMLNodeComboBox):
        combo.addItem("CTInvariancesAbdomen" if combo.objectName() == "inputSelector" else "None")
    return app, panel
