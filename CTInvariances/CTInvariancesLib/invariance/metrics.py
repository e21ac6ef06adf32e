"""The engine's acceptance measurements: invertibility, latent normality, invariance fidelity.

All on patches in normalised units; RMSEs are reported in HU (x 502.185).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..denoisers.loading import Denoiser
from ..normalization import STD, hu_to_normalized
from .cinn import ConditionalINN
from .cvae import ConditionalVAE
from .sampler import latent_draws


@dataclass
class PatchSet:
    """Held-out patches: low dose x, f(x) of the whole slice, full dose (all normalised, [N,1,P,P])."""

    x: torch.Tensor
    fx: torch.Tensor
    fd: torch.Tensor | None = None
    noise_hu: torch.Tensor | None = None  # [N] noise level of each patch's slice, or maps [N,1,P,P] (HU)


def holdout_patches(
    denoiser: Denoiser,
    patch: int,
    n: int,
    seed: int = 7,
    dose_fraction: float = 0.25,
    noise_maps: bool = False,
) -> PatchSet:
    """``n`` body patches from the held-out slices (never trained on), f(x) from whole slices; with
    ``noise_maps`` each patch carries its crop of the slice's local noise map (for a cINN with
    ``noise_map``), else its slice's noise level."""
    from ..datasets import make_pairs, slices_pixel_mm
    from ..evaluation import HOLDOUT_SEED
    from .sampler import slice_noise_hu, slice_noise_map

    pairs = make_pairs("holdout", dose_fraction, realisations=1, seed=HOLDOUT_SEED)
    fx = denoiser.denoise_slices(pairs["ld"], batch_size=2)
    if noise_maps:
        noise = np.stack([slice_noise_map(s, p) for s, p in zip(pairs["ld"], slices_pixel_mm(pairs))])
        return random_patches([pairs["ld"], fx, pairs["fd"]], patch, n, seed, noise_hu=noise)
    noise = np.array([slice_noise_hu(s) for s in pairs["ld"]], np.float32)
    return random_patches([pairs["ld"], fx, pairs["fd"]], patch, n, seed, noise_hu=noise)


def random_patches(
    stacks_hu: list[np.ndarray], patch: int, n: int, seed: int, noise_hu: np.ndarray | None = None
) -> PatchSet:
    """Aligned random patches from slice stacks (x, f(x)[, full dose]) in HU, skipping mostly-air
    patches (mean of the last stack below -900 HU); returned normalised. ``noise_hu``: one level per
    slice [K], or local maps [K, H, W] (HU), cropped with the patches."""
    rng = np.random.default_rng(seed)
    k, h, w = stacks_hu[0].shape
    picks = []
    while len(picks) < n:
        i, r, c = int(rng.integers(k)), int(rng.integers(h - patch + 1)), int(rng.integers(w - patch + 1))
        if stacks_hu[-1][i, r : r + patch, c : c + patch].mean() >= -900.0:
            picks.append((i, r, c))
    out = [
        torch.from_numpy(
            hu_to_normalized(
                np.stack([s[i, r : r + patch, c : c + patch] for i, r, c in picks]).astype(np.float32)
            )
        )[:, None]
        for s in stacks_hu
    ]
    if noise_hu is None:
        noise = None
    elif np.ndim(noise_hu) == 3:
        noise = torch.from_numpy(
            np.stack([noise_hu[i, r : r + patch, c : c + patch] for i, r, c in picks]).astype(np.float32)
        )[:, None]
    else:
        noise = torch.tensor([float(noise_hu[i]) for i, _, _ in picks])
    return PatchSet(out[0], out[1], out[2] if len(out) > 2 else None, noise)


@torch.inference_mode()
def invertibility(
    cvae: ConditionalVAE, cinn: ConditionalINN, ps: PatchSet, batch: int = 100, seed: int = 0
) -> dict:
    """max |reverse(forward(z)) - z| over encoded latents (posterior samples)."""
    gen = torch.Generator().manual_seed(seed)
    dev = _device(cvae)
    errs, vs = [], []
    for s in range(0, len(ps.x), batch):
        x, fx = ps.x[s : s + batch].to(dev), ps.fx[s : s + batch].to(dev)
        nz = _noise(ps, slice(s, s + batch), dev)
        z = cvae.encode(x, fx).sample(gen)
        v, _ = cinn(z, fx, noise_hu=nz)
        errs.append((cinn.reverse(v, fx, noise_hu=nz) - z).abs().max().cpu())
        vs.append(v.cpu())
    v = torch.cat(vs)
    units = _per_unit(v)
    mean, std = units.mean(1), units.std(1)
    return {
        "n_latents": int(len(v)),
        "max_abs_roundtrip_error": float(torch.stack(errs).max()),
        **uses_condition(cvae, cinn, ps, batch=batch, seed=seed),
        "normality": {
            "mean_abs_max": float(mean.abs().max()),
            "std_min": float(std.min()),
            "std_max": float(std.max()),
            "fraction_dims_mean_within_0.1": float((mean.abs() <= 0.1).float().mean()),
            "fraction_dims_std_within_0.8_1.2": float(((std >= 0.8) & (std <= 1.2)).float().mean()),
        },
    }


