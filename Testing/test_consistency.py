"""The consistency step and the training-free noise sampler, on denoisers whose invariances are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from CTInvariancesLib.denoisers.loading import Denoiser, load_denoiser
from CTInvariancesLib.errors import CTInvariancesError
from CTInvariancesLib.invariance.consistency import DEFAULT_WARMUP, consistency_project, receptive_radius
from CTInvariancesLib.invariance.sampler import NoiseSampler
from CTInvariancesLib.lowdose import estimate_noise_hu

CLIP_HU = 300.0
PIXEL_MM = (0.8, 0.8)


def _phantom(seed: int = 0, size: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """A water disc (40 HU) with two dense inserts (700 HU) plus noise; returns (image, insert mask)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    c = size / 2
    img = np.where((yy - c) ** 2 + (xx - c) ** 2 < (0.42 * size) ** 2, 40.0, -1000.0).astype(np.float32)
    inserts = np.zeros_like(img, bool)
    for cy, cx in ((c - 25, c - 20), (c + 20, c + 22)):
        inserts |= (yy - cy) ** 2 + (xx - cx) ** 2 < 12**2
    img[inserts] = 700.0
    return img + rng.normal(0, 20, img.shape).astype(np.float32), inserts


def _clip(x: torch.Tensor) -> torch.Tensor:
    """A 'denoiser' that keeps everything but clips at CLIP_HU: it ignores what happens above it."""
    return x.clamp(max=CLIP_HU)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x * 1.0


def _lowpass(x: torch.Tensor, cutoff: float = 0.12) -> torch.Tensor:
    """Linear, J = J^T = an ideal low-pass: its null space is everything above ``cutoff`` cycles/px."""
    f = torch.fft.rfft2(x)
    fy = torch.fft.fftfreq(x.shape[-2])[:, None]
    fx = torch.fft.rfftfreq(x.shape[-1])[None, :]
    return torch.fft.irfft2(f * ((fy**2 + fx**2) <= cutoff**2), s=x.shape[-2:])


def _block_average(x: torch.Tensor) -> torch.Tensor:
    """Linear, with a known null space: zero-mean patterns inside each 2x2 block."""
    return torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(x, 2), scale_factor=2.0)


def _std_inside(samples: np.ndarray, mask: np.ndarray) -> float:
    return float(np.median(samples.std(0)[mask]))


def test_noise_sampler_draws_noise_at_the_level_of_x():
    x, _ = _phantom()
    sampler = NoiseSampler(Denoiser(_identity, "identity", input_convention="hu"))
    res = sampler.sample(x, 6, seed=3, pixel_mm=PIXEL_MM)
    noise = estimate_noise_hu(x)
    drawn = [estimate_noise_hu(s - res.denoised) for s in res.samples]
    assert np.median(drawn) == pytest.approx(noise, rel=0.15), (drawn, noise)
    # samples vary between each other (not only away from x), and reproducibly so
    assert _std_inside(res.samples, x > -500) >= 0.7 * noise
    assert np.array_equal(sampler.sample(x, 6, seed=3, pixel_mm=PIXEL_MM).samples, res.samples)
    again = sampler.sample(x, 3, seed=3, pixel_mm=PIXEL_MM)  # sample k does not depend on K
    assert np.allclose(again.samples, res.samples[:3], atol=0.05)
    other = sampler.sample(x, 3, seed=3, pixel_mm=PIXEL_MM, slice_index=1)
    assert not np.allclose(other.samples, res.samples[:3])


@pytest.mark.parametrize(
    "method, warmup",
    [("ncg", DEFAULT_WARMUP), ("gd", 0), ("ncg", 0)],
    ids=["default", "gradient-steps-only", "nonlinear-cg-only"],
)
def test_identity_denoiser_samples_are_brought_back_to_x(method, warmup):
    """Each phase of the default (gradient steps, nonlinear CG) must do the job on its own."""
    x, _ = _phantom()
    den = Denoiser(_identity, "identity", input_convention="hu")
    raw = NoiseSampler(den).sample(x, 4, seed=0, pixel_mm=PIXEL_MM).samples
    res = consistency_project(den, x, raw, method=method, warmup=warmup)
    body = x > -500
    rmse = [float(np.sqrt(np.mean((s - x)[body] ** 2))) for s in res.samples]
    assert max(rmse) <= 1.0, rmse
    assert min(res.residual_before_hu) > 10.0  # the raw samples were far from x


