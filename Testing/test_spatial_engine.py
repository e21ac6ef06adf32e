"""The spatial-latent engine: exact invertibility, a condition that matters (f(x) and the noise level),
whole-slice sampling without tiles (shift-equivariant std maps, results independent of K and batch
size), loading and mixing rules, warm starts, and training beside the cVAE."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from CTInvariancesLib.denoisers.loading import Denoiser
from CTInvariancesLib.errors import CTInvariancesError, WeightsError
from CTInvariancesLib.invariance.models import load_cinn, load_cvae, save_cinn, save_cvae
from CTInvariancesLib.invariance.sampler import InvarianceSampler, SpatialInvarianceSampler, std_map
from CTInvariancesLib.invariance.spatial import (
    SpatialCINN,
    SpatialCINNConfig,
    SpatialCVAE,
    SpatialCVAEConfig,
)

SMALL_VAE = SpatialCVAEConfig(width=8, latent_width=16, blocks=1, patch=32)
SMALL_INN = SpatialCINNConfig(n_flows=3, hidden=16, cond_width=8)


class Smooth(torch.nn.Module):
    """A linear denoiser: 5 x 5 box filter."""

    def forward(self, x):
        return torch.nn.functional.avg_pool2d(x, 5, 1, 2, count_include_pad=False)


def _denoiser() -> Denoiser:
    return Denoiser(Smooth(), name="smooth", input_convention="hu")


def _randomised(model: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> torch.nn.Module:
    """Give zero-initialised layers (the identity starts) random weights, so the model is not trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2 and float(p.abs().max()) == 0.0:
                p.copy_(torch.randn(p.shape, generator=g) * scale / p[0].numel() ** 0.5)
    return model.eval()


def _inn_config(noise_condition: bool = True, **kw) -> SpatialCINNConfig:
    extra = {} if noise_condition else {"noise_scale": False, "noise_map": False, "calibration": False}
    if kw.get("noise_scale") is False:
        extra["calibration"] = False  # it reads the noise scale's level map
    return SpatialCINNConfig(
        n_flows=3, hidden=16, cond_width=8, noise_condition=noise_condition, **{**extra, **kw}
    )


def _engine(noise_condition: bool = True):
    vae = _randomised(SpatialCVAE(SMALL_VAE), 1)
    inn = _randomised(SpatialCINN(_inn_config(noise_condition)), 2)
    return vae, inn


def _slice(size: int = 96, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    body = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.42 * size) ** 2
    img = np.where(body, 40.0, -1000.0)
    for cy, cx, r, hu in ((0.35, 0.4, 0.1, 900.0), (0.6, 0.62, 0.12, -120.0), (0.4, 0.7, 0.06, 300.0)):
        img[(yy - cy * size) ** 2 + (xx - cx * size) ** 2 < (r * size) ** 2] = hu  # anatomy the map follows
    img = img + np.where(body, rng.normal(0, 20, (size, size)), 0)
    return img.astype(np.float32)


def test_cinn_is_exactly_invertible_with_a_log_det_that_matches_autograd():
    _, inn = _engine()
    z = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    fx = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    inn = inn.double()
    v, logdet = inn(z, fx, noise_hu=torch.tensor([10.0, 30.0]))
    back = inn.reverse(v, fx, noise_hu=torch.tensor([10.0, 30.0]))
    assert float((back - z).detach().abs().max()) < 1e-10
    # log-det of one sample against the full Jacobian
    z1 = z[:1].clone()

    def f(t):
        return inn(t.reshape(1, 4, 8, 8), fx[:1], noise_hu=10.0)[0].reshape(-1)

    jac = torch.autograd.functional.jacobian(f, z1.reshape(-1))
    assert abs(float(torch.linalg.slogdet(jac)[1]) - float(inn(z1, fx[:1], noise_hu=10.0)[1])) < 1e-6