@torch.inference_mode()
def uses_condition(
    cvae: ConditionalVAE, cinn: ConditionalINN, ps: PatchSet, batch: int = 100, seed: int = 0
) -> dict:
    """Whether the engine uses what it should: the cINN's NLL of encoded latents (nats per dimension)
    with the true f(x), with the f(x) of other patches (shuffled), and under the N(0, I) prior;
    and the encoder's mean KL(q(z | x, f(x)) || N(0, I)) per patch (0 for a collapsed posterior).

    A cINN that ignores f(x) has equal true and shuffled NLLs; one that uses it, a lower true NLL.
    """
    gen = torch.Generator().manual_seed(seed)
    dev = _device(cvae)
    perm = torch.randperm(len(ps.x), generator=gen)
    true_nll, shuffled_nll, prior_nll, kls = [], [], [], []
    for s in range(0, len(ps.x), batch):
        idx = torch.arange(s, min(s + batch, len(ps.x)))
        x, fx = ps.x[idx].to(dev), ps.fx[idx].to(dev)
        q = cvae.encode(x, fx)
        z = q.sample(gen)
        kls.append(q.kl().cpu())
        for out, cond, nz in (
            (true_nll, fx, _noise(ps, idx, dev)),
            (shuffled_nll, ps.fx[perm[idx]].to(dev), _noise(ps, perm[idx], dev)),
        ):
            v, logdet = cinn(z, cond, noise_hu=nz)
            out.append((0.5 * (v**2).flatten(1).mean(1) - logdet / v[0].numel()).cpu())
        prior_nll.append((0.5 * (z.flatten(1) ** 2).mean(1)).cpu())
    return {
        "nll_per_dim": {
            "true_condition": float(torch.cat(true_nll).mean()),
            "shuffled_condition": float(torch.cat(shuffled_nll).mean()),
            "prior": float(torch.cat(prior_nll).mean()),
        },
        "posterior_kl_nats": float(torch.cat(kls).mean()),
    }


def _noise(ps: PatchSet, idx, dev) -> torch.Tensor | None:
    return None if ps.noise_hu is None else ps.noise_hu[idx].to(dev)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _per_unit(t: torch.Tensor) -> torch.Tensor:
    """[units, N] values per latent dimension (global latent [N, D]) or per channel (map [N, C, h, w])."""
    return t.transpose(0, 1).flatten(1) if t.dim() == 4 else t.t()


def _rmse_hu(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).mean(dim=(1, 2, 3)).sqrt() * STD


@torch.inference_mode()
def invariance_fidelity(
    denoiser: Denoiser,
    cvae: ConditionalVAE,
    cinn: ConditionalINN | None,
    ps: PatchSet,
    samples_per_patch: int = 1,
    batch: int = 50,
    seed: int = 0,
    temperature: float = 1.0,
) -> dict:
    """Per patch: RMSE_HU(f(x~), f(x)) / RMSE_HU(x~, x), f applied to the patch; medians.

    With ``cinn=None`` z is drawn from the cVAE prior (the decoder alone).
    """

    f = denoiser.on_normalized

    ratios, moved, kept = [], [], []
    for k in range(samples_per_patch):
        for s in range(0, len(ps.x), batch):
            x, fxc = ps.x[s : s + batch], ps.fx[s : s + batch]
            v = latent_draws(len(x), cvae.z_dim, seed, temperature, offset=k * len(ps.x) + s)
            z = v if cinn is None else cinn.reverse(v, fxc)
            xt = cvae.decode(z, fxc)
            fx_patch, fxt = f(x), f(xt)
            d_in, d_out = _rmse_hu(xt, x), _rmse_hu(fxt, fx_patch)
            ratios.append(d_out / d_in.clamp(min=1e-6))
            moved.append(d_in)
            kept.append(d_out)
    ratios, moved, kept = torch.cat(ratios), torch.cat(moved), torch.cat(kept)
    out = {
        "n_patches": int(len(ps.x)),
        "samples_per_patch": samples_per_patch,
        "median_ratio": float(ratios.median()),
        "median_rmse_input_hu": float(moved.median()),
        "median_rmse_output_hu": float(kept.median()),
    }
    if ps.fd is not None:
        noise = _rmse_hu(ps.x, ps.fd)
        out["median_lowdose_noise_hu"] = float(noise.median())
        out["median_rmse_input_over_noise"] = float((moved / noise.clamp(min=1e-6)).median())
    return out


