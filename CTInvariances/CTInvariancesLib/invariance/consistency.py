"""The consistency step: turn each raw sample x~ into an input x~' that f maps to f(x).

Invariance sampling is an inverse problem with f as the forward operator and f(x) as the
measurement. For each sample we look for x~' = x~ + d with M (f(x~ + d) - f(x)) = 0, M the body
region (dilated by a few pixels), by descent on 0.5 |M (f(x~ + d) - f(x))|^2. The default
(``method="ncg"``) takes six gradient steps with heavy-ball momentum (the large, nonlinear part of
the move) and then nonlinear conjugate gradients with a per-sample step length from the linearised
residual: it reaches the same tolerance in about half the Jacobian products of plain gradient
descent (``method="gd"``) and keeps as much of what the sampler drew (README, "The consistency
step"). ``method="cg"`` (Gauss-Newton, J J^T y = r solved by linear conjugate gradients, d = J^T y)
is kept for comparison: it overshoots on ReLU networks. Every method builds d from J^T r at the
points visited (J: the Jacobian of f, r: the residual), so every correction lies in the span of
J^T: the part of x~ - x that f ignores (its null space) is left as the sampler drew it; what the
step removes is what f keeps. Adam has not this property (its per-pixel scaling leaks into the null
space).

Cost: a gradient step is one forward pass with graph and one backward pass; a nonlinear-CG
iteration adds one forward pass (J p by finite differences) for its step length. All samples of a
slice are solved in batches on f's device, only on the bounding box of the region plus f's measured
receptive radius (checked: f of the crop equals f of the whole slice inside the region), and a batch
stops once every sample is consistent to ``tolerance``. On the CPU, f's single-channel layers (the
first layer's input gradient, the last layer's output) are computed by matrix products
(``denoisers/single_channel.py``; oneDNN is several times slower there) in batches of 2.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import defaults
from ..allocator import tune_cpu_allocator
from ..denoisers.single_channel import fast_single_channel_layers
from ..errors import Cancelled, CTInvariancesError
from ..metrics import body_mask
from ..precision import full_fp32

METHODS = ("ncg", "gd", "cg")
# measured choice, see README ("The consistency step") and benchmarks/bench_consistency.py
DEFAULT_METHOD = defaults.CONSISTENCY_METHOD
DEFAULT_STEPS = defaults.CONSISTENCY_STEPS
DEFAULT_STEP_SIZE = 1.8  # HU per HU; halved per sample whenever its residual grows
DEFAULT_MOMENTUM = 0.3
DEFAULT_RESTART = 4  # CG iterations per linearisation
# "ncg": plain gradient steps first (the large, nonlinear part of the move), then nonlinear CG; six
# measured best of 0 / 6 / 12 on three denoisers (README, "The consistency step")
DEFAULT_WARMUP = 6
# stop early once every sample of a batch has RMSE(f(x~'), f(x)) <= tolerance * RMSE(x~', x) in the
# region (the fidelity ratio, with a margin below the 0.1 that the README's table checks)
DEFAULT_TOLERANCE = 0.07
# beyond the region: the denoiser's receptive radius (receptive_radius, once per denoiser) plus this
RF_SAFETY_PX = 2
RF_PROBE_PX = 48  # half-size of the patches the receptive radius is probed in
# samples per batch on the CPU: K = 16, cnn10, whole abdomen slice, one session: batches of 1 / 2 / 4 / 8
# took 58 / 56 / 61 / 64 s, wganvgg 2 / 4: 104 / 108 s (smaller working sets stay in cache)
CPU_BATCH = 2
MARGIN_PX = 24  # region_box's default (covers the bundled denoisers' receptive radii, 7-20 px)


@dataclass
class ConsistencyResult:
    samples: np.ndarray  # [K, H, W] HU
    residual_before_hu: list[float] = field(default_factory=list)  # RMSE(f(x~), f(x)) in the region
    residual_after_hu: list[float] = field(default_factory=list)  # RMSE(f(x~'), f(x)) in the region
    correction_rmse_hu: list[float] = field(default_factory=list)  # RMSE(x~' - x~) in the region
    steps_used: list[int] = field(default_factory=list)  # per batch: steps until consistent (the cost)


def region_box(region: np.ndarray, margin: int = MARGIN_PX) -> tuple[slice, slice]:
    rows, cols = np.nonzero(region.any(1))[0], np.nonzero(region.any(0))[0]
    if rows.size == 0:
        return slice(0, 0), slice(0, 0)
    h, w = region.shape
    return (
        slice(max(0, rows[0] - margin), min(h, rows[-1] + 1 + margin)),
        slice(max(0, cols[0] - margin), min(w, cols[-1] + 1 + margin)),
    )


def _tensor(a: np.ndarray, device) -> torch.Tensor:
    """An [H, W] array as a [1, 1, H, W] float32 tensor on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(a, np.float32))[None, None].to(device)


