"""The bundled demo denoisers: present, hash-checked, with cards, and as good as their cards say.

The held-out evaluation re-runs here (simulated 25 % dose of the held-out slices, seed 7) and must
reproduce each card's numbers and meet the acceptance targets: >= 3 dB PSNR and >= 0.05 SSIM over
the low-dose input, soft-tissue window.
"""

from __future__ import annotations

import json

import pytest

from CTInvariancesLib.denoisers import DENOISER_NAMES, load_denoiser
from CTInvariancesLib.evaluation import HOLDOUT_SEED, evaluate_denoiser
from CTInvariancesLib.metrics import SOFT_TISSUE
from CTInvariancesLib.weights import models_dir, sha256_of

TOTAL_LIMIT_MB = 50


@pytest.mark.parametrize("name", DENOISER_NAMES)
def test_bundled_weights_have_cards_and_hashes(name):
    path = models_dir() / "denoisers" / f"{name}.safetensors"
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["sha256"] == sha256_of(path)
    assert card["arch"] == name and card["input_convention"] == "normalized"
    for key in ("data", "dose_fraction", "steps", "train_time_s", "hardware"):
        assert key in card["training"]
    assert "holdout_dose_0.25" in card["metrics"]


def test_bundled_models_are_small():
    total = sum(p.stat().st_size for p in (models_dir() / "denoisers").glob("*.safetensors"))
    assert total < TOTAL_LIMIT_MB * 1e6


@pytest.fixture(scope="module")
def holdout_pairs(abdomen_dir, head_dir):
    from CTInvariancesLib.training.data import make_pairs

    return make_pairs("holdout", 0.25, realisations=1, seed=HOLDOUT_SEED)


@pytest.mark.parametrize("name", DENOISER_NAMES)
def test_bundled_denoiser_meets_targets_and_reproduces_its_card(name, holdout_pairs):
    den = load_denoiser(name)
    res = evaluate_denoiser(den, 0.25, SOFT_TISSUE, pairs=holdout_pairs)
    assert res["psnr_gain_db"] >= 3.0, res
    assert res["ssim_gain"] >= 0.05, res
    card = den.card["metrics"]["holdout_dose_0.25"]
    assert res["denoised"]["psnr_db"] == pytest.approx(card["denoised"]["psnr_db"], abs=0.05)
    assert res["ssim_gain"] == pytest.approx(card["ssim_gain"], abs=0.005)