@torch.inference_mode()
def idempotency(denoiser: Denoiser, ps: PatchSet, batch: int = 50) -> dict:
    """How far f is from idempotent: median over patches of RMSE(f(f(x)), f(x)) / RMSE(f(x), x), f
    applied to the patch. A sample near f(x) cannot have a fidelity ratio below this."""

    f = denoiser.on_normalized

    ratios = []
    for s in range(0, len(ps.x), batch):
        x = ps.x[s : s + batch]
        fx = f(x)
        ratios.append(_rmse_hu(f(fx), fx) / _rmse_hu(fx, x).clamp(min=1e-6))
    return {"median_ratio": float(torch.cat(ratios).median()), "n_patches": int(len(ps.x))}


@torch.inference_mode()
def reconstruction_error(cvae: ConditionalVAE, ps: PatchSet, batch: int = 100, seed: int = 0) -> dict:
    """RMSE_HU(D(z, f(x)), x) with z the posterior mean and a posterior sample."""
    gen = torch.Generator().manual_seed(seed)
    dev = _device(cvae)
    mean_err, sample_err = [], []
    for s in range(0, len(ps.x), batch):
        x, fx = ps.x[s : s + batch].to(dev), ps.fx[s : s + batch].to(dev)
        q = cvae.encode(x, fx)
        mean_err.append(_rmse_hu(cvae.decode(q.mean, fx), x).cpu())
        sample_err.append(_rmse_hu(cvae.decode(q.sample(gen), fx), x).cpu())
    return {
        "median_rmse_hu_posterior_mean": float(torch.cat(mean_err).median()),
        "median_rmse_hu_posterior_sample": float(torch.cat(sample_err).median()),
    }


def engine_metrics(
    denoiser: Denoiser,
    cvae: ConditionalVAE,
    cinn: ConditionalINN,
    n_latents: int = 1000,
    n_fidelity: int = 200,
    seed: int = 0,
) -> dict:
    """Section-4 numbers on held-out data for one denoiser."""
    ps = holdout_patches(denoiser, cvae.patch, n_latents, seed=7)
    small = PatchSet(ps.x[:n_fidelity], ps.fx[:n_fidelity], None if ps.fd is None else ps.fd[:n_fidelity])
    return {
        "data": f"held-out slices (abdomen k 14-19, head k 20-27), 25 % dose, {n_latents} body patches",
        "invertibility_and_normality": invertibility(cvae, cinn, ps, seed=seed),
        "fidelity_cinn": invariance_fidelity(denoiser, cvae, cinn, small, seed=seed),
        "fidelity_prior": invariance_fidelity(denoiser, cvae, None, small, seed=seed),
        "idempotency": idempotency(denoiser, small),
        "reconstruction": reconstruction_error(cvae, small, seed=seed),
    }


def tile_border_mask(shape: tuple[int, int], patch: int, overlap: int, width: int = 4) -> np.ndarray:
    """Pixels within ``width`` of any tile edge of the sampler's tiling of a ``shape`` slice."""
    from .sampler import tile_starts

    border = np.zeros(shape, bool)
    for axis, length in enumerate(shape):
        for s in tile_starts(length, patch, overlap):
            for edge in (s, s + patch - 1):
                lo, hi = max(0, edge - width), min(length, edge + width + 1)
                if axis == 0:
                    border[lo:hi, :] = True
                else:
                    border[:, lo:hi] = True
    # the slice's own edges are not seams
    inner = np.zeros(shape, bool)
    inner[width + 1 : shape[0] - width - 1, width + 1 : shape[1] - width - 1] = True
    return border & inner


def seam_ratio(
    std: np.ndarray, region: np.ndarray, patch: int, overlap: int, width: int = 4, detrend: bool = True
) -> float:
    """Mean std within ``width`` px of a tile edge / mean std elsewhere, inside ``region`` (1 = no seams).

    ``detrend``: the std map is first divided by its own smooth trend (Gaussian, sigma = patch / 2,
    normalised inside the region), so that anatomy that happens to lie under the tile edges (a bright
    organ in a 4-px band) does not read as a seam; seams are narrower than the trend and stay.
    """
    from scipy import ndimage

    std = np.asarray(std, np.float64)
    if detrend:
        sigma = patch / 2
        num = ndimage.gaussian_filter(np.where(region, std, 0.0), sigma)
        den = ndimage.gaussian_filter(region.astype(np.float64), sigma)
        trend = num / np.maximum(den, 1e-6)
        std = np.where(region, std / np.maximum(trend, 1e-6), 0.0)
    border = tile_border_mask(std.shape, patch, overlap, width)
    a, b = std[border & region], std[~border & region]
    return float(a.mean() / b.mean()) if a.size and b.size and b.mean() > 0 else float("nan")


