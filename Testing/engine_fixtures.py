"""Small synthetic data and tiny engine configurations for fast, real training in tests."""

from __future__ import annotations

import numpy as np
import torch

from CTInvariancesLib.invariance.cinn import CINNConfig
from CTInvariancesLib.invariance.cvae import CVAEConfig
from CTInvariancesLib.invariance.spatial import SpatialCINNConfig, SpatialCVAEConfig

TINY_CVAE = CVAEConfig(
    patch=32,
    z_dim=32,
    encoder_width=8,
    encoder_blocks=(1, 1),
    decoder_chn=8,
    z_chunk=4,
    class_dim=32,
    class_emb=8,
    name="tiny",
)
TINY_CINN = CINNConfig(
    z_dim=32, hidden=64, hidden_depth=1, n_flows=4, cond_size=32, n_down=3, embedder_width=8, name="tiny"
)
REGION = (slice(10, 22), slice(10, 22))  # what the planted denoiser ignores
CLIP = 0.3  # the clipping denoiser's threshold (normalised units; the blobs reach up to about 1)
TINY_SPATIAL_CVAE = SpatialCVAEConfig(latent_ch=2, down=1, width=8, latent_width=16, blocks=1, patch=32,
                                      name="tiny-spatial")
TINY_SPATIAL_CINN = SpatialCINNConfig(latent_ch=2, down=1, n_flows=4, hidden=16, cond_width=8,
                                      noise_condition=False, noise_scale=False, noise_map=False,
                                      calibration=False,
                                      name="tiny-spatial")


def blobs(n: int, rng: np.random.Generator, size: int = 32) -> torch.Tensor:
    """Images of three Gaussian blobs of random position, size and sign plus a little noise
    (normalised units)."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    out = np.zeros((n, size, size), np.float32)
    for i in range(n):
        for _ in range(3):
            cy, cx = rng.uniform(0, size, 2)
            s = rng.uniform(2.5, 6.0)
            out[i] += rng.uniform(-1, 1) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    out += 0.03 * rng.standard_normal(out.shape).astype(np.float32)
    return torch.from_numpy(out)[:, None]


def ignore_region(x: torch.Tensor) -> torch.Tensor:
    """A 'denoiser' that returns its input except for a fixed value in REGION."""
    y = x.clone()
    y[..., REGION[0], REGION[1]] = 0.0
    return y


def clip_bright(x: torch.Tensor) -> torch.Tensor:
    """A 'denoiser' that clips everything above CLIP: what the bright structures hold is lost."""
    return x.clamp(max=CLIP)


def identity(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


class SyntheticSource:
    """(x, f(x)) batches for the trainers, resumable like PatchSampler."""

    description = "synthetic Gaussian blobs (test)"

    def __init__(self, f, seed: int = 0) -> None:
        self.f = f
        self.rng = np.random.default_rng(seed)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = blobs(n, self.rng)
        return x, self.f(x)

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state
