"""Training the engine for real (tiny models): planted truth, resume, data-parallel under torchrun."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_fixtures import (
    CLIP,
    REGION,
    TINY_CINN,
    TINY_CVAE,
    TINY_SPATIAL_CINN,
    TINY_SPATIAL_CVAE,
    SyntheticSource,
    blobs,
    clip_bright,
    identity,
    ignore_region,
)

from CTInvariancesLib.denoisers.loading import Denoiser
from CTInvariancesLib.invariance.models import load_cinn, load_cvae
from CTInvariancesLib.invariance.spatial import SpatialCINNConfig
from CTInvariancesLib.training import distributed
from CTInvariancesLib.training.invariance import (
    CINNTrainer,
    CINNTrainingConfig,
    CVAETrainer,
    CVAETrainingConfig,
)

ROOT = Path(__file__).resolve().parents[1]
SINGLE = distributed.DistContext()


def _train_engine(
    tmp: Path, f, name: str, cvae_config=TINY_CVAE, cinn_config=TINY_CINN, cvae=None, cinn=None
) -> tuple:
    """Train a tiny engine on synthetic blobs for denoiser ``f``; ``cvae`` / ``cinn``: settings that
    differ from the tiled engine's test recipe."""
    cvae_settings = dict(steps=600, batch_size=32, lr=2e-3, l1_weight=1.0, kl_weight=0.1) | (cvae or {})
    CVAETrainer(
        CVAETrainingConfig(
            out=str(tmp / "cvae"),
            model_config=cvae_config,
            adv_weight=0.0,
            device="cpu",
            checkpoint_every=1000,
            **cvae_settings,
        ),
        SINGLE,
        source=SyntheticSource(f, 0),
    ).run(progress=False)
    cinn_settings = dict(steps=300, batch_size=64, lr=1e-3) | (cinn or {})
    CINNTrainer(
        CINNTrainingConfig(
            out=str(tmp / "cinn"),
            denoiser=name,
            cvae=str(tmp / "cvae"),
            model_config=cinn_config,
            device="cpu",
            checkpoint_every=1000,
            **cinn_settings,
        ),
        SINGLE,
        source=SyntheticSource(f, 1),
        denoiser=Denoiser(f, name),
    ).run(progress=False)
    vae, _ = load_cvae(tmp / "cvae")
    inn, card = load_cinn(tmp / "cinn" / f"cinn-{name}.safetensors")
    assert card["denoiser"]["name"] == name
    return vae, inn


@torch.inference_mode()
def _sample_std_and_reconstruction(vae, inn, f, n=20, k=32):
    torch.manual_seed(0)
    x = blobs(n, np.random.default_rng(123))  # patches never seen in training
    fx = f(x)
    rec = vae.decode(vae.encode(x, fx).mean, fx)
    samples = torch.stack([vae.decode(inn.reverse(torch.randn(n, vae.z_dim), fx), fx) for _ in range(k)])
    return samples.std(0)[:, 0], float(((rec - x) ** 2).mean().sqrt())


@pytest.fixture(scope="module")
def torch_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
    torch.set_num_threads(old)


def test_planted_region_that_the_denoiser_ignores_is_where_samples_vary(tmp_path, torch_threads):
    vae, inn = _train_engine(tmp_path, ignore_region, "ignores-centre")
    std, _ = _sample_std_and_reconstruction(vae, inn, ignore_region)
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[REGION] = True
    ratio = float(std[:, inside].mean() / std[:, ~inside].mean())
    assert ratio >= 5.0, f"std inside / outside the ignored region = {ratio:.2f}"
    # the engine uses what it must: z carries the ignored content (no collapsed posterior), and the
    # cINN models z given f(x) better than the prior and than with another patch's f(x)
    from CTInvariancesLib.invariance.metrics import PatchSet, uses_condition

    x = blobs(400, np.random.default_rng(321))
    m = uses_condition(vae, inn, PatchSet(x, ignore_region(x)))
    nll = m["nll_per_dim"]
    assert m["posterior_kl_nats"] >= 5.0, m
    assert nll["true_condition"] <= nll["shuffled_condition"] - 0.02, nll
    assert nll["true_condition"] <= nll["prior"] - 0.02, nll


@pytest.fixture(scope="module")
def clip_engine(tmp_path_factory, torch_threads) -> Path:
    """A tiny spatial engine trained for real on synthetic blobs with a denoiser that clips at CLIP
    (folder with cvae/ and cinn/), shared by the tests that read it."""
    tmp = tmp_path_factory.mktemp("clip-engine")
    _train_engine(
        tmp,
        clip_bright,
        "clip",
        TINY_SPATIAL_CVAE,
        TINY_SPATIAL_CINN,
        # l2 keeps the tiny decoder off the saddle where it ignores z
        cvae=dict(steps=400, l2_weight=10.0, kl_weight=1e-4),
        cinn=dict(batch_size=32, lr=2e-3),
    )
    return tmp


