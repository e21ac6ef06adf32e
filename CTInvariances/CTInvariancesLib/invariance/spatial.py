"""The spatial-latent engine: a fully convolutional cVAE whose latent is a map (C x H/s x W/s), and a
convolutional conditional INN on that map. Both apply to a whole slice in one pass: no tiles, no
seams, f(x) computed once per slice.

Why (README, "The spatial-latent engine"): a global latent of 64-256 numbers per 64-128 px tile
cannot carry pixel-level noise, so the tiled engine's samples vary little. Here the latent keeps
about one number per pixel (C = 4 channels at half resolution), so the decoder can reproduce the
noise of x, and the cINN - invertible 1x1 convolutions and affine couplings whose subnetworks see
features of f(x) at the latent's resolution (Ardizzone et al., "Guided image generation with
conditional invertible neural networks") - maps the latent map to v ~ N(0, I) of the same shape.

All tensors in the ldct-benchmark normalised units, [B, 1, H, W]; H and W multiples of 2**down.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..normalization import normalized_to_hu
from .cvae import DiagonalGaussian
from .layers import ActNorm

ARCH = "spatial"


@dataclass(frozen=True)
class SpatialCVAEConfig:
    latent_ch: int = 4
    down: int = 1  # the latent has 1 / 2**down of the slice's resolution
    width: int = 24  # channels at full resolution
    latent_width: int = 48  # channels at the latent's resolution
    blocks: int = 2  # residual blocks at the latent's resolution (encoder and decoder)
    patch: int = 128  # training crop size (any multiple of 2**down applies)
    arch: str = ARCH
    name: str = field(default="spatial", compare=False)

    @property
    def multiple(self) -> int:
        return 2**self.down

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> SpatialCVAEConfig:
        return SpatialCVAEConfig(**d)


@dataclass(frozen=True)
class SpatialCINNConfig:
    latent_ch: int = 4
    down: int = 1
    n_flows: int = 8
    hidden: int = 40  # coupling subnetwork channels
    cond_width: int = 32  # channels of the f(x) features the couplings see
    clamp: float = 2.0  # soft bound of the log-scales: |s| < clamp
    # condition also on the noise level of x (the project's estimator, one number per slice): f(x)
    # does not say how noisy x was, and p(z | f(x)) differs between a 5 HU and a 25 HU slice
    noise_condition: bool = True
    # a conditional affine map on z, z = h exp(s) + t, with s = a + b log(sigma / 20 HU) + S(features)
    # and t = T(features) per latent pixel: the spread of the encoder's latent grows with the noise of
    # x (abdomen 0.7-1.0, head 0.15-0.3 per channel), which the couplings alone learned only in part
    # (README, "Why a learned sampler does not vary out of the box")
    noise_scale: bool = True
    # the noise condition is a local map (sampler.slice_noise_map: the simulator's local noise std of
    # x), not one number per slice: the latent's local spread follows it (abdomen: a factor of 4)
    noise_map: bool = True
    # a per-channel affine map at v's end of the flow whose shift and log-scale are linear in the
    # noise level and a body indicator of f(x) (OutputCalibration), fitted by maximum likelihood on
    # training latents with the rest frozen: the joint training left v's mean off by up to 0.2
    # (cnn10) and its spread 0.85 in head soft tissue against 1.15 in the abdomen's, on training
    # and held-out crops alike (README)
    calibration: bool = True
    arch: str = ARCH
    name: str = field(default="spatial", compare=False)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> SpatialCINNConfig:
        # cards written before the noise-level condition existed describe models without it
        # and those written before the conditional affine map without it
        return SpatialCINNConfig(
            **{"noise_condition": False, "noise_scale": False, "noise_map": False, "calibration": False, **d}
        )

    def __post_init__(self) -> None:
        if (self.noise_scale or self.noise_map) and not self.noise_condition:
            raise ValueError("noise_scale and noise_map need noise_condition (the noise level of x)")
        if self.calibration and not self.noise_scale:
            raise ValueError("calibration needs noise_scale (it reads the noise level map of the condition)")


def is_spatial(cfg_dict: dict) -> bool:
    return cfg_dict.get("arch") == ARCH


class ResBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


def split_conv(conv: nn.Conv2d, x: torch.Tensor, channels: slice, bias: bool) -> torch.Tensor:
    """``conv`` applied to the input channels ``channels`` of its weight only (the bias if asked).

    A convolution of cat([varying, fixed]) is conv(varying) + conv(fixed) + bias: when the fixed part
    is the slice's condition (features of f(x)), that term is the same for every sample of the slice
    and is computed once (``prepare``) instead of once per sample: 30-40 % of the sampling cost."""
    return F.conv2d(x, conv.weight[:, channels], conv.bias if bias else None, conv.stride, conv.padding)


class SpatialGaussian(DiagonalGaussian):
    """q(z | x, f(x)) as a map: mean and clamped log-variance, [B, C, h, w] each (sampling and KL as
    for the global latent)."""

    def __init__(self, params: torch.Tensor) -> None:
        self._split(params)  # channels: C means, then C log-variances


class SpatialEncoder(nn.Module):
    def __init__(self, cfg: SpatialCVAEConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(2, cfg.width, 3, padding=1), ResBlock(cfg.width)]
        ch = cfg.width
        for _ in range(cfg.down):
            layers += [nn.Conv2d(ch, cfg.latent_width, 3, stride=2, padding=1), ResBlock(cfg.latent_width)]
            ch = cfg.latent_width
        layers += [ResBlock(ch) for _ in range(cfg.blocks - 1)]
        layers += [nn.SiLU(), nn.Conv2d(ch, 2 * cfg.latent_ch, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, fx: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, fx], 1))


class SpatialDecoder(nn.Module):
    """x^ = f(x) + D(z, f(x)); features of f(x) enter at every scale."""

    def __init__(self, cfg: SpatialCVAEConfig) -> None:
        super().__init__()
        self.down = cfg.down
        widths = [cfg.width] + [cfg.latent_width] * cfg.down  # per scale, full resolution first
        self.cond = nn.ModuleList([nn.Conv2d(1, widths[0], 3, padding=1)])
        for i in range(cfg.down):
            self.cond.append(nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1))
        self.inp = nn.Conv2d(cfg.latent_ch + widths[-1], widths[-1], 3, padding=1)
        self.mid = nn.Sequential(*[ResBlock(widths[-1]) for _ in range(cfg.blocks)])
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        self.post = nn.ModuleList()
        for i in reversed(range(cfg.down)):
            self.up.append(nn.Conv2d(widths[i + 1], widths[i], 3, padding=1))
            self.merge.append(nn.Conv2d(2 * widths[i], widths[i], 3, padding=1))
            self.post.append(ResBlock(widths[i]))
        self.out = nn.Conv2d(widths[0], 1, 3, padding=1)
        nn.init.zeros_(self.out.weight)  # starts as x^ = f(x)
        nn.init.zeros_(self.out.bias)

    def _features(self, fx: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        h = fx
        for conv in self.cond:
            h = F.silu(conv(h))
            feats.append(h)
        return feats

    def forward(self, z: torch.Tensor, fx: torch.Tensor) -> torch.Tensor:
        feats = self._features(fx)
        h = self.mid(self.inp(torch.cat([z.to(feats[-1].dtype), feats[-1]], 1)))
        for j, (up, merge, post) in enumerate(zip(self.up, self.merge, self.post)):
            h = up(F.interpolate(F.silu(h), scale_factor=2.0, mode="nearest"))
            h = post(merge(torch.cat([h, feats[-2 - j]], 1)))
        return self._output(h, fx)

    def _output(self, h: torch.Tensor, fx: torch.Tensor) -> torch.Tensor:
        # the residual in float32: f(x) spans ~5 normalised units, bf16 would round it to ~5 HU
        return self.out(F.silu(h)).float() + fx.float()

    def prepare(self, fx: torch.Tensor) -> DecoderCondition:
        """What the decoder computes from f(x) alone, once per slice (``fx`` [1, 1, H, W])."""
        feats = self._features(fx)
        nz = self.inp.in_channels - feats[-1].shape[1]
        merge_terms = [
            split_conv(merge, feats[-2 - j], slice(merge.in_channels // 2, None), bias=True)
            for j, merge in enumerate(self.merge)
        ]
        return DecoderCondition(fx, split_conv(self.inp, feats[-1], slice(nz, None), bias=True), merge_terms)

    def decode_prepared(self, z: torch.Tensor, cond: DecoderCondition) -> torch.Tensor:
        """forward(z, f(x)) with the f(x) terms of ``cond`` (equal up to rounding, fewer operations)."""
        nz = z.shape[1]
        h = self.mid(split_conv(self.inp, z.to(cond.inp.dtype), slice(0, nz), bias=False) + cond.inp)
        for j, (up, merge, post) in enumerate(zip(self.up, self.merge, self.post)):
            h = up(F.interpolate(F.silu(h), scale_factor=2.0, mode="nearest"))
            h = post(split_conv(merge, h, slice(0, h.shape[1]), bias=False) + cond.merge[j])
        return self._output(h, cond.fx)


@dataclass
class DecoderCondition:
    """The spatial decoder's per-slice terms: f(x) and the condition's share of the convolutions that
    see [latent or features, features of f(x)] (bias included); batch 1, broadcast over samples."""

    fx: torch.Tensor
    inp: torch.Tensor
    merge: list[torch.Tensor]


class SpatialCVAE(nn.Module):
    """E(x, f(x)) -> q(z) on a latent map, D(z, f(x)) -> x; fully convolutional."""

    def __init__(self, cfg: SpatialCVAEConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or SpatialCVAEConfig()
        self.encoder = SpatialEncoder(self.cfg)
        self.decoder = SpatialDecoder(self.cfg)

    @property
    def patch(self) -> int:
        return self.cfg.patch

    @property
    def latent_ch(self) -> int:
        return self.cfg.latent_ch

    @property
    def multiple(self) -> int:
        return self.cfg.multiple

    def latent_shape(self, h: int, w: int) -> tuple[int, int, int]:
        m = self.multiple
        return (self.cfg.latent_ch, h // m, w // m)

    def encode(self, x: torch.Tensor, fx: torch.Tensor) -> SpatialGaussian:
        return SpatialGaussian(self.encoder(x, fx))

    def decode(self, z: torch.Tensor, fx: torch.Tensor | DecoderCondition) -> torch.Tensor:
        """x~ = D(z, f(x)); ``fx`` may be ``decoder.prepare(f(x))`` of one slice, reused by its samples."""
        if isinstance(fx, DecoderCondition):
            return self.decoder.decode_prepared(z, fx)
        return self.decoder(z, fx)

    def forward(self, x: torch.Tensor, fx: torch.Tensor, generator: torch.Generator | None = None):
        """(KL per sample, reconstruction from a posterior sample, the posterior)."""
        q = self.encode(x, fx)
        return q.kl(), self.decode(q.sample(generator), fx), q


# --- the convolutional cINN ------------------------------------------------------------------


class Invertible1x1Conv(nn.Module):
    """z -> W z per pixel (Glow), W initialised as a random rotation; log|det| = h w log|det W|."""

    def __init__(self, ch: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(ch, ch, generator=generator))
        self.weight = nn.Parameter(q)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ld = torch.linalg.slogdet(self.weight.double())[1].to(x.dtype) * x.shape[2] * x.shape[3]
        return F.conv2d(x, self.weight.to(x.dtype)[:, :, None, None]), ld.expand(x.shape[0])

    def reverse(self, h: torch.Tensor) -> torch.Tensor:
        return F.conv2d(h, torch.linalg.inv(self.weight.double()).to(h.dtype)[:, :, None, None])


@dataclass
class PreparedTerm:
    """A coupling's per-slice term: its first conv applied to the condition features only."""

    term: torch.Tensor