def shift_consistency(
    std_a: np.ndarray, std_b: np.ndarray, shift: tuple[int, int], region: np.ndarray, sigma: float = 3.0
) -> dict:
    """Whether the std map of a shifted input is the shifted std map (not a fixed pattern).

    ``std_b`` belongs to the input shifted by ``shift`` (rows, cols). Returns the correlation (maps
    smoothed by ``sigma`` px to reduce the sampling noise of K samples) of std_b with the shifted
    std_a (high when the map follows the anatomy) and with the unshifted std_a (high for a pattern
    fixed to the image grid), inside the shifted region.
    """
    from scipy import ndimage

    a = ndimage.gaussian_filter(std_a.astype(np.float64), sigma)
    b = ndimage.gaussian_filter(std_b.astype(np.float64), sigma)
    dy, dx = shift
    moved = np.roll(a, (dy, dx), axis=(0, 1))
    m = np.roll(region, (dy, dx), axis=(0, 1)) & region
    return {
        "corr_with_shifted": float(np.corrcoef(b[m], moved[m])[0, 1]),
        "corr_with_fixed": float(np.corrcoef(b[m], a[m])[0, 1]),
    }


@torch.inference_mode()
def latent_usage(cvae, cinn, ps: PatchSet, batch: int = 50, seed: int = 0) -> dict:
    """Where the diversity of a learned sampler goes (README, "The spatial-latent engine"):

    - ``noise_rmse_hu``: RMSE(x, f(x)), what a sample should vary by;
    - ``reconstruction_rmse_hu``: RMSE(D(mean of q), x): the part of x the latent does not carry;
    - ``decoder_z_std_hu``: std of D(z, f(x)) over independent prior draws z (does D use z at all?);
    - ``posterior_std`` / ``posterior_mean_std``: mean std of q against the spread of its means over
      patches (a posterior std near 1 with means near 0 is a collapsed, unused latent);
    - ``latent_std`` / ``cinn_latent_std``: std of posterior samples and of cINN samples z~ = t^-1(v),
      per latent unit, median over units (does the cINN reproduce the encoder's statistics?);
    - ``cinn_power_ratio``: power of D(z~, f(x)) - f(x) over that of x - f(x).
    """
    gen = torch.Generator().manual_seed(seed)
    dev = _device(cvae)
    acc = {k: [] for k in ("noise", "rec", "zstd", "qstd", "qmean", "z", "zc", "pow_s", "pow_x")}
    for s in range(0, len(ps.x), batch):
        x, fx = ps.x[s : s + batch].to(dev), ps.fx[s : s + batch].to(dev)
        q = cvae.encode(x, fx)
        acc["noise"].append(_rmse_hu(x, fx).cpu())
        acc["rec"].append(_rmse_hu(cvae.decode(q.mean, fx), x).cpu())
        z1 = torch.randn(q.mean.shape, generator=gen).to(dev)
        z2 = torch.randn(q.mean.shape, generator=gen).to(dev)
        acc["zstd"].append((_rmse_hu(cvae.decode(z1, fx), cvae.decode(z2, fx)) / 2**0.5).cpu())
        acc["qstd"].append(q.std.mean().reshape(1).cpu())
        acc["qmean"].append(q.mean.cpu())
        acc["z"].append(q.sample(gen).cpu())
        if cinn is not None:
            v = torch.randn(q.mean.shape, generator=gen).to(dev)
            zc = cinn.reverse(v, fx, noise_hu=_noise(ps, slice(s, s + batch), dev))
            acc["zc"].append(zc.cpu())
            xs = cvae.decode(zc, fx)
            acc["pow_s"].append(((xs - fx) ** 2).flatten(1).mean(1).cpu())
            acc["pow_x"].append(((x - fx) ** 2).flatten(1).mean(1).cpu())

    def unit_std(t: torch.Tensor) -> float:
        return float(_per_unit(t).std(1).median())

    out = {
        "n_patches": int(len(ps.x)),
        "noise_rmse_hu": float(torch.cat(acc["noise"]).median()),
        "reconstruction_rmse_hu": float(torch.cat(acc["rec"]).median()),
        "decoder_z_std_hu": float(torch.cat(acc["zstd"]).median()),
        "posterior_std": float(torch.cat(acc["qstd"]).mean()),
        "posterior_mean_std": unit_std(torch.cat(acc["qmean"])),
        "latent_std": unit_std(torch.cat(acc["z"])),
    }
    if cinn is not None:
        out["cinn_latent_std"] = unit_std(torch.cat(acc["zc"]))
        out["cinn_power_ratio"] = float(torch.cat(acc["pow_s"]).sum() / torch.cat(acc["pow_x"]).sum())
    return out
