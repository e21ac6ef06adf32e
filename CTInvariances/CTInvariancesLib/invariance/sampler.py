"""Sampling invariances: inputs x~ that a denoiser maps (nearly) to the same output as x.

For a slice x (HU): f(x) is computed on the whole slice; the slice is covered by overlapping tiles
of the models' patch size; in each tile, v ~ N(0, T^2 I) -> z~ = t^-1(v | f(x)_tile) ->
x~_tile = D(z~, f(x)_tile); tiles are blended with a raised-cosine window over their overlap. Each
sample has its own tile grid, shifted by a random offset (jittered tiling), so that the tiles leave
no fixed pattern (seams) in the std map.
Sample k uses the same v in every tile and every slice (drawn from ``(seed, k)``), so a sample is
one coherent draw and results do not depend on which slices are processed together.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..allocator import tune_cpu_allocator
from ..denoisers.loading import Denoiser, load_denoiser
from ..normalization import MEAN, STD, hu_to_normalized
from .cinn import ConditionalINN
from .cvae import ConditionalVAE
from .models import load_cinn, load_cvae, resolve_cinn_path, resolve_cvae_path
from .spatial import DecoderCondition, FlowCondition, SpatialCINN, SpatialCVAE

AIR_HU = -900.0  # tiles whose f(x) stays below this everywhere are air: left as they are
# "shared": sample k uses the same v in every tile (coherent overlaps; the texture may repeat with
# the tile period); "independent": each tile of each slice has its own v, drawn from
# (seed, slice, tile, k).
TILE_LATENTS = ("shared", "independent")


@dataclass
class SliceSamples:
    samples: np.ndarray  # [K, H, W] HU
    denoised: np.ndarray  # f(x), [H, W] HU
    sampled_mask: np.ndarray  # [H, W] bool: pixels covered by sampled (non-air) tiles


def latent_draws(
    n: int, shape: int | tuple[int, ...], seed: int, temperature: float = 1.0, offset: int = 0
) -> torch.Tensor:
    """v for samples offset..offset+n-1 (a z_dim vector or a latent map of ``shape`` each): sample k
    always gets the same draw for a given seed, whatever K or the batch."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    out = torch.empty((n, *shape))
    for i in range(n):
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + offset + i)
        out[i] = torch.randn(shape, generator=gen)
    return out * float(temperature)