def test_clipping_denoiser_varies_inside_the_clipped_structures_only():
    x, inserts = _phantom()
    den = Denoiser(_clip, "clip", input_convention="hu")
    raw = NoiseSampler(den).sample(x, 8, seed=1, pixel_mm=PIXEL_MM).samples
    res = consistency_project(den, x, raw)
    from scipy import ndimage

    inside = ndimage.binary_erosion(inserts, iterations=2)
    soft = ndimage.binary_erosion((x > -500) & ~inserts, iterations=6)
    soft &= ~ndimage.binary_dilation(inserts, iterations=6)
    ratio = _std_inside(res.samples, inside) / _std_inside(res.samples, soft)
    assert ratio >= 5.0, ratio
    body = x > -500
    moved = [float(np.sqrt(np.mean((s - x)[body] ** 2))) for s in res.samples]
    fidelity = np.array(res.residual_after_hu) / np.array(moved)
    assert np.median(fidelity) <= 0.1, fidelity  # the default stops once the ratio is below 0.07
    assert np.median(res.residual_after_hu) < 0.2 * np.median(res.residual_before_hu)


@pytest.mark.parametrize("method", ["gd", "ncg"])
def test_correction_stays_in_the_range_of_the_jacobian_transpose(method):
    """For a linear f, what f ignores (its null space) is left exactly as drawn."""
    x, _ = _phantom(size=96)
    den = Denoiser(_block_average, "block-average", input_convention="hu")
    raw = NoiseSampler(den).sample(x, 3, seed=2, pixel_mm=PIXEL_MM).samples
    region = np.ones_like(x, bool)
    # all the default steps: exact
    res = consistency_project(den, x, raw, region=region, tolerance=0.0, method=method)
    t = torch.from_numpy
    d = t(res.samples - raw)[:, None]
    null_part = d - _block_average(d)  # component of the correction in the null space
    assert float(null_part.abs().max()) <= 1e-3 * float(d.abs().max())
    after = _block_average(t(res.samples)[:, None]) - _block_average(t(x)[None, None])
    assert float(after.abs().max()) <= 0.5  # f(x~') = f(x)
    assert float((t(res.samples - x)[:, None] - _block_average(t(res.samples - x)[:, None])).abs().mean()) > 5


@pytest.mark.parametrize("method", ["gd", "ncg"])
def test_correction_has_no_component_in_a_smooth_null_space(method):
    """A per-pixel rescaled step (Adam, sign of the gradient) would put high frequencies, which this
    low-pass f ignores, into the correction; gradient steps do not."""
    x, _ = _phantom(size=96)
    den = Denoiser(_lowpass, "low-pass", input_convention="hu")
    raw = NoiseSampler(den).sample(x, 3, seed=5, pixel_mm=PIXEL_MM).samples
    res = consistency_project(den, x, raw, region=np.ones_like(x, bool), tolerance=0.0, method=method)
    d = torch.from_numpy(res.samples - raw)[:, None]
    assert float((d - _lowpass(d)).abs().max()) <= 1e-3 * float(d.abs().max())
    gap = _lowpass(torch.from_numpy(res.samples)[:, None]) - _lowpass(torch.from_numpy(x)[None, None])
    assert float(gap.abs().max()) <= 0.5


def _offset_from_dense_pixels(x: torch.Tensor) -> torch.Tensor:
    """Identity plus an offset from all pixels above 900 HU in the slice: a reach that impulses in
    soft tissue do not reveal (they never cross 900 HU)."""
    return x + 0.5 * torch.relu(x - 900.0).mean(dim=(-2, -1), keepdim=True)


def test_the_crop_covers_what_f_reaches_even_where_impulses_do_not_show_it():
    """The step works on a crop around the body; f of that crop must be f of the whole slice there,
    or the samples are made consistent with the wrong target. Here the table (1500 HU, outside the
    body) shifts f everywhere by ~17 HU; the measured receptive radius is 0, so only the check of
    the crop against f of the whole slice can find it."""
    x, _ = _phantom()
    body = x > -500
    x[150:159, :] = 1500.0  # the table
    den = Denoiser(_offset_from_dense_pixels, "dense-offset", input_convention="hu")
    assert receptive_radius(den, x, body, torch.device("cpu")) == 0
    raw = (
        NoiseSampler(Denoiser(_identity, "identity", input_convention="hu"))
        .sample(x, 2, seed=0, pixel_mm=PIXEL_MM)
        .samples
    )
    res = consistency_project(den, x, raw, region=body)
    fx, fs = den.denoise_slices(x[None])[0], den.denoise_slices(res.samples)
    ratio = [
        np.sqrt(np.mean((b - fx)[body] ** 2) / np.mean((a - x)[body] ** 2)) for a, b in zip(res.samples, fs)
    ]
    assert max(ratio) <= 0.1, ratio  # on the whole slice, as the user sees it