class ConvCoupling(nn.Module):
    """Affine coupling on channels: b' = b exp(s) + t, (s, t) = net([a, features of f(x)]),
    s soft-clamped to (-clamp, clamp); the last conv starts at zero so the block starts as identity."""

    def __init__(self, ch: int, cond_width: int, hidden: int, clamp: float) -> None:
        super().__init__()
        self.na = ch // 2
        nb = ch - self.na
        self.clamp = clamp
        self.net = nn.Sequential(
            nn.Conv2d(self.na + cond_width, hidden, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(hidden, 2 * nb, 3, padding=1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _st(self, a: torch.Tensor, c: torch.Tensor | PreparedTerm) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(c, PreparedTerm):  # the condition's share of the first conv, computed once
            h = split_conv(self.net[0], a, slice(0, self.na), bias=False) + c.term
            s, t = self.net[1:](h).chunk(2, dim=1)
        else:
            s, t = self.net(torch.cat([a, c], 1)).chunk(2, dim=1)
        return self.clamp * torch.tanh(s / self.clamp), t

    def prepare(self, c: torch.Tensor) -> PreparedTerm:
        return PreparedTerm(split_conv(self.net[0], c, slice(self.na, None), bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = x[:, : self.na], x[:, self.na :]
        s, t = self._st(a, c)
        return torch.cat([a, b * s.exp() + t], 1), s.sum(dim=(1, 2, 3))

    def reverse(self, h: torch.Tensor, c: torch.Tensor | PreparedTerm) -> torch.Tensor:
        a, b = h[:, : self.na], h[:, self.na :]
        s, t = self._st(a, c)
        return torch.cat([a, (b - t) * (-s).exp()], 1)


class SpatialFlowStep(nn.Module):
    """ActNorm -> invertible 1x1 convolution -> conditional affine coupling."""

    def __init__(self, cfg: SpatialCINNConfig, generator: torch.Generator | None) -> None:
        super().__init__()
        self.norm = ActNorm(cfg.latent_ch, logdet=True)
        self.mix = Invertible1x1Conv(cfg.latent_ch, generator)
        self.coupling = ConvCoupling(cfg.latent_ch, cfg.cond_width, cfg.hidden, cfg.clamp)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, ld0 = self.norm(x)
        h, ld1 = self.mix(h)
        h, ld2 = self.coupling(h, c)
        return h, ld0 + ld1 + ld2

    def reverse(self, h: torch.Tensor, c: torch.Tensor | PreparedTerm) -> torch.Tensor:
        return self.norm.reverse(self.mix.reverse(self.coupling.reverse(h, c)))


class NoiseScale(nn.Module):
    """The conditional affine map at the latent's end of the flow: z = h exp(s) + t per latent pixel,
    s = a + b l + S(c), t = T(c), with l = log(sigma / 20 HU) (the last channel of the condition c)
    and S, T a small convolutional net of c whose last layer starts at zero. s is soft-clamped as in
    the couplings; the map starts as the identity (a = b = 0)."""

    def __init__(self, ch: int, cond_width: int, hidden: int, clamp: float) -> None:
        super().__init__()
        self.clamp = clamp
        self.a = nn.Parameter(torch.zeros(1, ch, 1, 1))
        self.b = nn.Parameter(torch.zeros(1, ch, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))
        self.net = nn.Sequential(
            nn.Conv2d(cond_width + 1, hidden, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(hidden, 2 * ch, 3, padding=1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _st(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self.net(c).chunk(2, dim=1)
        s = self.a + self.b * c[:, -1:] + s
        return self.clamp * torch.tanh(s / self.clamp), t

    @torch.no_grad()
    def initialize(self, z: torch.Tensor, c: torch.Tensor, pool: int = 4) -> None:
        """Data-dependent initialisation (as ActNorm's): per channel, the least-squares line
        log(local rms of z) = a + b l over ``pool`` x ``pool`` blocks of the first batch, so that h
        starts with about unit local spread everywhere. Maximum likelihood alone does not find it:
        the couplings can instead read the local spread off z itself, which fits the data as well
        but draws samples of one average spread (README, "Why a learned sampler does not vary")."""
        if z.shape[-1] < pool or z.shape[-2] < pool:
            self.initialized.fill_(1)
            return
        y = 0.5 * torch.log(F.avg_pool2d(z.double() ** 2, pool).clamp_min(1e-12))  # [B, C, h', w']
        lvl = F.avg_pool2d(c[:, -1:].double(), pool).expand_as(y)
        lm, ym = lvl.mean(dim=(0, 2, 3)), y.mean(dim=(0, 2, 3))
        dl, dy = lvl - lm.view(1, -1, 1, 1), y - ym.view(1, -1, 1, 1)
        var = (dl**2).mean(dim=(0, 2, 3))
        b = torch.where(
            var > 1e-6, (dl * dy).mean(dim=(0, 2, 3)) / var.clamp_min(1e-6), torch.zeros_like(var)
        )
        self.b.copy_(b.clamp(-self.clamp, self.clamp).view_as(self.b).to(self.b.dtype))
        self.a.copy_((ym - b * lm).view_as(self.a).to(self.a.dtype))
        self.initialized.fill_(1)

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z -> h and log|det dh/dz| per sample."""
        if self.training and int(self.initialized) == 0:
            self.initialize(z, c)
        s, t = self._st(c)
        s = s.expand_as(z)
        return (z - t) * (-s).exp(), -s.sum(dim=(1, 2, 3))

    def reverse(self, h: torch.Tensor, c: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """``c``: the condition, or ``prepare(c)`` (s and t depend on the condition only)."""
        s, t = c if isinstance(c, tuple) else self._st(c)
        return h * s.exp() + t

    def prepare(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._st(c)


class OutputCalibration(nn.Module):
    """The last, per-channel affine map of the flow: v = (u - m) exp(-s) per latent pixel, with m and
    s linear in the covariates k = [1, l, b, b l]: l = log(sigma / 20 HU) the noise level map and b a
    smooth body indicator of f(x) (sigmoid((f(x) - BODY_HU) / 100 HU)), both at the latent's
    resolution. It starts as the identity and trains with the rest; ``fit`` then sets it to its
    maximum-likelihood value for many training latents with everything before it frozen (a closed
    problem of 8 numbers per channel), which the joint stochastic training leaves unfinished: the
    bundled cINNs' v had a spread of 0.85 in head soft tissue and 1.15 in abdominal soft tissue,
    and about 1 in the air around both (README, "The output calibration")."""

    BODY_HU = -500.0
    N_COVARIATES = 4

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.m = nn.Parameter(torch.zeros(self.N_COVARIATES, ch))
        self.s = nn.Parameter(torch.zeros(self.N_COVARIATES, ch))

    def covariates(self, level: torch.Tensor, fx: torch.Tensor) -> torch.Tensor:
        """[B, 4, h, w] from the noise level map [B, 1, h, w] and f(x) [B, 1, H, W] (normalised)."""
        body = torch.sigmoid((normalized_to_hu(fx) - self.BODY_HU) / 100.0)
        k = fx.shape[-1] // level.shape[-1]
        if k > 1:
            body = F.avg_pool2d(body, k)
        body = body.expand(level.shape[0], 1, *level.shape[2:])
        return torch.cat([torch.ones_like(level), level, body, body * level], 1)

    def prepare(self, cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(m, s) maps [B, C, h, w] for the covariates ``cov``."""
        m = torch.einsum("bkhw,kc->bchw", cov, self.m.to(cov.dtype))
        s = torch.einsum("bkhw,kc->bchw", cov, self.s.to(cov.dtype))
        return m, s

    def forward(self, u: torch.Tensor, cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, s = self.prepare(cov)
        return (u - m) * (-s).exp(), -s.sum(dim=(1, 2, 3))

    def reverse(self, v: torch.Tensor, terms: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        m, s = terms
        return v * s.exp() + m

    @torch.no_grad()
    def fit(self, u: torch.Tensor, cov: torch.Tensor, iterations: int = 200, scale: bool = True) -> dict:
        """Maximum likelihood of (m, s) for flow outputs ``u`` [N, C, h, w] before this layer and
        their covariates ``cov`` [N, 4, h, w]: minimises the mean over elements of
        0.5 ((u - m) exp(-s))^2 + s (L-BFGS in float64, from the current values). ``scale`` False:
        m only, s kept (the scale a power-guarded fine-tune set). Returns the Gaussian NLL per
        element before and after."""
        c = u.shape[1]
        uu = u.double().transpose(0, 1).reshape(c, -1)  # [C, P]
        kk = cov.double().transpose(0, 1).reshape(cov.shape[1], -1)  # [4, P]
        params = torch.stack([self.m.detach(), self.s.detach()]).double().requires_grad_(True)
        fixed_s = self.s.detach().double()

        def nll(p: torch.Tensor) -> torch.Tensor:
            m, s = p[0].T @ kk, (p[1] if scale else fixed_s).T @ kk  # [C, P]
            return (0.5 * ((uu - m) * (-s).exp()) ** 2 + s).mean() + 0.5 * math.log(2 * math.pi)

        before = float(nll(params))
        opt = torch.optim.LBFGS([params], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            with torch.enable_grad():
                loss = nll(params)
                loss.backward()
            return loss

        opt.step(closure)
        self.m.copy_(params[0].detach().to(self.m.dtype))
        if scale:
            self.s.copy_(params[1].detach().to(self.s.dtype))
        return {"nll_before": before, "nll_after": float(nll(params))}


NOISE_REFERENCE_HU = 20.0


def noise_level_map(noise_hu: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """log(sigma / 20 HU) shaped as ``like`` [B, 1, H, W]: ``noise_hu`` is one level per sample
    (a constant map) or local maps [B, 1, H', W'] (HU), average-pooled to ``like``'s size."""
    n = torch.as_tensor(noise_hu, dtype=like.dtype, device=like.device)
    if n.dim() == 4:
        if n.shape[-2:] != like.shape[-2:]:
            k = n.shape[-1] // like.shape[-1]
            if k < 1 or n.shape[-2:] != (like.shape[-2] * k, like.shape[-1] * k):
                raise ValueError(f"noise map {tuple(n.shape[-2:])} does not fit {tuple(like.shape[-2:])}")
            n = F.avg_pool2d(n, k)
    else:
        n = n.reshape(-1, 1, 1, 1)
    return torch.log(n.clamp_min(0.1) / NOISE_REFERENCE_HU).expand(like.shape[0], 1, *like.shape[2:])


class ConditionEmbedder(nn.Module):
    """[f(x), noise level of x] -> features at the latent's resolution (computed once per slice)."""

    def __init__(self, cfg: SpatialCINNConfig) -> None:
        super().__init__()
        w = cfg.cond_width
        layers: list[nn.Module] = [nn.Conv2d(1 + int(cfg.noise_condition), w, 3, padding=1), nn.SiLU()]
        for _ in range(cfg.down):
            layers += [nn.Conv2d(w, w, 3, stride=2, padding=1), nn.SiLU()]
        layers += [ResBlock(w), ResBlock(w)]
        self.net = nn.Sequential(*layers)

    def forward(self, fx: torch.Tensor) -> torch.Tensor:
        return self.net(fx)


@dataclass
class FlowCondition:
    """The inverse flow's per-slice terms: each coupling's first-conv share and the noise scale's
    (s, t)."""

    couplings: list[PreparedTerm]
    scale: tuple[torch.Tensor, torch.Tensor] | None
    calibration: tuple[torch.Tensor, torch.Tensor] | None = None


class SpatialCINN(nn.Module):
    """v = t(z | f(x)) with v ~ N(0, I); z and v are latent maps [B, C, h, w], f(x) [B, 1, H, W]."""

    def __init__(self, cfg: SpatialCINNConfig | None = None, seed: int | None = 0) -> None:
        super().__init__()
        self.cfg = cfg or SpatialCINNConfig()
        gen = None if seed is None else torch.Generator().manual_seed(seed)
        self.steps = nn.ModuleList([SpatialFlowStep(self.cfg, gen) for _ in range(self.cfg.n_flows)])
        self.embedder = ConditionEmbedder(self.cfg)
        cfg = self.cfg
        self.scale = (
            NoiseScale(cfg.latent_ch, cfg.cond_width, cfg.hidden, cfg.clamp) if cfg.noise_scale else None
        )
        self.calibration = OutputCalibration(cfg.latent_ch) if cfg.calibration else None

    def embed(self, fx: torch.Tensor, noise_hu: torch.Tensor | float | None = None) -> torch.Tensor:
        """Condition features; ``noise_hu`` (per sample, HU) is required when the model was trained
        with the noise-level condition. With the noise scale, the last channel is the noise level
        log(sigma / 20 HU) at the latent's resolution."""
        if self.cfg.noise_condition:
            if noise_hu is None:
                raise ValueError("this cINN is conditioned on the noise level of x: give noise_hu")
            fx = torch.cat([fx, noise_level_map(noise_hu, fx)], 1)
        c = self.embedder(fx)
        if self.scale is not None:
            c = torch.cat([c, noise_level_map(noise_hu, c)], 1)
        return c

    def forward(
        self,
        z: torch.Tensor,
        fx: torch.Tensor,
        embedding: torch.Tensor | None = None,
        noise_hu: torch.Tensor | float | None = None,
    ):
        """(v, exact log|det dv/dz|) per sample."""
        u, logdet, level = self.forward_uncalibrated(z, fx, embedding, noise_hu)
        if self.calibration is None:
            return u, logdet
        v, ld = self.calibration(u, self.calibration.covariates(level, fx))
        return v, logdet + ld

    def forward_uncalibrated(
        self,
        z: torch.Tensor,
        fx: torch.Tensor,
        embedding: torch.Tensor | None = None,
        noise_hu: torch.Tensor | float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The flow up to the output calibration: (u, log-det, the noise level map or None)."""
        c = self.embed(fx, noise_hu) if embedding is None else embedding
        logdet = z.new_zeros(z.shape[0])
        level = None
        if self.scale is not None:
            level = c[:, -1:]
            z, logdet = self.scale(z, c)
            c = c[:, : self.cfg.cond_width]
        for step in self.steps:
            z, ld = step(z, c)
            logdet = logdet + ld
        return z, logdet, level

    def reverse(
        self,
        v: torch.Tensor,
        fx: torch.Tensor | None = None,
        embedding: torch.Tensor | None = None,
        noise_hu: torch.Tensor | float | None = None,
        condition: FlowCondition | None = None,
    ) -> torch.Tensor:
        """z = t^-1(v | f(x)); ``condition`` (from ``prepare``, one slice) replaces fx / embedding
        and broadcasts over the batch of v: the condition's terms are then computed once per slice."""
        if condition is not None:
            if self.calibration is not None:
                v = self.calibration.reverse(v, condition.calibration)
            for step, term in zip(reversed(self.steps), reversed(condition.couplings)):
                v = step.reverse(v, term)
            return v if self.scale is None else self.scale.reverse(v, condition.scale)
        c = self.embed(fx, noise_hu) if embedding is None else embedding
        if self.calibration is not None:
            if fx is None:
                raise ValueError("this cINN's output calibration reads f(x): give fx")
            v = self.calibration.reverse(v, self._calibration_terms(c, fx))
        for step in reversed(self.steps):
            v = step.reverse(v, c[:, : self.cfg.cond_width])
        return v if self.scale is None else self.scale.reverse(v, c)

    def prepare(
        self,
        fx: torch.Tensor,
        noise_hu: torch.Tensor | float | None = None,
        embedding: torch.Tensor | None = None,
    ) -> FlowCondition:
        """Everything the inverse flow computes from the condition alone, for one slice (batch 1)."""
        c = self.embed(fx, noise_hu) if embedding is None else embedding
        cf = c[:, : self.cfg.cond_width]
        return FlowCondition(
            [step.coupling.prepare(cf) for step in self.steps],
            None if self.scale is None else self.scale.prepare(c),
            None if self.calibration is None else self._calibration_terms(c, fx),
        )

    def _calibration_terms(self, c: torch.Tensor, fx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The output calibration's (m, s) for the condition ``c`` (its last channel is the noise
        level map, as the noise scale reads it) and f(x)."""
        return self.calibration.prepare(self.calibration.covariates(c[:, -1:], fx))

    def nll(
        self, z: torch.Tensor, fx: torch.Tensor, noise_hu: torch.Tensor | float | None = None
    ) -> torch.Tensor:
        """Mean over the batch of (0.5 |v|^2 - log det) per latent element."""
        v, logdet = self(z, fx, noise_hu=noise_hu)
        return 0.5 * (v**2).mean() - logdet.mean() / v[0].numel()