def receptive_radius(denoiser, x: np.ndarray, region: np.ndarray, device) -> int | None:
    """How far (px) a change of one input pixel reaches in f's output: the largest distance at which
    f(x + impulse) - f(x) is not zero, for impulses at four places in ``region`` (the max over the
    four covers paths that one place's ReLUs switch off). None when it reaches the border of the
    probe patches (a network with a wider or a global receptive field) or when the network does not
    take the probe patches (96 px, a multiple of 32)."""
    ys, xs = np.nonzero(region)
    if ys.size == 0:
        return 0
    half = RF_PROBE_PX
    padded = np.pad(x, half, mode="edge")
    pick = np.linspace(0, ys.size - 1, 6)[1:-1].astype(int)
    patches = [padded[y : y + 2 * half, c : c + 2 * half] for y, c in zip(ys[pick], xs[pick])]
    t = torch.from_numpy(np.stack(patches).astype(np.float32))[:, None].to(device)
    bumped = t.clone()
    bumped[..., half, half] += 100.0
    try:
        with torch.no_grad():
            change = (denoiser(bumped) - denoiser(t)).abs()[:, 0].amax(0).float().cpu().numpy()
    except CTInvariancesError:  # e.g. a network that needs other sizes: no crop, the whole slice
        return None
    rows, cols = np.nonzero(change > 1e-4 * max(float(change.max()), 1e-12))
    if rows.size == 0:
        return 0
    r = int(max(np.abs(rows - half).max(), np.abs(cols - half).max()))
    return None if r >= half - 1 else r


def consistency_region(x_hu: np.ndarray) -> np.ndarray:
    """Where f(x~') must equal f(x): the patient body, dilated by a few pixels (skin and table edge)."""
    from scipy import ndimage

    return ndimage.binary_dilation(body_mask(x_hu), iterations=4)


def _check_differentiable(denoiser, probe: torch.Tensor) -> None:
    try:
        with torch.enable_grad():
            s = probe.detach().requires_grad_(True)
            out = denoiser(s)
            if not out.requires_grad:
                raise RuntimeError("its output does not depend differentiably on its input")
            torch.autograd.grad(out.sum(), s)
    except Exception as exc:  # any failure here means: no gradients through this network
        raise CTInvariancesError(
            "the consistency step needs a differentiable denoiser, and this one is not "
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
            "run with --consistency 0 to keep the raw samples",
            getattr(denoiser, "name", "denoiser"),
        ) from None


class _Linearisation:
    """J and J^T of f at a batch of points, by autograd (works for nn.Module, TorchScript, torch.export).

    J^T y is exact (a backward pass through the graph kept from the forward pass). J v is a
    one-sided finite difference (f(s + e v) - f(s)) / e with max |e v| = ``FD_HU``: one forward
    pass instead of a double backward (5x slower for redcnn). For ReLU networks it is exact unless an
    activation flips; in float32 its error is about 1 % (measured against the exact product), and
    the true residual is recomputed at every relinearisation, so it does not accumulate.
    """

    FD_HU = 1.0

    def __init__(self, f: Callable[[torch.Tensor], torch.Tensor], s: torch.Tensor) -> None:
        self.f = f
        self.s = s.detach().requires_grad_(True)
        self.out = f(self.s)
        self.out0 = self.out.detach()

    def vjp(self, y: torch.Tensor) -> torch.Tensor:
        return torch.autograd.grad(self.out, self.s, y, retain_graph=True)[0]

    @torch.no_grad()
    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        scale = v.abs().flatten(1).amax(1).clamp(min=1e-12).view(-1, 1, 1, 1)
        eps = self.FD_HU / scale
        return (self.f(self.s.detach() + eps * v) - self.out0) / eps


def _bdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).flatten(1).sum(1).view(-1, 1, 1, 1)


