"""Denoiser training: every recipe runs, loss falls, checkpoints resume exactly, cards are written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from CTInvariancesLib.denoisers import load_denoiser
from CTInvariancesLib.io import read_volume
from CTInvariancesLib.lowdose import LowDoseSettings, LowDoseSimulator
from CTInvariancesLib.training.denoisers import DenoiserTrainer, DenoiserTrainingConfig


@pytest.fixture(scope="module")
def small_pairs(ct_small):
    vol = read_volume(ct_small)
    fd = vol.array[0]
    px = (vol.spacing[1], vol.spacing[0])
    sim = LowDoseSimulator(LowDoseSettings(dose_fraction=0.25, i0=2e5))
    ld = np.stack([sim.simulate(fd, px, seed=s)[0] for s in range(2)])
    return {"ld": ld, "fd": np.stack([fd, fd]), "names": np.array(["ct_small#0", "ct_small#1"])}


def _cfg(tmp_path, arch, steps, **kw):
    return DenoiserTrainingConfig(arch=arch, out=str(tmp_path / arch), width=8, steps=steps,
                                  batch_size=4, patch=32, checkpoint_every=3, **kw)


@pytest.mark.parametrize("arch", ["cnn10", "redcnn", "wganvgg", "dugan"])
def test_every_recipe_trains_and_exports(tmp_path, small_pairs, arch):
    torch.set_num_threads(1)
    path = DenoiserTrainer(_cfg(tmp_path, arch, 6), device="cpu").run(pairs=small_pairs, progress=False)
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["arch"] == arch and card["training"]["steps"] == 6 and len(card["sha256"]) == 64
    den = load_denoiser(str(path))
    assert den.denoise_slices(small_pairs["ld"][:1]).shape == (1, 128, 128)
    log = [json.loads(line) for line in (tmp_path / arch / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [3, 6] and all(np.isfinite(r["mse"]) for r in log)


def test_resume_gives_the_same_weights_as_one_run(tmp_path, small_pairs):
    torch.set_num_threads(1)
    one = DenoiserTrainer(_cfg(tmp_path / "a", "cnn10", 6))
    one.run(pairs=small_pairs, progress=False)
    first = DenoiserTrainer(_cfg(tmp_path / "b", "cnn10", 6))
    assert first.run(pairs=small_pairs, progress=False, stop_at=4) is None  # "interrupted"
    assert not (tmp_path / "b" / "cnn10" / "cnn10.safetensors").exists()
    resumed = DenoiserTrainer(_cfg(tmp_path / "b", "cnn10", 6))
    resumed.run(pairs=small_pairs, progress=False)
    assert resumed.step == 6
    for k, v in one.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_loss_decreases(tmp_path, small_pairs):
    torch.set_num_threads(1)
    cfg = _cfg(tmp_path, "cnn10", 60, lr=3e-3, relative_from=1.0)  # plain MSE throughout
    cfg.checkpoint_every = 20
    DenoiserTrainer(cfg).run(pairs=small_pairs, progress=False)
    log = [json.loads(line) for line in (tmp_path / "cnn10" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["mse"] < log[0]["mse"]


def test_relative_mse_weights_patches_by_their_noise():
    from CTInvariancesLib.training.denoisers import relative_mse

    y = torch.zeros(2, 1, 4, 4)
    x = torch.cat([torch.full((1, 1, 4, 4), 1.0), torch.full((1, 1, 4, 4), 0.1)])
    out = x * 0.5  # halves both errors: each patch keeps a quarter of its squared error
    assert float(relative_mse(out, y, x) / relative_mse(x, y, x)) == pytest.approx(0.25)
    assert float(relative_mse(x, y, x)) == pytest.approx(float(((x - y) ** 2).mean()))  # MSE scale
    # a patch with 100x less noise weighs as much as the noisy one: fixing only it gains as much
    fix_quiet = torch.cat([x[:1], y[1:]])
    fix_loud = torch.cat([y[:1], x[1:]])
    assert float(relative_mse(fix_quiet, y, x)) == pytest.approx(float(relative_mse(fix_loud, y, x)))


@pytest.mark.parametrize("arch", ["cnn10", "wganvgg", "redcnn", "dugan"])
def test_identity_init_starts_as_the_identity(arch):
    from CTInvariancesLib.denoisers import build_denoiser
    from CTInvariancesLib.normalization import hu_to_normalized
    from CTInvariancesLib.training.denoisers import identity_init

    torch.manual_seed(0)
    net = build_denoiser(arch)
    assert identity_init(net)
    x = hu_to_normalized(torch.empty(1, 1, 40, 40).uniform_(-1024, 3000))
    with torch.no_grad():
        assert float((net(x) - x).abs().max()) < 0.05  # < 25 HU before any training
    assert not identity_init(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_fine_tune_from_weights_records_its_start(tmp_path, small_pairs):
    torch.set_num_threads(1)
    first = DenoiserTrainer(_cfg(tmp_path / "a", "cnn10", 3)).run(pairs=small_pairs, progress=False)
    cfg = _cfg(tmp_path / "b", "cnn10", 3, init=str(first), relative_from=0.0)
    tuned = DenoiserTrainer(cfg)
    start = {k: v.clone() for k, v in tuned.model.state_dict().items()}
    assert all(torch.equal(start[k], v) for k, v in load_denoiser(str(first)).module.state_dict().items())
    path = tuned.run(pairs=small_pairs, progress=False)
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["training"]["init"]["sha256"] == json.loads(first.with_suffix(".json").read_text())["sha256"]
    assert card["training"]["init"]["training"]["steps"] == 3
    assert card["training"]["identity_init"] is False


def test_held_out_and_training_slices_are_disjoint():
    from CTInvariancesLib.datasets import SOURCES

    for src in SOURCES:
        assert src.train and src.holdout
        assert not set(src.train) & set(src.holdout), src.folder