def test_the_condition_matters_f_of_x_and_noise_level():
    _, inn = _engine()
    v = torch.randn(1, 4, 8, 8)
    fx = torch.randn(1, 1, 16, 16)
    base = inn.reverse(v, fx, noise_hu=20.0)
    assert float((inn.reverse(v, fx + 1.0, noise_hu=20.0) - base).abs().max()) > 1e-3
    assert float((inn.reverse(v, fx, noise_hu=5.0) - base).abs().max()) > 1e-3
    with pytest.raises(ValueError, match="noise level"):
        inn.reverse(v, fx)


def test_whole_slice_samples_vary_come_from_the_latent_and_do_not_depend_on_k_or_batch():
    vae, inn = _engine()
    smp = SpatialInvarianceSampler(_denoiser(), vae, inn)
    x = _slice(90)  # not a multiple of the latent stride: padded, then cropped back
    a = smp.sample(x, 4, seed=3, batch_size=4).samples
    b = smp.sample(x, 6, seed=3, batch_size=1).samples
    assert a.shape == (4, 90, 90)
    np.testing.assert_allclose(a, b[:4], atol=2e-3)  # sample k depends on (seed, k) alone
    body = x > -500
    assert np.median(std_map(a)[body]) > 0.05  # samples differ from each other ...
    c = smp.sample(x, 4, seed=4).samples
    assert np.abs(c - a)[:, body].mean() > 0.05  # ... and with the seed (the latent drives them)
    prior = SpatialInvarianceSampler(_denoiser(), vae, None).sample(x, 2, seed=3).samples
    assert np.abs(prior - a[:2])[:, body].mean() > 0.05  # the cINN changes what is drawn


def test_per_slice_condition_terms_give_the_same_latents_and_samples():
    """The sampler computes what depends on f(x) alone once per slice (``prepare``) and broadcasts it
    over the samples: the latents and the decoded samples must equal the full computation's, for
    every coupling (in the flow's order), the noise scale and both decoder joins."""
    vae, inn = _engine()
    vae, inn = vae.double(), inn.double()
    g = torch.Generator().manual_seed(5)
    fx = torch.randn(1, 1, 32, 32, generator=g, dtype=torch.float64)
    noise = 5.0 + 30.0 * torch.rand(1, 1, 32, 32, generator=g, dtype=torch.float64)  # a local noise map
    v = torch.randn(3, 4, 16, 16, generator=g, dtype=torch.float64)
    fxb, noiseb = fx.expand(3, -1, -1, -1), noise.expand(3, -1, -1, -1)
    with torch.no_grad():
        z_full = inn.reverse(v, fxb, noise_hu=noiseb)
        z_prep = inn.reverse(v, condition=inn.prepare(fx, noise))
        x_full = vae.decode(z_full, fxb)
        x_prep = vae.decode(z_full, vae.decoder.prepare(fx))
    assert float((z_prep - z_full).abs().max()) < 1e-10
    assert float((x_prep - x_full).abs().max()) < 1e-10
    assert float((z_full - v).abs().max()) > 0.1 and float((x_full - fxb).abs().max()) > 0.01  # not trivial


def test_the_gpu_s_bf16_decoder_path_gives_the_same_samples_to_rounding():
    """On a GPU the decoder (and its per-slice terms) run under bf16 autocast; run that path here."""
    vae, inn = _engine()
    x = _slice(64)
    full = SpatialInvarianceSampler(_denoiser(), vae, inn, amp=False).sample(x, 2, seed=1)
    bf16 = SpatialInvarianceSampler(_denoiser(), vae, inn, amp=True).sample(x, 2, seed=1)
    residual = full.samples - full.denoised[None]
    assert float(np.abs(residual).std()) > 1.0  # the decoder adds something
    assert float(np.abs(bf16.samples - full.samples).max()) < 0.05 * float(np.abs(residual).max())