def _project_batch(
    f, s, target, mask, steps, method, restart, step_size, momentum, x=None, tolerance=0.0,
    warmup=DEFAULT_WARMUP,
):
    """Move s [B,1,h,w] towards mask * (f(s) - target) = 0; returns the corrected batch.

    "gd": gradient steps d = J^T r with heavy-ball momentum; a sample whose residual grew gets its
    step halved and its momentum reset, so a network with a gain above 1 cannot make it diverge.
    "ncg": ``warmup`` such gradient steps, then nonlinear conjugate gradients (Polak-Ribiere+) on
    0.5 |r|^2, relinearised at every iteration: the direction is J^T r plus beta times the previous
    direction, the step length per sample minimises the linearised residual along it (one extra
    forward pass for J p), and a sample whose residual grew restarts from its gradient.
    "cg": Gauss-Newton, the linear system J J^T y = r solved by CG, relinearised every ``restart``
    iterations. All keep every correction in the span of J^T at the points visited.
    Returns (s, iterations, f(s) at the start (None only when steps is 0), f(s) at the end or None
    when not computed).
    """
    s = s.clone()
    done = 0
    b = s.shape[0]
    step = torch.full((b, 1, 1, 1), float(step_size), device=s.device)
    velocity = torch.zeros_like(s)
    last = torch.full((b, 1, 1, 1), float("inf"), device=s.device)
    direction = grad_before = None
    f_start = f_end = None  # f at the start and (when the loop ends consistent) at the end: no extra passes
    while done < steps:
        lin = _Linearisation(f, s)
        if f_start is None:
            f_start = lin.out0
        r = mask * (target - lin.out0)  # we want J d = r
        if tolerance > 0 and x is not None:
            # stop when every sample is consistent: RMSE(f(s), f(x)) <= tolerance * RMSE(s, x)
            moved = _bdot(mask * (s - x), mask * (s - x))
            if bool((_bdot(r, r) <= tolerance**2 * moved).all()):
                f_end = lin.out0
                break
        rr = _bdot(r, r)
        grew = rr > last
        last = rr
        if method == "gd" or (method == "ncg" and done < warmup):
            step = torch.where(grew, step * 0.5, step)
            velocity = torch.where(grew, torch.zeros_like(velocity), velocity)
            velocity = momentum * velocity + step * lin.vjp(r)
            s = (s + velocity).detach()
            done += 1
            continue
        if method == "ncg":
            grad = lin.vjp(r)  # J^T r: the steepest descent direction of 0.5 |r|^2
            if direction is None:
                direction = grad
            else:
                beta = (_bdot(grad, grad - grad_before) / _bdot(grad_before, grad_before).clamp(min=1e-30))
                beta = torch.where(grew, torch.zeros_like(beta), beta.clamp(min=0))
                direction = grad + beta * direction
            jp = mask * lin.jvp(direction)
            alpha = _bdot(r, jp) / _bdot(jp, jp).clamp(min=1e-30)
            s = (s + alpha * direction).detach()
            grad_before = grad
            done += 1
            continue
        y_res = r
        p = r
        d = torch.zeros_like(s)
        for _ in range(min(restart, steps - done)):
            q = lin.vjp(p)  # J^T p
            qq = _bdot(q, q)
            alpha = torch.where(qq > 0, rr / qq.clamp(min=1e-30), torch.zeros_like(qq))
            d = d + alpha * q
            y_res = y_res - alpha * (mask * lin.jvp(q))
            rr_new = _bdot(y_res, y_res)
            beta = torch.where(rr > 0, rr_new / rr.clamp(min=1e-30), torch.zeros_like(rr))
            p = y_res + beta * p
            rr = rr_new
            done += 1
        s = (s + d).detach()
        del lin
    return s, done, f_start, f_end


_RADII: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # denoiser -> receptive radius


def _crop_and_target(denoiser, x, region, denoised_hu, device) -> tuple[slice, slice, torch.Tensor]:
    """The crop the step works on (the region's bounding box plus f's measured receptive radius) and
    f(x) on it, taken from f of the whole slice. The crop is checked: f of the cropped x must equal
    f(x) inside the region (else the margin doubles, up to the whole slice), so a denoiser with a
    wider reach than measured still gets the target the user sees."""
    with torch.no_grad():
        if denoised_hu is None:
            denoised_hu = denoiser(_tensor(x, device))[0, 0].float().cpu().numpy()
    try:  # a property of the network: measured on its first slice (the check below covers the rest)
        radius = _RADII[denoiser]
    except (KeyError, TypeError):
        radius = receptive_radius(denoiser, x, region, device)
        with contextlib.suppress(TypeError):
            _RADII[denoiser] = radius
    margin = max(x.shape) if radius is None else radius + RF_SAFETY_PX
    while True:
        rs, cs = region_box(region, margin)
        target = _tensor(denoised_hu[rs, cs], device)
        if margin >= max(x.shape):
            return rs, cs, target
        try:
            with torch.no_grad():
                got = denoiser(_tensor(x[rs, cs], device))
        except CTInvariancesError:  # a network that does not take this crop's size
            margin = max(x.shape)
            continue
        inside = torch.from_numpy(np.ascontiguousarray(region[rs, cs])).to(device)
        if float((got - target)[0, 0][inside].abs().max()) <= 0.05:  # HU; float round-off is ~1e-4
            return rs, cs, target
        margin *= 2