def test_spatial_engine_varies_inside_what_a_clipping_denoiser_loses(clip_engine):
    """Planted truth for the spatial engine (cVAE with a latent map, cINN on it), trained for real on
    synthetic blobs with a denoiser that clips at CLIP: the cINN's samples must vary inside the
    clipped structures (what f loses) >= 5x more than in soft tissue (what f keeps), and beat the
    cVAE prior alone, which varies everywhere because it does not know f(x)."""
    f = clip_bright
    vae, _ = load_cvae(clip_engine / "cvae")
    inn, _ = load_cinn(clip_engine / "cinn" / "cinn-clip.safetensors")
    torch.manual_seed(0)
    with torch.inference_mode():
        x = blobs(40, np.random.default_rng(123))  # patches never seen in training
        fx = f(x)
        shape = vae.encode(x, fx).mean.shape
        cinn = [vae.decode(inn.reverse(torch.randn(shape), fx), fx) for _ in range(16)]
        prior = [vae.decode(torch.randn(shape), fx) for _ in range(16)]
        cinn_std, prior_std = torch.stack(cinn).std(0), torch.stack(prior).std(0)
    clipped, soft = x > CLIP + 0.05, x.abs() < 0.2
    cinn_ratio = float(cinn_std[clipped].mean() / cinn_std[soft].mean())
    prior_ratio = float(prior_std[clipped].mean() / prior_std[soft].mean())
    assert cinn_ratio >= 5.0, f"cINN: std inside the clipped structures / soft tissue = {cinn_ratio:.2f}"
    assert cinn_ratio > 2 * prior_ratio, f"cINN {cinn_ratio:.2f} does not beat the prior {prior_ratio:.2f}"


def _share_seen_and_power(vae, inn, f, n: int = 40, k: int = 8) -> tuple[float, float]:
    """Over held-out blobs: power of f(x~) - f(x) over that of x~ - f(x) (what f still sees of the
    samples' variation), and power of x~ - f(x) over that of x - f(x)."""
    torch.manual_seed(0)
    with torch.inference_mode():
        x = blobs(n, np.random.default_rng(321))
        fx = f(x)
        shape = vae.encode(x, fx).mean.shape
        s = torch.stack([vae.decode(inn.reverse(torch.randn(shape), fx), fx) for _ in range(k)])
        residual = float(((s - fx) ** 2).mean())
        return float(((f(s) - fx) ** 2).mean()) / residual, residual / float(((x - fx) ** 2).mean())


def test_invariance_term_puts_the_samples_variation_where_the_denoiser_does_not_look(clip_engine, tmp_path):
    """`train cinn --invariance-weight`: the same fine-tune of the trained cINN with and without the
    term (no power term: on these blobs it pulls the under-dispersed samples up to x's power, into
    what the clip keeps); with it, a clearly smaller share of the samples' variation reaches f's
    output, and the samples do not buy that by shrinking (measured: share 0.62x, power 1.24x)."""
    vae, _ = load_cvae(clip_engine / "cvae")
    got = {}
    for weight in (0.0, 4.0):
        out = tmp_path / f"w{weight:g}"
        CINNTrainer(
            CINNTrainingConfig(out=str(out), denoiser="clip", cvae=str(clip_engine / "cvae"),
                               model_config=TINY_SPATIAL_CINN, steps=150, batch_size=32, lr=1e-3,
                               device="cpu", checkpoint_every=1000, invariance_weight=weight,
                               invariance_batch=16, power_weight=0.0,
                               init=str(clip_engine / "cinn" / "cinn-clip.safetensors")),
            SINGLE, source=SyntheticSource(clip_bright, 2), denoiser=Denoiser(clip_bright, "clip"),
        ).run(progress=False)
        inn, card = load_cinn(out / "cinn-clip.safetensors")
        assert card["training"]["invariance_weight"] == weight
        got[weight] = _share_seen_and_power(vae, inn, clip_bright)
    (seen_ml, power_ml), (seen_inv, power_inv) = got[0.0], got[4.0]
    assert seen_inv <= 0.8 * seen_ml, got
    assert power_inv >= 0.9 * power_ml, got


