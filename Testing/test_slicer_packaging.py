"""The extension's packaging, as Slicer's build and the Extensions Index check it: every module .py
listed in SCRIPTS and every listed file present, project() equal to the index entry's name, the
entry holding schema keys only, LF line endings, LICENSE and icons present."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "CTInvariances"
SCHEMA_KEYS = {"$schema", "category", "scm_url", "scm_revision", "build_dependencies", "tier"}


def _cmake_list(name: str) -> list[str]:
    text = (MODULE / "CMakeLists.txt").read_text()
    block = re.search(rf"set\({name}\n(.*?)\n\s*\)", text, re.S)
    assert block, name
    return [ln.strip() for ln in block.group(1).splitlines() if ln.strip()]


def _module_files(pattern: str) -> set[str]:
    return {
        str(p.relative_to(MODULE))
        for p in MODULE.rglob(pattern)
        if "egg-info" not in str(p) and "__pycache__" not in str(p)
    }


def test_every_module_python_file_is_listed_and_every_listed_file_exists():
    listed = _cmake_list("MODULE_PYTHON_SCRIPTS")
    assert set(listed) == _module_files("*.py")
    assert "CTInvariances.py" in listed and "CTInvariancesSlicer/results.py" in listed


def test_every_resource_is_listed_and_exists():
    listed = _cmake_list("MODULE_PYTHON_RESOURCES")
    files = {f for f in _module_files("*") if f.startswith("Resources/") and (MODULE / f).is_file()}
    assert set(listed) == files
    for needed in (
        "Resources/UI/CTInvariances.ui",
        "Resources/Icons/CTInvariances.png",
        "Resources/requirements.txt",
        "Resources/Analysis/calibration.json",
    ):
        assert needed in listed


def test_project_name_matches_the_index_entry_and_metadata_is_complete():
    top = (ROOT / "CMakeLists.txt").read_text()
    assert re.search(r"^project\(CTInvariances\)", top, re.M)
    for key in (
        "EXTENSION_HOMEPAGE",
        "EXTENSION_CATEGORY",
        "EXTENSION_CONTRIBUTORS",
        "EXTENSION_DESCRIPTION",
        "EXTENSION_ICONURL",
        "EXTENSION_SCREENSHOTURLS",
        "EXTENSION_DEPENDS",
    ):
        assert re.search(rf"set\({key} \"[^\"]+\"\)", top), key
    for line in (
        "find_package(Slicer REQUIRED)",
        "include(${Slicer_USE_FILE})",
        "add_subdirectory(CTInvariances)",
        "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
        "include(${Slicer_EXTENSION_CPACK})",
    ):
        assert line in top
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in top
    entry = json.loads((ROOT / "CTInvariances.json").read_text())
    assert set(entry) <= SCHEMA_KEYS and {"$schema", "category", "scm_url"} <= set(entry)
    assert "v1.0.2" in entry["$schema"] and entry["build_dependencies"] == ["PyTorch"]
    module = (MODULE / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule(" in module and "slicer_add_python_unittest(SCRIPT" in module


def test_lf_line_endings_licence_and_icons():
    for path in [
        ROOT / "CMakeLists.txt",
        ROOT / "CTInvariances.json",
        MODULE / "CMakeLists.txt",
        *MODULE.rglob("*.py"),
        MODULE / "Resources" / "UI" / "CTInvariances.ui",
    ]:
        assert b"\r\n" not in path.read_bytes(), path
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    for icon in (
        ROOT / "Resources" / "CTInvariances.png",
        MODULE / "Resources" / "Icons" / "CTInvariances.png",
    ):
        assert icon.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_module_imports_nothing_heavy_at_startup():
    """Slicer imports every module at start-up: no torch and no core library at module level."""
    import ast

    tree = ast.parse((MODULE / "CTInvariances.py").read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = {a.name.split(".")[0] for n in top for a in n.names} | {
        (n.module or "").split(".")[0] for n in top if isinstance(n, ast.ImportFrom)
    }
    assert not names & {"torch", "CTInvariancesLib", "CTInvariancesSlicer", "numpy", "scipy"}