def test_the_engine_is_translation_equivariant_so_it_has_no_tile_grid():
    """Shifting f(x) and the latent draw v together shifts the sample (away from the borders): there
    is no position-dependent pattern (tiles, seams) for a std map to show."""
    vae, inn = _engine()
    g = torch.Generator().manual_seed(0)
    fx = torch.randn(1, 1, 96, 96, generator=g) * 0.2
    v = torch.randn(1, 4, 48, 48, generator=g)
    dy, dx = 12, 6  # image pixels (latent: 6, 3)
    with torch.no_grad():
        a = vae.decode(inn.reverse(v, fx, noise_hu=20.0), fx)
        b = vae.decode(
            inn.reverse(
                torch.roll(v, (dy // 2, dx // 2), (2, 3)), torch.roll(fx, (dy, dx), (2, 3)), noise_hu=20.0
            ),
            torch.roll(fx, (dy, dx), (2, 3)),
        )
    inner = (slice(None), slice(None), slice(40, 70), slice(40, 70))
    shifted = torch.roll(a, (dy, dx), (2, 3))
    assert float((shifted - b)[inner].abs().max()) < 1e-4
    assert float((a - b)[inner].abs().max()) > 1e-2  # and the output does move with the input


def test_saved_engine_loads_as_a_spatial_sampler_and_rejects_mixing(tmp_path):
    vae, inn = _engine()
    den = _denoiser()
    vae_path = save_cvae(vae, tmp_path / "cvae.safetensors", {"steps": 0})
    from CTInvariancesLib.weights import read_card

    save_cinn(inn, tmp_path / "cinn-smooth.safetensors", den, read_card(vae_path), {"steps": 0})
    smp = InvarianceSampler.load(den, cvae=str(tmp_path))
    assert isinstance(smp, SpatialInvarianceSampler) and smp.kind == "cinn"
    loaded, card = load_cinn(tmp_path / "cinn-smooth.safetensors")
    assert card["config"]["noise_condition"] is True and isinstance(loaded, SpatialCINN)
    assert isinstance(load_cvae(tmp_path)[0], SpatialCVAE)
    # a tiled cINN beside a spatial cVAE is refused with a clear error
    from CTInvariancesLib.invariance.cinn import CINNConfig, ConditionalINN

    tiled = ConditionalINN(
        CINNConfig(z_dim=16, hidden=8, hidden_depth=1, n_flows=2, cond_size=16, n_down=1, embedder_width=4)
    )
    save_cinn(tiled, tmp_path / "mixed" / "cinn-smooth.safetensors", den, read_card(vae_path), {})
    with pytest.raises(WeightsError, match="spatial and tiled"):
        InvarianceSampler.load(den, cvae=str(vae_path), cinn=str(tmp_path / "mixed"))


def test_cards_from_before_the_noise_condition_load_without_it(tmp_path):
    _, inn = _engine(noise_condition=False)
    vae, _ = _engine()
    vae_path = save_cvae(vae, tmp_path / "cvae.safetensors", {})
    from CTInvariancesLib.weights import read_card

    path = save_cinn(inn, tmp_path / "cinn-smooth.safetensors", _denoiser(), read_card(vae_path), {})
    import json

    card_file = path.with_suffix(".json")
    card = json.loads(card_file.read_text())
    del card["config"]["noise_condition"]  # as the first GPU-trained cards were written
    card_file.write_text(json.dumps(card))
    loaded, _ = load_cinn(path)
    assert loaded.cfg.noise_condition is False


def test_warm_start_adds_the_noise_channel_and_starts_as_the_old_model(tmp_path):
    from CTInvariancesLib.training.invariance import _warm_start

    old_vae, old = _engine(noise_condition=False)
    vae_path = save_cvae(old_vae, tmp_path / "cvae.safetensors", {})
    from CTInvariancesLib.weights import read_card

    path = save_cinn(old, tmp_path / "old.safetensors", _denoiser(), read_card(vae_path), {})
    new = SpatialCINN(_inn_config(True), seed=5)  # with the noise channel, scale and map
    info = _warm_start(new, str(path))
    assert info["sha256"]
    new.eval()
    v, fx = torch.randn(1, 4, 8, 8), torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        a = old.reverse(v, fx)
        for noise in (5.0, 40.0):  # the new channel starts at zero weight: same output at any level
            assert float((new.reverse(v, fx, noise_hu=noise) - a).abs().max()) < 1e-5
    bigger = SpatialCINN(SpatialCINNConfig(n_flows=4, hidden=16, cond_width=8))
    with pytest.raises(CTInvariancesError, match="does not exist"):
        _warm_start(bigger.__class__(SpatialCINNConfig(n_flows=2, hidden=16, cond_width=8)), str(path))


def test_noise_level_map_takes_one_level_or_a_local_map_pooled_to_the_latent():
    from CTInvariancesLib.invariance.spatial import noise_level_map

    like = torch.zeros(2, 8, 4, 6)
    flat = noise_level_map(torch.tensor([5.0, 20.0]), like)
    assert flat.shape == (2, 1, 4, 6) and abs(float(flat[1].max())) < 1e-6
    local = torch.full((2, 1, 8, 12), 20.0)
    local[:, :, :, :6] = 5.0
    m = noise_level_map(local, like)
    assert torch.allclose(m[:, :, :, :3], torch.full_like(m[:, :, :, :3], float(np.log(0.25))))
    assert torch.allclose(m[:, :, :, 3:], torch.zeros_like(m[:, :, :, 3:]))
    with pytest.raises(ValueError, match="does not fit"):
        noise_level_map(torch.ones(2, 1, 9, 12), like)


def test_noise_scale_initialisation_gives_samples_the_local_spread_of_the_noise_map():
    """Latents whose local spread follows the noise map (noisier on the right, as behind the spine):
    after the data-dependent initialisation, a fresh cINN's samples t^-1(v) have that spread where
    the map says, not one average spread; without the scale they have one spread everywhere."""
    g = torch.Generator().manual_seed(0)
    sigma = torch.full((8, 1, 32, 32), 5.0)  # HU, at the slice's resolution
    sigma[..., 16:] = 30.0
    spread = (sigma[:, :, ::2, ::2] / 20.0) ** 0.8  # the latent's local spread grows with the noise
    z = torch.randn(8, 4, 16, 16, generator=g) * spread
    fx = torch.zeros(8, 1, 32, 32)
    ratios = {}
    for scale in (True, False):
        inn = SpatialCINN(_inn_config(noise_scale=scale), seed=0).train()
        with torch.no_grad():
            inn(z, fx, noise_hu=sigma)  # data-dependent initialisation (ActNorm, noise scale)
        inn.eval()
        with torch.no_grad():
            zs = inn.reverse(torch.randn(8, 4, 16, 16, generator=g), fx, noise_hu=sigma)
        ratios[scale] = float(zs[..., 8:].std() / zs[..., :8].std())
    truth = float((30.0 / 5.0) ** 0.8)  # 4.2
    assert abs(ratios[True] / truth - 1) < 0.15, ratios
    assert ratios[False] < 1.5, ratios


def test_output_calibration_fit_finds_the_spread_of_air_and_body_per_noise_level():
    """Flow outputs u whose mean and spread depend on the noise level and on body vs air (as the
    bundled cINNs' did: spread 0.85 in head tissue, 1.15 in abdominal tissue, 1 in air): the
    maximum-likelihood fit makes v = calibrated u standard normal in every group, and the inverse
    draws each group's spread back."""
    from CTInvariancesLib.invariance.spatial import OutputCalibration
    from CTInvariancesLib.normalization import hu_to_normalized

    g = torch.Generator().manual_seed(0)
    n, c = 64, 2
    level = torch.log(torch.tensor([5.0, 30.0]) / 20.0).repeat(n // 2).view(n, 1, 1, 1).expand(n, 1, 8, 8)
    fx_hu = torch.full((n, 1, 16, 16), -1000.0)
    fx_hu[..., 4:12, :] = 40.0  # body in the middle rows, air above and below
    layer = OutputCalibration(c)
    cov = layer.covariates(level, hu_to_normalized(fx_hu))
    body = cov[:, 2:3] > 0.5
    per_channel = torch.tensor([1.0, 0.5]).view(1, c, 1, 1)
    spread = torch.where(body, torch.exp(0.2 * level), torch.ones_like(level)) * per_channel
    shift = torch.where(body, 0.3 + 0.1 * level, torch.zeros_like(level)) * (2 * per_channel - 1)
    u = shift + spread * torch.randn(n, c, 8, 8, generator=g)
    fit = layer.fit(u, cov)
    assert fit["nll_after"] < fit["nll_before"] - 0.05
    with torch.no_grad():
        v, logdet = layer(u, cov)
        assert float((layer.reverse(v, layer.prepare(cov)) - u).abs().max()) < 1e-5
    for group in (body & (level < 0), body & (level > 0), ~body):
        sel = group.expand_as(v)
        for ch in range(c):
            vals = v[:, ch][sel[:, ch]]
            assert abs(float(vals.mean())) < 0.06 and abs(float(vals.std()) - 1) < 0.06
    with torch.no_grad():
        drawn = layer.reverse(torch.randn(n, c, 8, 8, generator=g), layer.prepare(cov))
    head, abdomen = (body & (level < 0)).expand_as(drawn), (body & (level > 0)).expand_as(drawn)
    truth = float(torch.exp(0.2 * (level.max() - level.min())))  # abdomen / head spread
    assert abs(float(drawn[abdomen].std() / drawn[head].std()) / truth - 1) < 0.06


def test_output_calibration_mean_fit_sets_the_shift_and_keeps_the_trained_scale():
    """`train cinn --calibration-fit mean`: the shift is fitted (v centred in every group), the
    scale a power-guarded fine-tune set is kept as it was."""
    from CTInvariancesLib.invariance.spatial import OutputCalibration
    from CTInvariancesLib.normalization import hu_to_normalized

    g = torch.Generator().manual_seed(1)
    n, c = 64, 2
    level = torch.log(torch.tensor([5.0, 30.0]) / 20.0).repeat(n // 2).view(n, 1, 1, 1).expand(n, 1, 8, 8)
    fx_hu = torch.full((n, 1, 16, 16), -1000.0)
    fx_hu[..., 4:12, :] = 40.0
    layer = OutputCalibration(c)
    with torch.no_grad():
        layer.s[0] = torch.tensor([0.2, -0.1])  # as trained: spread exp(0.2) and exp(-0.1)
    trained_s = layer.s.detach().clone()
    cov = layer.covariates(level, hu_to_normalized(fx_hu))
    body = cov[:, 2:3] > 0.5
    shift = torch.where(body, 0.5 + 0.2 * level, torch.full_like(level, -0.3))
    u = shift + 1.5 * torch.randn(n, c, 8, 8, generator=g)
    fit = layer.fit(u, cov, scale=False)
    assert fit["nll_after"] < fit["nll_before"]
    assert torch.equal(layer.s.detach(), trained_s)
    with torch.no_grad():
        v, _ = layer(u, cov)
    for group in (body & (level < 0), body & (level > 0), ~body):
        sel = group.expand_as(v)
        for ch, spread in enumerate((1.5 / math.exp(0.2), 1.5 / math.exp(-0.1))):
            vals = v[:, ch][sel[:, ch]]
            assert abs(float(vals.mean())) < 0.06 * spread
            assert abs(float(vals.std()) / spread - 1) < 0.06


def test_patch_sampler_crops_the_noise_maps_with_the_slices():
    from CTInvariancesLib.normalization import normalized_to_hu
    from CTInvariancesLib.training.data import PatchSampler

    rng = np.random.default_rng(0)
    ld = rng.normal(0, 100, (3, 40, 40)).astype(np.float32)
    fd = np.zeros_like(ld)
    ps = PatchSampler(ld, fd, 16, seed=1, noise_hu=ld.copy())  # the "map" is the slice itself
    for _ in range(3):
        x, _ = ps.batch(5)
        assert ps.last_noise_hu.shape == (5, 1, 16, 16)
        np.testing.assert_allclose(normalized_to_hu(x.numpy()), ps.last_noise_hu.numpy(), atol=1e-2)


def test_a_noise_map_cinn_is_conditioned_on_the_local_noise_map_of_x():
    """The sampler's sample k is t^-1(v_k | f(x), local noise map of x) decoded: the map, not one
    level for the slice (the two give different samples)."""
    from CTInvariancesLib.invariance.sampler import latent_draws, slice_noise_map
    from CTInvariancesLib.normalization import hu_to_normalized, normalized_to_hu

    vae, inn = _engine()
    assert inn.cfg.noise_map
    with torch.no_grad():
        inn.scale.b.fill_(1.5)  # the latent's spread follows the noise level strongly
    x, px = _slice(96), (0.8, 0.8)
    res = SpatialInvarianceSampler(_denoiser(), vae, inn).sample(x, 2, seed=3, pixel_mm=px)
    nm = slice_noise_map(x, px)
    body = x > -500
    assert nm[body].std() / nm[body].mean() > 0.02  # the noise of x varies over the slice
    v = latent_draws(2, vae.latent_shape(96, 96), 3, 1.0, offset=0)
    fx = torch.from_numpy(hu_to_normalized(res.denoised))[None, None].expand(2, -1, -1, -1)
    with torch.no_grad():
        local = vae.decode(
            inn.reverse(v, fx, noise_hu=torch.from_numpy(nm)[None, None].expand(2, -1, -1, -1)), fx
        )
        flat = vae.decode(inn.reverse(v, fx, noise_hu=float(np.median(nm[body]))), fx)
    np.testing.assert_allclose(res.samples, normalized_to_hu(local[:, 0].numpy()), atol=2e-3)
    assert np.abs(res.samples - normalized_to_hu(flat[:, 0].numpy()))[:, body].mean() > 0.02


def test_bundled_spatial_cinn_samples_have_the_power_of_x_and_follow_its_noise(abdomen_dir):
    """Real weights, real held-out slice (abdomen k 16, 25 % dose, redcnn): raw samples vary by at
    least half the noise of x, x~ - f(x) has the power of x - f(x) within [0.7, 1.3], and the std map
    follows where x was noisy (the local noise map), not one average spread (README, "Why a learned
    sampler does not vary out of the box"; the previous cINNs: power 0.65, a nearly flat map)."""
    from scipy import ndimage

    from CTInvariancesLib.datasets import make_pairs, source_pixel_mm
    from CTInvariancesLib.evaluation import HOLDOUT_SEED
    from CTInvariancesLib.invariance.sampler import slice_noise_map
    from CTInvariancesLib.lowdose import estimate_noise_hu
    from CTInvariancesLib.metrics import body_mask

    pairs = make_pairs("holdout", 0.25, realisations=1, seed=HOLDOUT_SEED)  # cached by other tests
    i = [str(n) for n in pairs["names"]].index("abdomen-siemens-20[16]#0")
    x, body = pairs["ld"][i], body_mask(pairs["fd"][i])
    px = source_pixel_mm("abdomen-siemens-20")
    res = InvarianceSampler.load("redcnn", cvae="spatial").sample(x, 8, seed=0, pixel_mm=px)
    f = res.denoised
    power = np.median([np.mean((s - f)[body] ** 2) for s in res.samples]) / np.mean((x - f)[body] ** 2)
    assert 0.7 <= power <= 1.3, power
    sd = std_map(res.samples)
    assert np.median(sd[body]) >= 0.5 * estimate_noise_hu(x)
    inner = ndimage.binary_erosion(body, iterations=10)
    smooth_sd = np.sqrt(ndimage.gaussian_filter(sd.astype(np.float64) ** 2, 6.0))
    corr = np.corrcoef(np.log(smooth_sd[inner]), np.log(slice_noise_map(x, px)[inner]))[0, 1]
    assert corr >= 0.8, corr


def test_radial_band_power_puts_each_frequency_in_its_ring():
    """The spectrum term's bands (train cinn --spectrum-weight): a cosine lands in the ring of its
    frequency, white noise is flat, smoothed noise falls off."""
    from CTInvariancesLib.training.invariance import radial_band_power

    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    wave = torch.cos(2 * math.pi * 19 / 64 * xx)[None, None]  # 0.297 cycles/px: ring int(0.297 / 0.5 * 8) = 4
    bands = radial_band_power(wave)
    assert int(bands.argmax()) == 4 and float(bands[4]) > 100 * float(bands[[0, 1, 2, 6, 7]].max())
    g = torch.Generator().manual_seed(0)
    white = radial_band_power(torch.randn(16, 1, 64, 64, generator=g))
    assert float(white.max() / white.min()) < 1.3
    smooth = torch.nn.functional.avg_pool2d(torch.randn(16, 1, 68, 68, generator=g), 5, stride=1)
    falls = radial_band_power(smooth)
    assert bool((falls[1:4] < falls[:3]).all()) and float(falls[0] / falls[5]) > 20


def test_spectrum_shape_term_is_blind_to_scale_and_pulls_the_texture_to_the_reference():
    """The spectrum term: 0 for a louder copy of the reference's texture, large for white noise
    against smooth noise, and gradient steps on it turn white noise towards the smooth texture."""
    from CTInvariancesLib.training.invariance import radial_band_power, spectrum_shape_mismatch

    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.avg_pool2d(torch.randn(8, 1, 68, 68, generator=g), 5, stride=1)
    assert float(spectrum_shape_mismatch(3.0 * smooth, smooth)) < 1e-6
    white = torch.randn(8, 1, 64, 64, generator=g)
    start = float(spectrum_shape_mismatch(white, smooth))
    white.requires_grad_(True)
    assert start > 1.0
    opt = torch.optim.Adam([white], lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        spectrum_shape_mismatch(white, smooth).backward()
        opt.step()
    end = float(spectrum_shape_mismatch(white.detach(), smooth))
    assert end < 0.1 * start, (start, end)
    bands = radial_band_power(white.detach())
    assert float(bands[0] / bands[-1]) > 20, bands  # the high frequencies were taken out


def test_latent_moment_term_is_zero_at_the_standard_normal_and_pulls_the_moments_there():
    """The moment term (train cinn --moment-weight): about 0 for N(0, 1) latents, mean^2 + log(std)^2
    per channel otherwise, and its gradient brings a shifted, squeezed channel back."""
    from CTInvariancesLib.training.invariance import latent_moment_mismatch

    torch.manual_seed(0)
    v = torch.randn(16, 3, 32, 32)
    assert float(latent_moment_mismatch(v)) < 1e-3
    off = v.clone()
    off[:, 1] = off[:, 1] * 0.5 + 0.4  # one channel: mean 0.4, std 0.5
    expected = 0.4**2 + np.log(0.5) ** 2
    assert float(latent_moment_mismatch(off)) == pytest.approx(expected, rel=0.02, abs=2e-3)
    shift = torch.zeros(1, 3, 1, 1, requires_grad=True)
    log_scale = torch.zeros(1, 3, 1, 1, requires_grad=True)
    opt = torch.optim.Adam([shift, log_scale], lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        latent_moment_mismatch(off * log_scale.exp() + shift).backward()
        opt.step()
    assert float(latent_moment_mismatch((off * log_scale.exp() + shift).detach())) < 1e-3