def test_spectrum_and_moment_terms_enter_the_fine_tunes_gradient(clip_engine, tmp_path):
    """`train cinn --spectrum-weight` and `--moment-weight`: each term is logged and changes the
    update (same seed, same crops, only its weight differs). What the terms do is tested on their own
    in test_spatial_engine.py; this catches a trainer that computes one and leaves it out of the loss."""
    weights = {}
    runs = {"none": {}, "spectrum": {"spectrum_weight": 50.0}, "moments": {"moment_weight": 50.0}}
    for name, extra in runs.items():
        out = tmp_path / name
        CINNTrainer(
            CINNTrainingConfig(out=str(out), denoiser="clip", cvae=str(clip_engine / "cvae"),
                               model_config=TINY_SPATIAL_CINN, steps=2, batch_size=8, lr=1e-3,
                               device="cpu", checkpoint_every=1000, invariance_weight=1.0,
                               invariance_batch=8, power_weight=0.0,
                               init=str(clip_engine / "cinn" / "cinn-clip.safetensors"), **extra),
            SINGLE, source=SyntheticSource(clip_bright, 2), denoiser=Denoiser(clip_bright, "clip"),
        ).run(progress=False)
        inn, card = load_cinn(out / "cinn-clip.safetensors")
        for key, value in extra.items():
            assert card["training"][key] == value
        if name != "none":
            log = (out / "log-cinn-clip.jsonl").read_text()
            assert {"spectrum": '"spectrum_shape"', "moments": '"moments"'}[name] in log, log[:300]
        weights[name] = inn.state_dict()
    for name in ("spectrum", "moments"):
        moved = max(float((weights[name][k] - v).abs().max()) for k, v in weights["none"].items())
        assert moved > 1e-6, f"the {name} weight did not change the fine-tune"


def test_calibration_refit_is_run_and_fits_what_calibration_fit_says(clip_engine, tmp_path):
    """`train cinn --calibration-crops N --calibration-fit all|mean`: after the steps the output
    calibration is refitted on N fresh crops; `mean` moves its shift only and keeps the trained scale,
    `all` moves both; 0 crops leave it as trained. (The fit itself: test_spatial_engine.py.)"""
    config = SpatialCINNConfig(latent_ch=2, down=1, n_flows=2, hidden=16, cond_width=8, noise_condition=True,
                               noise_scale=True, noise_map=False, calibration=True, name="tiny-calibrated")
    runs = {"none": {"calibration_crops": 0}, "all": {"calibration_crops": 16, "calibration_fit": "all"},
            "mean": {"calibration_crops": 16, "calibration_fit": "mean"}}
    layers, cards = {}, {}
    for name, extra in runs.items():
        out = tmp_path / name
        CINNTrainer(
            CINNTrainingConfig(out=str(out), denoiser="clip", cvae=str(clip_engine / "cvae"),
                               model_config=config, steps=2, batch_size=8, lr=1e-3, device="cpu",
                               checkpoint_every=1000, **extra),
            SINGLE, source=SyntheticSource(clip_bright, 3), denoiser=Denoiser(clip_bright, "clip"),
        ).run(progress=False)
        inn, card = load_cinn(out / "cinn-clip.safetensors")
        layers[name] = {k: v.clone() for k, v in inn.calibration.state_dict().items()}
        cards[name] = card["training"]["calibration"]
    assert cards["none"] is None
    for name in ("all", "mean"):
        assert cards[name]["fit"] == name and cards[name]["crops"] >= 16, cards[name]
        assert cards[name]["nll_per_dim_after"] <= cards[name]["nll_per_dim_before"], cards[name]
        assert not torch.equal(layers[name]["m"], layers["none"]["m"]), f"{name}: the shift was not fitted"
    assert torch.equal(layers["mean"]["s"], layers["none"]["s"]), "mean: the trained scale was changed"
    assert not torch.equal(layers["all"]["s"], layers["none"]["s"]), "all: the scale was not fitted"


def test_identity_denoiser_leaves_nothing_to_vary(tmp_path, torch_threads):
    # half the planted test's steps: measured margin 3.6x at 300 / 150 steps (3.3x at 600 / 300)
    vae, inn = _train_engine(tmp_path, identity, "identity", cvae=dict(steps=300), cinn=dict(steps=150))
    std, rec_err = _sample_std_and_reconstruction(vae, inn, identity)
    assert float(std.mean()) <= rec_err, (
        f"sample std {float(std.mean()):.4f} > reconstruction error {rec_err:.4f}"
    )


