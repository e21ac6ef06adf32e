"""DU-GAN (Huang et al. 2022): the generator is a RED-CNN; training adds two U-Net critics.

Only the generator is a denoiser. The critics (image domain and gradient domain) are used by the
training recipe in :mod:`CTInvariancesLib.training.denoisers`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .redcnn import REDCNN


class DUGANGenerator(REDCNN):
    """Same layers and state_dict as RED-CNN (the published dugan.pt holds a RED-CNN)."""


class UNetCritic(nn.Module):
    """Small U-Net discriminator with a global (encoder) and a per-pixel (decoder) output."""

    def __init__(self, in_ch: int = 1, width: int = 32) -> None:
        super().__init__()
        w = width
        self.enc1 = nn.Conv2d(in_ch, w, 3, 2, 1)
        self.enc2 = nn.Conv2d(w, 2 * w, 3, 2, 1)
        self.enc3 = nn.Conv2d(2 * w, 4 * w, 3, 2, 1)
        self.global_head = nn.Linear(4 * w, 1)
        self.dec3 = nn.Conv2d(4 * w, 2 * w, 3, 1, 1)
        self.dec2 = nn.Conv2d(4 * w, w, 3, 1, 1)
        self.dec1 = nn.Conv2d(2 * w, w, 3, 1, 1)
        self.pixel_head = nn.Conv2d(w, 1, 1)

    def forward(self, x):
        e1 = F.leaky_relu(self.enc1(x), 0.2)
        e2 = F.leaky_relu(self.enc2(e1), 0.2)
        e3 = F.leaky_relu(self.enc3(e2), 0.2)
        glob = self.global_head(e3.mean(dim=(2, 3)))
        d3 = F.interpolate(F.leaky_relu(self.dec3(e3), 0.2), size=e2.shape[-2:])
        d2 = F.interpolate(F.leaky_relu(self.dec2(torch.cat([d3, e2], 1)), 0.2), size=e1.shape[-2:])
        d1 = F.interpolate(F.leaky_relu(self.dec1(torch.cat([d2, e1], 1)), 0.2), size=x.shape[-2:])
        return glob, self.pixel_head(d1)


def sobel_gradients(x: torch.Tensor) -> torch.Tensor:
    """Horizontal and vertical Sobel responses (the gradient domain of the second critic)."""
    k = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], device=x.device)
    kernel = torch.stack([k, k.t()])[:, None].to(x.dtype)
    return F.conv2d(x, kernel, padding=1)
