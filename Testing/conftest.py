"""Shared fixtures: real data locations; tests needing ../shared/data skip clearly without it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "CTInvariances"))  # the core library, also without `pip install -e`

from CTInvariancesLib.datasets import shared_data_dir  # noqa: E402

DATA = shared_data_dir()
os.environ.setdefault("CTINVARIANCES_CACHE", str(ROOT / ".cache"))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"needs the shared CT data at {path} (set CTINVARIANCES_DATA); not present here")
    return path


@pytest.fixture(scope="session")
def abdomen_dir() -> Path:
    return _need(DATA / "ct" / "abdomen-siemens-20")


@pytest.fixture(scope="session")
def head_dir() -> Path:
    return _need(DATA / "ct" / "head-ge-28")


@pytest.fixture(scope="session")
def phantom_dir() -> Path:
    return _need(DATA / "phantom" / "lcd-mita-fda" / "fbp")


@pytest.fixture(scope="session")
def ct_small() -> Path:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm"))


def pydicom_test_file(name: str) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} not available")
    return Path(path)