def test_cvae_training_resumes_exactly(tmp_path, torch_threads):
    def cfg(out):
        return CVAETrainingConfig(
            out=str(out),
            model_config=TINY_CVAE,
            steps=6,
            batch_size=4,
            lr=1e-3,
            adv_weight=0.1,
            adv_start=2,
            device="cpu",
            checkpoint_every=3,
        )

    CVAETrainer(cfg(tmp_path / "a"), SINGLE, source=SyntheticSource(identity, 0)).run(progress=False)
    CVAETrainer(cfg(tmp_path / "b"), SINGLE, source=SyntheticSource(identity, 0)).run(
        progress=False, stop_at=3
    )
    assert not (tmp_path / "b" / "cvae.safetensors").exists()
    CVAETrainer(cfg(tmp_path / "b"), SINGLE, source=SyntheticSource(identity, 0)).run(progress=False)
    a, _ = load_cvae(tmp_path / "a")
    b, card = load_cvae(tmp_path / "b")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert [s["to_step"] for s in card["training"]["stages"]] == [3, 6]
    assert len((tmp_path / "b" / "log.jsonl").read_text().splitlines()) == 2


def _torchrun(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not installed beside this Python")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "CTInvariancesLib.cli.main", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_two_process_data_parallel_training_ends_with_identical_weights(tmp_path, ct_small):
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(ROOT / "CTInvariances"),
        CTINVARIANCES_CACHE=str(tmp_path / "cache"),
    )
    common = ["--data", str(ct_small), "--device", "cpu", "--realisations", "1"]
    res = _torchrun(
        [
            "train",
            "cvae",
            "--size",
            "compact",  # the tiled size has the critic whose gradients must be all-reduced too
            "--out",
            str(tmp_path / "cvae"),
            "--denoiser",
            "cnn10",
            "--steps",
            "4",
            "--adv-start",
            "2",
            "--batch-size",
            "4",
            "--checkpoint-every",
            "2",
            *common,
        ],
        tmp_path,
        env,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    digests = [(tmp_path / "cvae" / f"rank{r}.sha256").read_text() for r in (0, 1)]
    assert digests[0] == digests[1]
    vae, card = load_cvae(tmp_path / "cvae")
    assert card["training"]["world_size"] == 2
    res = _torchrun(
        [
            "train",
            "cinn",
            "--denoiser",
            "cnn10",
            "--cvae",
            str(tmp_path / "cvae"),
            "--out",
            str(tmp_path / "cinn"),
            "--steps",
            "3",
            "--batch-size",
            "8",
            *common,
        ],
        tmp_path,
        env,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    digests = [(tmp_path / "cinn" / f"rank{r}.sha256").read_text() for r in (0, 1)]
    assert digests[0] == digests[1]
    load_cinn(tmp_path / "cinn" / "cinn-cnn10.safetensors")
    shutil.rmtree(tmp_path / "cache")


def test_cvae_fine_tune_starts_from_the_given_cvae_and_refuses_another_architecture(tmp_path, torch_threads):
    """`train cvae --init`: a fine-tune (e.g. with the critic switched on) starts from the trained
    weights, records them in the card, and a cVAE of another architecture is a one-line error."""
    from CTInvariancesLib.errors import CTInvariancesError

    def cfg(out, **kw):
        return CVAETrainingConfig(out=str(out), model_config=TINY_SPATIAL_CVAE, steps=3, batch_size=4,
                                  device="cpu", checkpoint_every=100, **({"adv_weight": 0.0} | kw))

    CVAETrainer(cfg(tmp_path / "a", lr=1e-2), SINGLE, source=SyntheticSource(identity, 0)).run(progress=False)
    old, old_card = load_cvae(tmp_path / "a")
    # a vanishing learning rate: what the fine-tune ends with is what it started from
    CVAETrainer(cfg(tmp_path / "b", lr=1e-12, seed=5, init=str(tmp_path / "a" / "cvae.safetensors"),
                    adv_weight=0.1, adv_start=1),
                SINGLE, source=SyntheticSource(identity, 1)).run(progress=False)
    new, card = load_cvae(tmp_path / "b")
    for (k, a), b in zip(old.state_dict().items(), new.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), k
    assert card["training"]["init"]["sha256"] == old_card["sha256"]
    CVAETrainer(cfg(tmp_path / "c", lr=1e-12, seed=5), SINGLE, source=SyntheticSource(identity, 1)).run(
        progress=False
    )
    fresh, _ = load_cvae(tmp_path / "c")
    assert any(not torch.allclose(a.float(), b.float(), atol=1e-6)
               for a, b in zip(old.state_dict().values(), fresh.state_dict().values()))
    with pytest.raises(CTInvariancesError, match="--init"):
        CVAETrainer(CVAETrainingConfig(out=str(tmp_path / "d"), model_config=TINY_CVAE, steps=1,
                                       device="cpu", init=str(tmp_path / "a" / "cvae.safetensors")), SINGLE)
