"""Small building blocks shared by the cVAE and the cINN.

Parameter names and layouts follow the published ldct-invariances checkpoints (which inherit them
from CompVis' invariances code), so that those files load with ``strict=True``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _l2normalize(v: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    return v / (v.norm() + eps)


class ActNorm(nn.Module):
    """Per-channel affine map ``scale * (x + loc)``, initialised from the first training batch.

    Stores ``loc``/``scale`` as [1, C, 1, 1] and a uint8 ``initialized`` flag, as the published
    checkpoints do. Unlike the original, data-dependent initialisation only happens in training
    mode: a model in eval mode never overwrites its parameters from the data it is applied to
    (the original does, and gives NaN on a single sample).
    """

    def __init__(self, num_features: int, logdet: bool = False) -> None:
        super().__init__()
        self.logdet = logdet
        self.loc = nn.Parameter(torch.zeros(1, num_features, 1, 1))
        self.scale = nn.Parameter(torch.ones(1, num_features, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        flat = x.transpose(0, 1).reshape(x.shape[1], -1)
        self.loc.copy_(-flat.mean(1).view(1, -1, 1, 1))
        self.scale.copy_(1.0 / (flat.std(1).view(1, -1, 1, 1) + 1e-6))
        self.initialized.fill_(1)

    def forward(self, x: torch.Tensor):
        flat = x.dim() == 2
        if flat:
            x = x[:, :, None, None]
        if self.training and int(self.initialized) == 0:
            self.initialize(x)
        h = self.scale * (x + self.loc)
        if flat:
            h = h.flatten(1)
        if self.logdet:
            ld = x.shape[2] * x.shape[3] * torch.log(torch.abs(self.scale)).sum()
            return h, ld.expand(x.shape[0])
        return h

    def reverse(self, h: torch.Tensor) -> torch.Tensor:
        flat = h.dim() == 2
        if flat:
            h = h[:, :, None, None]
        x = h / self.scale - self.loc
        return x.flatten(1) if flat else x


class SpectralNorm(nn.Module):
    """Spectral normalisation in the layout of the published decoder: the wrapped module stores
    ``weight_bar`` (raw), ``weight_u`` and ``weight_v`` (frozen, shape [out]); every forward pass
    divides by sigma from one power-iteration step started at the stored u. As in the original,
    u is never written back, so the same stored u gives the same output every time."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        w = module.weight
        height = w.shape[0]
        u = nn.Parameter(_l2normalize(w.data.new_empty(height).normal_()), requires_grad=False)
        v = nn.Parameter(_l2normalize(w.data.new_empty(height).normal_()), requires_grad=False)
        del module._parameters["weight"]
        module.register_parameter("weight_u", u)
        module.register_parameter("weight_v", v)
        module.register_parameter("weight_bar", nn.Parameter(w.data))

    def normalized_weight(self) -> torch.Tensor:
        w = self.module.weight_bar
        mat = w.view(w.shape[0], -1)
        u = self.module.weight_u
        v = _l2normalize(mat.t() @ u)
        u = _l2normalize(mat @ v)
        sigma = u.dot(mat @ v)
        return w / sigma

    def forward(self, *args):
        # functional call: never mutates the wrapped module, so DDP/autograd see only weight_bar
        w = self.normalized_weight()
        m = self.module
        if isinstance(m, nn.Conv2d):
            return F.conv2d(args[0], w, m.bias, m.stride, m.padding, m.dilation, m.groups)
        if isinstance(m, nn.Linear):
            return F.linear(args[0], w, m.bias)
        raise TypeError(f"SpectralNorm does not support {type(m).__name__}")


class MLP(nn.Module):
    """Linear -> LeakyReLU -> (depth x [Linear -> LeakyReLU]) -> Linear [-> Tanh] as ``main``."""

    def __init__(
        self, dim: int, depth: int, hidden: int, out_dim: int, tanh: bool = False, slope: float = 0.01
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(dim, hidden), nn.LeakyReLU(slope)]
        for _ in range(depth):
            layers += [nn.Linear(hidden, hidden), nn.LeakyReLU(slope)]
        layers.append(nn.Linear(hidden, out_dim))
        if tanh:
            layers.append(nn.Tanh())
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


class ConvHead(nn.Module):
    """A single conv in ``sub_layers`` (the published 'DenseEncoderLayer')."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int) -> None:
        super().__init__()
        self.sub_layers = nn.ModuleList([nn.Conv2d(in_channels, out_channels, kernel, 1, 0, bias=True)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sub_layers[0](x)
