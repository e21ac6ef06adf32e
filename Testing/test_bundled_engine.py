"""The bundled compact engine: files, cards, and the issue's acceptance numbers re-measured on the
held-out slices (needs ../shared/data)."""

from __future__ import annotations

import json

import pytest

from CTInvariancesLib.denoisers import DENOISER_NAMES, load_denoiser
from CTInvariancesLib.invariance.metrics import holdout_patches, invariance_fidelity, invertibility
from CTInvariancesLib.invariance.models import bundled_dir, load_cinn, load_cvae

FILES = ["cvae.safetensors"] + [f"cinn-{n}.safetensors" for n in DENOISER_NAMES]


def test_bundled_engine_files_cards_and_size():
    folder = bundled_dir()
    total = 0
    for name in FILES:
        path = folder / name
        assert path.exists(), f"{path} missing (scripts/train_invariance_models.sh makes it)"
        card = json.loads(path.with_suffix(".json").read_text())
        assert card["size"] == "compact" and card["training"]["steps"] > 0
        total += path.stat().st_size
    assert total <= 50 * 2**20
    cvae, cvae_card = load_cvae(None)
    for n in DENOISER_NAMES:
        _, card = load_cinn(folder / f"cinn-{n}.safetensors")
        assert card["cvae"]["sha256"] == cvae_card["sha256"]
        assert card["denoiser"]["name"] == n
        assert "holdout_dose_0.25" in card["metrics"]


@pytest.fixture(scope="module")
def cvae():
    return load_cvae(None)[0]


@pytest.mark.parametrize("name", DENOISER_NAMES)
def test_acceptance_on_held_out_patches(name, cvae, abdomen_dir):
    den = load_denoiser(name)
    cinn, card = load_cinn(bundled_dir() / f"cinn-{name}.safetensors")
    ps = holdout_patches(den, cvae.patch, 1000, seed=7)
    inv = invertibility(cvae, cinn, ps)
    assert inv["max_abs_roundtrip_error"] <= 1e-4
    assert inv["normality"]["mean_abs_max"] <= 0.1
    assert 0.8 <= inv["normality"]["std_min"] and inv["normality"]["std_max"] <= 1.2
    small = type(ps)(ps.x[:200], ps.fx[:200], ps.fd[:200])
    fid = invariance_fidelity(den, cvae, cinn, small)
    assert fid["median_ratio"] <= 0.3
    assert fid["median_rmse_input_hu"] >= 0.5 * fid["median_lowdose_noise_hu"]
    stored = card["metrics"]["holdout_dose_0.25"]["fidelity_cinn"]["median_ratio"]
    assert fid["median_ratio"] == pytest.approx(stored, rel=1e-3, abs=1e-4)  # the card is reproducible