def consistency_project(
    denoiser,
    x_hu: np.ndarray,
    samples_hu: np.ndarray,
    steps: int = DEFAULT_STEPS,
    method: str = DEFAULT_METHOD,
    denoised_hu: np.ndarray | None = None,
    region: np.ndarray | None = None,
    batch_size: int | None = None,
    restart: int = DEFAULT_RESTART,
    warmup: int = DEFAULT_WARMUP,
    step_size: float = DEFAULT_STEP_SIZE,
    momentum: float = DEFAULT_MOMENTUM,
    tolerance: float = DEFAULT_TOLERANCE,
    should_stop: Callable[[], bool] | None = None,
) -> ConsistencyResult:
    """Consistent samples x~' = x~ + d with f(x~') = f(x) in ``region`` (default: the body).

    ``denoiser`` maps [B, 1, H, W] HU tensors to HU (a :class:`Denoiser`); ``samples_hu`` [K, H, W].
    ``steps`` is the most iterations (gradient steps, nonlinear-CG or CG iterations); a batch stops
    earlier once every sample's fidelity ratio is below ``tolerance`` (0: always run all steps); 0
    steps return the raw samples. Outside the region's bounding box (plus a margin) samples are
    unchanged. ``batch_size``: samples solved together (default: 2 on the CPU, 4 elsewhere).
    """
    if method not in METHODS:
        raise ValueError(f"consistency method must be one of {METHODS}, got {method!r}")
    if steps < 0:
        raise ValueError(f"consistency steps must be >= 0, got {steps}")
    x = np.asarray(x_hu, np.float32)
    samples = np.array(samples_hu, np.float32, copy=True)
    if samples.ndim != 3 or samples.shape[1:] != x.shape:
        raise ValueError(f"samples must be [K, {x.shape[0]}, {x.shape[1]}], got {samples.shape}")
    result = ConsistencyResult(samples=samples)
    if steps == 0 or len(samples) == 0:
        return result
    region = consistency_region(x) if region is None else np.asarray(region, bool)
    if not region.any():
        return result
    device = getattr(denoiser, "device", torch.device("cpu"))
    if batch_size is None:
        batch_size = CPU_BATCH if device.type == "cpu" else 4
    if device.type == "cpu":
        tune_cpu_allocator()
    # f itself, not TF32's approximation of it: forward and backward passes (precision.py)
    with full_fp32(device):
        rs, cs, target = _crop_and_target(denoiser, x, region, denoised_hu, device)
        xc = _tensor(x[rs, cs], device)
        _check_differentiable(denoiser, xc[..., :32, :32])
        mask = _tensor(region[rs, cs], device)
        n_mask = max(1.0, float(mask.sum()))

        def rmse(a: torch.Tensor) -> list[float]:
            return ((a * mask) ** 2).flatten(1).sum(1).div(n_mask).sqrt().tolist()

        # single-channel layers by matrix products on the CPU (denoisers/single_channel.py)
        with fast_single_channel_layers(getattr(denoiser, "module", None)):
            for start in range(0, len(samples), batch_size):
                if should_stop and should_stop():
                    raise Cancelled()
                batch = np.ascontiguousarray(samples[start : start + batch_size, rs, cs])
                s0 = torch.from_numpy(batch)[:, None].to(device)
                with torch.enable_grad():
                    s1, used, f_start, f_end = _project_batch(
                        denoiser,
                        s0,
                        target,
                        mask,
                        steps,
                        method,
                        restart,
                        step_size,
                        momentum,
                        x=xc,
                        tolerance=tolerance,
                        warmup=warmup,
                    )
                with torch.no_grad():
                    result.residual_before_hu += rmse(f_start - target)  # steps > 0: the loop ran
                    result.residual_after_hu += rmse((denoiser(s1) if f_end is None else f_end) - target)
                    result.correction_rmse_hu += rmse(s1 - s0)
                samples[start : start + len(s0), rs, cs] = s1[:, 0].float().cpu().numpy()
                result.steps_used.append(used)
    return result