def _run_in_batches(n_items: int, batch_size: int, device: torch.device, run, place) -> int:
    """``place(a, b, run(a, b))`` over consecutive ranges of at most ``batch_size`` items, halving the
    batch on out-of-memory instead of failing; returns the batch size that worked."""
    start = 0
    while start < n_items:
        stop = min(n_items, start + batch_size)
        try:
            out = run(start, stop)
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size = max(1, batch_size // 2)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        place(start, stop, out)
        start = stop
    return batch_size


def tile_starts(length: int, patch: int, overlap: int) -> list[int]:
    if length <= patch:
        return [0]
    stride = patch - overlap
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return starts


def _ramp(patch: int, overlap: int, first: bool, last: bool) -> np.ndarray:
    w = np.ones(patch, dtype=np.float64)
    if overlap > 0:
        r = 0.5 - 0.5 * np.cos(np.pi * (np.arange(overlap) + 0.5) / overlap)  # rises 0 -> 1
        if not first:
            w[:overlap] = r
        if not last:
            w[-overlap:] = r[::-1]
    return w


class InvarianceSampler:
    """Draw invariance samples of CT slices for one denoiser.

    ``cinn=None`` samples z from the cVAE prior instead (what the decoder alone can vary: the
    comparison that shows what the cINN adds).
    """

    def __init__(
        self,
        denoiser: Denoiser,
        cvae: ConditionalVAE,
        cinn: ConditionalINN | None,
        device: str | torch.device = "cpu",
        overlap: int | None = None,
        skip_air: bool = True,
        amp: bool | None = None,
        tile_latents: str = "shared",
        jitter: bool = True,
    ) -> None:
        self.device = torch.device(device)
        self.denoiser = denoiser.to(self.device)
        self.cvae = cvae.to(self.device).eval()
        self.cinn = None if cinn is None else cinn.to(self.device).eval()
        self.patch = cvae.patch
        self.overlap = self.patch // 8 if overlap is None else int(overlap)
        if not 0 <= self.overlap < self.patch:
            raise ValueError(f"overlap must be in [0, {self.patch - 1}]")
        self.skip_air = skip_air
        if tile_latents not in TILE_LATENTS:
            raise ValueError(f"tile_latents must be one of {TILE_LATENTS}")
        self.tile_latents = tile_latents
        self.jitter = jitter
        self.amp = (self.device.type == "cuda") if amp is None else amp
        self.cards: dict = {}

    @property
    def kind(self) -> str:
        return "prior" if self.cinn is None else "cinn"

    @classmethod
    def load(
        cls,
        denoiser: str | Denoiser,
        cvae: str | None = None,
        cinn: str | None = None,
        device: str | torch.device = "cpu",
        use_cinn: bool = True,
        **kw,
    ) -> InvarianceSampler:
        """Bundled models by default: ``InvarianceSampler.load("cnn10")``. A spatial-latent cVAE
        gives a :class:`SpatialInvarianceSampler` (whole slices, no tiles)."""
        den = denoiser if isinstance(denoiser, Denoiser) else load_denoiser(denoiser, device=device)
        cvae_path = resolve_cvae_path(cvae)
        vae, vae_card = load_cvae(cvae_path, device)
        inn, inn_card = None, None
        if use_cinn:
            inn, inn_card = load_cinn(resolve_cinn_path(cinn, den.name, cvae_path), device)
            _check_cinn_matches(inn_card, den, vae_card)
            if isinstance(inn, SpatialCINN) != isinstance(vae, SpatialCVAE):
                from ..errors import WeightsError

                raise WeightsError(
                    "this cINN does not fit the cVAE (spatial and tiled models mixed)",
                    Path(inn_card.get("file", "cINN")),
                )
        if isinstance(vae, SpatialCVAE):
            kw = {k: v for k, v in kw.items() if k in ("amp",)}
            sampler = SpatialInvarianceSampler(den, vae, inn, device, **kw)
        else:
            sampler = cls(den, vae, inn, device, **kw)
        sampler.cards = {"cvae": vae_card, "cinn": inn_card}
        return sampler

    # --- one slice ---------------------------------------------------------------------------
    @torch.inference_mode()
    def sample(
        self,
        x_hu,
        n_samples: int,
        temperature: float = 1.0,
        seed: int = 0,
        batch_size: int = 64,
        denoised_hu: np.ndarray | None = None,
        slice_index: int = 0,
        pixel_mm: tuple[float, float] | None = None,
    ) -> SliceSamples:
        """K samples of one slice ``x_hu`` [H, W] (HU). Returns samples and f(x) in HU.

        ``slice_index`` (the slice's index in its volume) only matters with independent tile latents.
        """
        x, fx = _slice_and_denoised(self.denoiser, x_hu, n_samples, denoised_hu)
        h, w = x.shape
        p = self.patch
        stride = p - self.overlap
        # Jittered tiling: sample k uses its own grid, shifted by (oy, ox) in [0, stride) drawn from
        # (seed, k). A fixed grid imprints the models' within-tile variance profile and the blend's
        # variance dip in the overlaps on the std map as a grid of seams; with a grid per sample they
        # fall in different places for every sample and average out (README: "Seam-free std maps").
        offsets = [
            tuple(int(o) for o in np.random.default_rng([int(seed), k, 0x7473]).integers(0, stride, 2))
            if self.jitter
            else (0, 0)
            for k in range(n_samples)
        ]
        # canvas: the slice (padded with air to at least one patch) plus air margins above/left and
        # below/right, into which shifted grids reach
        ph, pw = max(h, p), max(w, p)
        ch, cw = ph + stride + p, pw + stride + p
        xp = np.full((ch, cw), -1000.0, np.float32)
        fp = np.full((ch, cw), -1000.0, np.float32)
        xp[stride : stride + h, stride : stride + w] = x
        fp[stride : stride + h, stride : stride + w] = fx
        acc = np.zeros((n_samples, ch, cw), np.float64)
        wsum = np.zeros((n_samples, ch, cw), np.float64)
        mask = np.zeros((ch, cw), bool)
        v = latent_draws(n_samples, self.cvae.z_dim, seed, temperature).to(self.device)
        fx_t = torch.from_numpy(hu_to_normalized(fp)).to(self.device)
        jobs, weights = [], {}
        for k, (oy, ox) in enumerate(offsets):
            rows = (
                _grid_starts(stride - oy, stride + ph, p, stride)
                if self.jitter
                else [stride + r for r in tile_starts(ph, p, self.overlap)]
            )
            cols = (
                _grid_starts(stride - ox, stride + pw, p, stride)
                if self.jitter
                else [stride + c for c in tile_starts(pw, p, self.overlap)]
            )
            for r in rows:
                for c in cols:
                    wt = np.outer(
                        _ramp(p, self.overlap, r == rows[0], r == rows[-1]),
                        _ramp(p, self.overlap, c == cols[0], c == cols[-1]),
                    )
                    wsum[k, r : r + p, c : c + p] += wt
                    if self.skip_air and fp[r : r + p, c : c + p].max() <= AIR_HU:
                        acc[k, r : r + p, c : c + p] += wt * xp[r : r + p, c : c + p]
                    else:
                        jobs.append(((r, c), k))
                        weights[((r, c), k)] = wt
        if self.tile_latents == "shared":
            v_jobs = v[[k for _, k in jobs]] if jobs else v[:0]
        else:
            v_jobs = (
                torch.stack(
                    [
                        latent_draws(
                            1, self.cvae.z_dim, _tile_seed(seed, slice_index, (r, c)), temperature, offset=k
                        )[0]
                        for (r, c), k in jobs
                    ]
                ).to(self.device)
                if jobs
                else v[:0]
            )

        def place(start: int, stop: int, out: np.ndarray) -> None:
            for ((r, c), k), tile in zip(jobs[start:stop], out):
                acc[k, r : r + p, c : c + p] += weights[((r, c), k)] * tile
                mask[r : r + p, c : c + p] = True

        batch_size = _run_in_batches(
            len(jobs),
            batch_size,
            self.device,
            lambda a, b: self._decode_jobs(jobs[a:b], fx_t, v_jobs[a:b]),
            place,
        )
        inner = (slice(None), slice(stride, stride + h), slice(stride, stride + w))
        samples = (acc[inner] / wsum[inner]).astype(np.float32)
        self.last_batch_size = batch_size
        return SliceSamples(samples=samples, denoised=fx, sampled_mask=mask[inner[1:]])

    def _decode_jobs(self, jobs, fx_t: torch.Tensor, vv: torch.Tensor) -> np.ndarray:
        p = self.patch
        cond = torch.stack([fx_t[r : r + p, c : c + p] for (r, c), _ in jobs])[:, None]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            z = vv if self.cinn is None else self.cinn.reverse(vv, cond)
            xt = self.cvae.decode(z, cond)
        return (xt.float()[:, 0] * STD + MEAN - 1024.0).cpu().numpy()


MAX_BATCH_PIXELS = 2**21
# On the CPU, batches of 2 samples of a 512 x 512 slice decode as fast as 4 or 8 (K = 32: 13.1, 13.1,
# 14.5 s) with a third to half the peak memory (1.0, 1.5, 2.1 GB)
CPU_MAX_BATCH_PIXELS = 2**19


class SpatialInvarianceSampler:
    """Invariance samples from the spatial-latent engine: the whole slice in one pass.

    v ~ N(0, T^2 I) of the latent map's shape -> z~ = t^-1(v | f(x)) -> x~ = D(z~, f(x)). f(x) and its
    cINN features are computed once per slice; sample k's v is drawn from (seed, k), so it does not
    depend on K or on the batch size. ``cinn=None`` samples z from the cVAE prior instead.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        cvae: SpatialCVAE,
        cinn: SpatialCINN | None,
        device: str | torch.device = "cpu",
        amp: bool | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.denoiser = denoiser.to(self.device)
        self.cvae = cvae.to(self.device).eval()
        self.cinn = None if cinn is None else cinn.to(self.device).eval()
        self.amp = (self.device.type == "cuda") if amp is None else amp
        if self.device.type == "cpu":
            # oneDNN's convolutions run 1.3-1.5x faster on channels-last activations here (measured:
            # K = 8 decoded in 8.0 s instead of 12.1 s); the outputs are the same to rounding
            tune_cpu_allocator()
            for m in (self.cvae, self.cinn):
                if m is not None:
                    m.to(memory_format=torch.channels_last)
        self.cards: dict = {}
        self.last_batch_size = 0

    @property
    def kind(self) -> str:
        return "prior" if self.cinn is None else "cinn"

    @torch.inference_mode()
    def sample(
        self,
        x_hu,
        n_samples: int,
        temperature: float = 1.0,
        seed: int = 0,
        batch_size: int = 4,
        denoised_hu: np.ndarray | None = None,
        slice_index: int = 0,
        pixel_mm: tuple[float, float] | None = None,
    ) -> SliceSamples:
        """K samples of one slice ``x_hu`` [H, W] (HU); ``batch_size`` samples decoded at a time
        (halved on out-of-memory). ``pixel_mm`` (row, column) sizes the simulator that makes the
        local noise map of a noise-map cINN (1 mm when not given): pass the slice's spacing."""
        x, fx = _slice_and_denoised(self.denoiser, x_hu, n_samples, denoised_hu)
        h, w = x.shape
        m = self.cvae.multiple
        hp, wp = -(-h // m) * m, -(-w // m) * m
        fp = np.full((hp, wp), -1000.0, np.float32)  # padded with air to a multiple of 2**down
        fp[:h, :w] = fx
        fx_t = torch.from_numpy(hu_to_normalized(fp)).to(self.device)[None, None]
        flow_cond = None
        if self.cinn is not None:  # its condition: the local noise map of x, or x's noise level
            if getattr(self.cinn.cfg, "noise_map", False):
                nm = np.pad(
                    slice_noise_map(x, pixel_mm or (1.0, 1.0), self.device),
                    ((0, hp - h), (0, wp - w)),
                    mode="edge",
                )
                noise = torch.from_numpy(nm).to(self.device)[None, None]
            else:
                noise = slice_noise_hu(x)
            flow_cond = self.cinn.prepare(fx_t, noise)
        # what the decoder computes from f(x) alone, once per slice; bf16 on a GPU (as the decoder)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            dec_cond = self.cvae.decoder.prepare(fx_t)
        shape = self.cvae.latent_shape(hp, wp)
        out = np.empty((n_samples, h, w), np.float32)
        # at most ~2 M pixels per batch: a 512 x 512 slice decodes 8 samples at a time (2 on the CPU)
        max_pixels = CPU_MAX_BATCH_PIXELS if self.device.type == "cpu" else MAX_BATCH_PIXELS
        batch_size = max(1, min(int(batch_size), max_pixels // (hp * wp)))

        def decode(start: int, stop: int) -> np.ndarray:
            v = latent_draws(stop - start, shape, seed, temperature, offset=start).to(self.device)
            if self.device.type == "cpu":  # as the models (see __init__); a GPU keeps its layout
                v = v.contiguous(memory_format=torch.channels_last)
            return self._decode(v, flow_cond, dec_cond)

        def place(start: int, stop: int, xt: np.ndarray) -> None:
            out[start:stop] = xt[:, :h, :w]

        self.last_batch_size = _run_in_batches(n_samples, batch_size, self.device, decode, place)
        return SliceSamples(samples=out, denoised=fx, sampled_mask=np.ones((h, w), bool))

    def _decode(
        self, v: torch.Tensor, flow_cond: FlowCondition | None, dec_cond: DecoderCondition
    ) -> np.ndarray:
        # the flow in float32 (its inverse amplifies rounding); the decoder may use bf16 on a GPU
        z = v if self.cinn is None else self.cinn.reverse(v, condition=flow_cond)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            xt = self.cvae.decode(z, dec_cond)
        return (xt.float()[:, 0] * STD + MEAN - 1024.0).cpu().numpy()


def slice_noise_hu(x_hu: np.ndarray) -> float:
    """The noise level of a slice that the spatial cINN is conditioned on (training uses the same)."""
    from ..lowdose import estimate_noise_hu

    return estimate_noise_hu(x_hu)


# The local noise map: the std of a few fresh noise realisations of x, pooled over a 6 mm Gaussian
# (4 realisations x a few hundred pixels: about 3 % error), scaled to x's measured noise level.
NOISE_MAP_REALISATIONS = 4
NOISE_MAP_SMOOTHING_MM = 6.0
NOISE_MAP_SEED = 4242


def fresh_noise_of(
    x_hu: np.ndarray, pixel_mm: tuple[float, float], seeds: list[int], device: str | torch.device = "cpu"
) -> tuple[float, np.ndarray]:
    """(noise std of slice ``x_hu`` (the robust estimator in flat soft tissue), fresh noise
    realisations [N, H, W] (HU, float64) at that level with the photon statistics of x's anatomy,
    one per seed): the local noise map's and the analysis' noise reference's raw material."""
    from ..lowdose import estimate_noise_hu, flat_soft_tissue_mask

    x = np.asarray(x_hu, np.float32)
    mask = flat_soft_tissue_mask(x)
    sigma = estimate_noise_hu(x, mask)
    if not np.isfinite(sigma) or sigma <= 0:
        raise ValueError("no noise could be measured in this slice (no soft tissue in view)")
    return sigma, noise_simulator(device).noise_like(x, pixel_mm, sigma, seeds, mask).astype(np.float64)


def slice_noise_map(
    x_hu: np.ndarray, pixel_mm: tuple[float, float], device: str | torch.device = "cpu"
) -> np.ndarray:
    """Local noise std of slice ``x_hu`` (HU, [H, W]): what a cINN with ``noise_map`` is conditioned
    on (training computes the same for every training slice). In an abdomen slice it varies by a
    factor of 4 (behind the spine and pelvis, along streaks); one number per slice cannot tell the
    sampler where x was noisy (README, "Why a learned sampler does not vary out of the box")."""
    from scipy import ndimage

    seeds = [NOISE_MAP_SEED + j for j in range(NOISE_MAP_REALISATIONS)]
    _, noise = fresh_noise_of(x_hu, pixel_mm, seeds, device)
    px = np.asarray(pixel_mm, np.float64)
    var = ndimage.gaussian_filter(np.mean(noise**2, 0), NOISE_MAP_SMOOTHING_MM / px, mode="nearest")
    return np.sqrt(np.maximum(var, 1e-4)).astype(np.float32)


class NoiseSampler:
    """The training-free sampler: x~ = f(x) + n, n a fresh noise realisation at the noise level and
    texture of x (the project's low-dose simulator run on f(x), scaled to x's measured noise).

    It needs no trained model, so it works at once for any denoiser; followed by the consistency
    step it gives exact invariances, and it is the reference a learned sampler must beat.
    Sample k of a slice is drawn from (seed, slice index, k): reproducible, and independent of
    how many samples or slices are drawn together.
    """

    kind = "noise"

    # Views of the noise simulation: 144 instead of the simulator's 576 cost a quarter and gave the
    # same noise power spectrum within the estimation error (+-8 % per radial band, 8 realisations,
    # abdomen slice 16); the level is rescaled to x's noise anyway.
    NOISE_VIEWS = 144

    def __init__(
        self, denoiser: Denoiser, device: str | torch.device = "cpu", views: int = NOISE_VIEWS
    ) -> None:
        self.device = torch.device(device)
        self.denoiser = denoiser.to(self.device)
        self.simulator = noise_simulator(self.device, views)
        if self.device.type == "cpu":
            tune_cpu_allocator()  # the batched FBP: 16 noise images 4.4 -> 2.5 s
        self.cards: dict = {}

    def sample(
        self,
        x_hu,
        n_samples: int,
        temperature: float = 1.0,
        seed: int = 0,
        batch_size: int = 16,
        denoised_hu: np.ndarray | None = None,
        slice_index: int = 0,
        pixel_mm: tuple[float, float] = (1.0, 1.0),
    ) -> SliceSamples:
        """K samples of one slice [H, W] (HU); ``temperature`` scales the noise std."""
        from ..lowdose import estimate_noise_hu, flat_soft_tissue_mask

        x, fx = _slice_and_denoised(self.denoiser, x_hu, n_samples, denoised_hu)
        mask = flat_soft_tissue_mask(x)
        sigma = estimate_noise_hu(x, mask)
        seeds = [noise_seed(seed, slice_index, k) for k in range(n_samples)]
        noise = np.concatenate(
            [
                self.simulator.noise_like(fx, pixel_mm, sigma, seeds[i : i + batch_size], mask)
                for i in range(0, n_samples, batch_size)
            ]
        )
        samples = fx[None] + np.float32(temperature) * noise
        return SliceSamples(samples=samples, denoised=fx, sampled_mask=np.ones(x.shape, bool))


def noise_simulator(device: str | torch.device = "cpu", views: int = NoiseSampler.NOISE_VIEWS):
    """The low-dose simulator that draws fresh noise like x's (``noise_like``): the noise sampler's,
    also the analysis' noise reference."""
    from dataclasses import replace

    from ..lowdose import LowDoseSettings, LowDoseSimulator

    settings = LowDoseSettings()
    settings = replace(settings, geometry=replace(settings.geometry, n_views=int(views)))
    return LowDoseSimulator(settings, device=str(device))


def _slice_and_denoised(
    denoiser: Denoiser, x_hu, n_samples: int, denoised_hu
) -> tuple[np.ndarray, np.ndarray]:
    """The slice as float32 [H, W] and f(x) (computed unless given); checks the arguments."""
    x = np.asarray(x_hu.detach().cpu() if torch.is_tensor(x_hu) else x_hu, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected one 2-D slice, got shape {x.shape}")
    if n_samples < 1:
        raise ValueError("n_samples must be at least 1")
    if denoised_hu is None:
        denoised_hu = denoiser.denoise_slices(x[None], batch_size=1)[0]
    return x, np.asarray(denoised_hu, dtype=np.float32)


def noise_seed(seed: int, slice_index: int, k: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(slice_index), int(k), 0x6E6F]).generate_state(1)[0])


def _grid_starts(first: int, end: int, patch: int, stride: int) -> list[int]:
    """A regular grid from ``first`` until a tile reaches ``end`` (no tile aligned to the end, which
    would put an edge at the same place for every sample)."""
    starts = [first]
    while starts[-1] + patch < end:
        starts.append(starts[-1] + stride)
    return starts


def _tile_seed(seed: int, slice_index: int, tile: tuple[int, int]) -> int:
    return (int(seed) * 7_368_787 + int(slice_index) * 1_000_033 + tile[0] * 4099 + tile[1]) % (2**40)


def _check_cinn_matches(cinn_card: dict, den: Denoiser, cvae_card: dict) -> None:
    from ..errors import WeightsError

    want = (cinn_card.get("cvae") or {}).get("sha256")
    if want and cvae_card.get("sha256") and want != cvae_card["sha256"]:
        raise WeightsError(
            "this cINN was trained on a different cVAE (hash differs from the cVAE's)",
            Path(cinn_card.get("file", "cINN")),
        )
    d = cinn_card.get("denoiser") or {}
    if d.get("sha256") and den.sha256 and d["sha256"] != den.sha256:
        raise WeightsError(
            f"this cINN was trained for a different {d.get('name')} denoiser "
            "(its hash differs from the loaded denoiser's)",
            Path(cinn_card.get("file", "cINN")),
        )


def std_map(samples: np.ndarray) -> np.ndarray:
    """Pixel-wise standard deviation over samples (HU)."""
    return samples.std(axis=0, dtype=np.float64).astype(np.float32)
