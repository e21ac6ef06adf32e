"""The conditional invertible network ("ConditionalTransformer"): v = t(z | f(x)).

``CINNConfig.paper()`` equals the published ``<denoiser>-cinn.pt`` layout (12 blocks on z = 256,
coupling MLPs of width 1024, a conv embedder for 128x128 conditions). ``CINNConfig.compact()`` is
the same structure for the compact cVAE.

Forward and reverse compute exactly what the published code computes, so published checkpoints
sample the same. One difference, in the log-determinant only: the published code returns 0 for the
invertible leaky ReLU; here it is the exact sum of log(slope) over the negative inputs, so the
likelihood is exact (training differs slightly; sampling does not).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .layers import MLP, ActNorm, ConvHead


@dataclass(frozen=True)
class CINNConfig:
    z_dim: int = 256  # 'in_channels'
    hidden: int = 1024  # 'mid_channels'
    hidden_depth: int = 2
    n_flows: int = 12
    cond_size: int = 128  # spatial size of the condition f(x)
    cond_ch: int = 1
    n_down: int = 4
    embedder_width: int = 64
    slope: float = 0.9  # invertible leaky ReLU
    name: str = field(default="paper", compare=False)

    @staticmethod
    def paper() -> CINNConfig:
        return CINNConfig()

    @staticmethod
    def compact() -> CINNConfig:
        return CINNConfig(
            z_dim=64, hidden=128, hidden_depth=1, n_flows=12, cond_size=64, embedder_width=16, name="compact"
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> CINNConfig:
        return CINNConfig(**d)


class InvLeakyReLU(nn.Module):
    def __init__(self, slope: float) -> None:
        super().__init__()
        self.slope = slope

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        neg = x < 0
        scale = torch.where(neg, torch.full_like(x, self.slope), torch.ones_like(x))
        return x * scale, neg.sum(dim=1).to(x.dtype) * math.log(self.slope)

    def reverse(self, h: torch.Tensor) -> torch.Tensor:
        scale = torch.where(h < 0, torch.full_like(h, self.slope), torch.ones_like(h))
        return h / scale


class ConditionalDoubleCoupling(nn.Module):
    """Two affine couplings with a half swap between them: b' = b * exp(s) + t."""

    def __init__(self, dim: int, cond_dim: int, hidden: int, depth: int) -> None:
        super().__init__()
        half = dim // 2
        self.s = nn.ModuleList([MLP(half + cond_dim, depth, hidden, half, tanh=True) for _ in range(2)])
        self.t = nn.ModuleList([MLP(half + cond_dim, depth, hidden, half) for _ in range(2)])

    @staticmethod
    def _swap(x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return torch.cat([b, a], dim=1)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for i in range(2):
            if i == 1:
                x = self._swap(x)
            keep, change = x.chunk(2, dim=1)
            inp = torch.cat([keep, c], dim=1)
            s = self.s[i](inp)
            x = torch.cat([keep, change * s.exp() + self.t[i](inp)], dim=1)
            logdet = logdet + s.sum(dim=1)
        return x, logdet

    def reverse(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        for i in (1, 0):
            keep, change = x.chunk(2, dim=1)
            inp = torch.cat([keep, c], dim=1)
            x = torch.cat([keep, (change - self.t[i](inp)) * self.s[i](inp).neg().exp()], dim=1)
            if i == 1:
                x = self._swap(x)
        return x


class Shuffle(nn.Module):
    def __init__(self, dim: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        idx = torch.randperm(dim, generator=generator)
        self.register_buffer("forward_shuffle_idx", idx)
        self.register_buffer("backward_shuffle_idx", torch.argsort(idx))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.forward_shuffle_idx]

    def reverse(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.backward_shuffle_idx]


class FlowBlock(nn.Module):
    """ActNorm -> invertible leaky ReLU -> double coupling -> fixed permutation."""

    def __init__(self, cfg: CINNConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.norm_layer = ActNorm(cfg.z_dim, logdet=True)
        self.activation = InvLeakyReLU(cfg.slope)
        self.coupling = ConditionalDoubleCoupling(cfg.z_dim, cfg.z_dim, cfg.hidden, cfg.hidden_depth)
        self.shuffle = Shuffle(cfg.z_dim, generator)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, ld0 = self.norm_layer(x)
        h, ld1 = self.activation(h)
        h, ld2 = self.coupling(h, c)
        return self.shuffle(h), ld0 + ld1 + ld2

    def reverse(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.coupling.reverse(self.shuffle.reverse(h), c)
        return self.norm_layer.reverse(self.activation.reverse(h))


class ConditionalFlow(nn.Module):
    def __init__(self, cfg: CINNConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.sub_layers = nn.ModuleList([FlowBlock(cfg, generator) for _ in range(cfg.n_flows)])

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = z.new_zeros(z.shape[0])
        for block in self.sub_layers:
            z, ld = block(z, c)
            logdet = logdet + ld
        return z, logdet

    def reverse(self, v: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        for block in reversed(self.sub_layers):
            v = block.reverse(v, c)
        return v


class FeatureLayer(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.sub_layers = nn.ModuleList(
            [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), ActNorm(cout), nn.LeakyReLU(0.2)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.sub_layers:
            x = layer(x)
        return x


class Embedder(nn.Module):
    """f(x) -> n_down x (conv4x4 stride 2, ActNorm, LeakyReLU) -> conv over the rest -> z_dim."""

    def __init__(self, cfg: CINNConfig) -> None:
        super().__init__()
        w = cfg.embedder_width
        chans = [cfg.cond_ch] + [w * min(2**s, 16) for s in range(cfg.n_down)]
        self.feature_layers = nn.ModuleList([FeatureLayer(a, b) for a, b in zip(chans[:-1], chans[1:])])
        bottleneck = cfg.cond_size // 2**cfg.n_down
        if bottleneck * 2**cfg.n_down != cfg.cond_size:
            raise ValueError("cond_size must be divisible by 2**n_down")
        self.dense_encode = ConvHead(chans[-1], cfg.z_dim, bottleneck)

    def forward(self, fx: torch.Tensor) -> torch.Tensor:
        h = fx
        for layer in self.feature_layers:
            h = layer(h)
        return self.dense_encode(h).flatten(1)


class ConditionalINN(nn.Module):
    """v = t(z | f(x)) with v ~ N(0, I); z and v are (B, z_dim), f(x) is (B, 1, S, S)."""

    def __init__(self, cfg: CINNConfig | None = None, seed: int | None = 0) -> None:
        super().__init__()
        self.cfg = cfg or CINNConfig.paper()
        gen = None if seed is None else torch.Generator().manual_seed(seed)
        self.flow = ConditionalFlow(self.cfg, gen)
        self.embedder = Embedder(self.cfg)

    def embed(self, fx: torch.Tensor) -> torch.Tensor:
        return self.embedder(fx)

    def forward(
        self, z: torch.Tensor, fx: torch.Tensor, embedding: torch.Tensor | None = None, noise_hu=None
    ):
        """(v, exact log|det dv/dz|) per sample. ``noise_hu`` is accepted for a common interface with
        the spatial cINN and not used (the published layout is conditioned on f(x) alone)."""
        c = self.embed(fx) if embedding is None else embedding
        return self.flow(z.flatten(1), c)

    def reverse(
        self, v: torch.Tensor, fx: torch.Tensor, embedding: torch.Tensor | None = None, noise_hu=None
    ) -> torch.Tensor:
        c = self.embed(fx) if embedding is None else embedding
        return self.flow.reverse(v.flatten(1), c)

    def nll(self, z: torch.Tensor, fx: torch.Tensor) -> torch.Tensor:
        """Training loss: mean(0.5 |v|^2) - mean(log det), per dimension as in the paper."""
        v, logdet = self(z, fx)
        return 0.5 * (v**2).mean() - logdet.mean() / v.shape[1]
