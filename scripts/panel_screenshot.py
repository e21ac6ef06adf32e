"""Render the module panel (the real .ui, offscreen) to Resources/Screenshot-panel.png, the
extension's screenshot. Slicer-only widgets are drawn by Qt stand-ins (Testing/panel.py).

    .venv/bin/python scripts/panel_screenshot.py
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "Testing"))
from panel import load_panel  # noqa: E402

app, panel = load_panel()
panel.resize(440, 1050)
out = ROOT / "Resources" / "Screenshot-panel.png"
panel.grab().save(str(out))
print(f"wrote {out.relative_to(ROOT)}")