def test_receptive_radius_of_known_networks():
    x, _ = _phantom()
    body = x > -500
    conv = torch.nn.Conv2d(1, 1, 21, padding=10, bias=False)
    torch.nn.init.constant_(conv.weight, 1.0 / 441)
    conv.requires_grad_(False)
    box = Denoiser(conv, "box-21", input_convention="hu")
    assert receptive_radius(box, x, body, torch.device("cpu")) == 10
    global_mean = Denoiser(lambda t: t - t.mean(dim=(-2, -1), keepdim=True), "global", input_convention="hu")
    assert receptive_radius(global_mean, x, body, torch.device("cpu")) is None  # no crop: the whole slice


def test_zero_steps_returns_the_raw_samples_and_the_input_is_not_modified():
    x, _ = _phantom(size=64)
    raw = x[None] + np.float32(3.0)
    keep = raw.copy()
    den = Denoiser(_identity, "identity", input_convention="hu")
    assert np.array_equal(consistency_project(den, x, raw, steps=0).samples, raw)
    consistency_project(den, x, raw, steps=2)
    assert np.array_equal(raw, keep)


def test_gauss_newton_cg_also_converges_on_a_linear_denoiser():
    x, _ = _phantom(size=96)
    den = Denoiser(_block_average, "block-average", input_convention="hu")
    raw = NoiseSampler(den).sample(x, 2, seed=4, pixel_mm=PIXEL_MM).samples
    res = consistency_project(den, x, raw, steps=8, method="cg")
    assert max(res.residual_after_hu) <= 0.05 * min(res.residual_before_hu)


def test_a_network_that_cannot_be_differentiated_gets_a_one_line_error():
    def numpy_denoiser(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(x.detach().numpy().copy())

    x, _ = _phantom(size=64)
    den = Denoiser(numpy_denoiser, "numpy-net", input_convention="hu")
    with pytest.raises(CTInvariancesError, match="--consistency 0") as err:
        consistency_project(den, x, x[None] + 1, steps=2)
    assert "numpy-net" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("route", ["torchscript", "export", "callable"])
def test_every_denoiser_route_is_differentiable(route, tmp_path, monkeypatch):
    net = load_denoiser("cnn10").module
    if route == "torchscript":
        path = tmp_path / "net.ts"
        torch.jit.script(net).save(str(path))
        den = load_denoiser(str(path))
    elif route == "export":
        path = tmp_path / "net.pt2"
        h = torch.export.Dim("h", min=16, max=1024)
        w = torch.export.Dim("w", min=16, max=1024)
        b = torch.export.Dim("b", min=1, max=64)
        prog = torch.export.export(net, (torch.zeros(2, 1, 64, 64),), dynamic_shapes=({0: b, 2: h, 3: w},))
        torch.export.save(prog, str(path))
        den = load_denoiser(str(path))
    else:
        monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
        den = load_denoiser("custom_denoisers:smoother")
    x, _ = _phantom(size=96)
    fx = den.denoise_slices(x[None])[0]
    raw = fx[None] + np.random.default_rng(0).normal(0, 20, (2, *x.shape)).astype(np.float32)
    res = consistency_project(den, x, raw, steps=6)
    assert max(res.residual_after_hu) < 0.5 * min(res.residual_before_hu)


def _fp32_precision() -> str:
    return torch.backends.cudnn.conv.fp32_precision


def test_full_fp32_turns_tf32_off_on_cuda_and_restores_the_users_setting():
    """The consistency step needs f itself: TF32 rounding left cnn10's samples at a fidelity ratio of
    0.135 on an H200 (precision.py). The switch is scoped: the user's setting comes back, also after
    an error, and other devices are left alone."""
    from CTInvariancesLib.precision import full_fp32

    old = torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    try:
        torch.backends.cudnn.conv.fp32_precision = "tf32"
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        with full_fp32("cpu"):
            assert _fp32_precision() == "tf32"
        with full_fp32(torch.device("cuda", 0)):
            assert _fp32_precision() == "ieee"
            assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        assert _fp32_precision() == "tf32" and torch.backends.cuda.matmul.fp32_precision == "tf32"
        with pytest.raises(RuntimeError), full_fp32("cuda"):
            raise RuntimeError("a failing step")
        assert _fp32_precision() == "tf32"
    finally:
        torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision = old


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_denoiser_and_the_consistency_step_run_in_full_fp32_on_cuda():
    seen = []

    class RecordingIdentity(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gain = torch.nn.Parameter(torch.ones(()))  # places the network on a device

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(_fp32_precision())
            return x * self.gain

    old = torch.backends.cudnn.conv.fp32_precision
    try:
        torch.backends.cudnn.conv.fp32_precision = "tf32"
        den = Denoiser(RecordingIdentity(), "identity", input_convention="hu").to("cuda")
        x, _ = _phantom()
        den.denoise_slices(x[None])
        consistency_project(den, x, x[None] + 5.0, steps=2, batch_size=1)
        assert seen and set(seen) == {"ieee"}
        assert _fp32_precision() == "tf32"
    finally:
        torch.backends.cudnn.conv.fp32_precision = old
