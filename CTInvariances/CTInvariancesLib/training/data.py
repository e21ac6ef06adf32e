"""Training batches: random aligned patches from the simulated pairs (``..datasets``)."""

from __future__ import annotations

import numpy as np
import torch

from ..datasets import (  # noqa: F401 - re-exported for the trainers and older imports
    SOURCES,
    DataSource,
    cache_dir,
    make_pairs,
    require_shared_data,
    shared_data_dir,
)
from ..errors import CTInvariancesError
from ..normalization import hu_to_normalized

# patches tried per patch wanted before the data are declared all air (a normal CT slice: a few)
AIR_TRIES = 1000


class PatchSampler:
    """Random aligned patches from slice pairs, skipping patches that are mostly air."""

    def __init__(
        self, ld: np.ndarray, fd: np.ndarray, patch: int, seed: int = 0, noise_hu: np.ndarray | None = None
    ) -> None:
        """``noise_hu``: optional noise level of ``ld``, one per slice [N] or local maps [N, H, W];
        ``last_noise_hu`` then holds the levels [B] or the maps' crops [B, 1, p, p] of the last batch."""
        self.noise_hu = None if noise_hu is None else torch.as_tensor(noise_hu, dtype=torch.float32)
        self.last_noise_hu: torch.Tensor | None = None
        self.ld = torch.from_numpy(hu_to_normalized(ld.astype(np.float32)))
        self.fd = torch.from_numpy(hu_to_normalized(fd.astype(np.float32)))
        self.patch = patch
        h, w = self.ld.shape[-2:]
        if patch > min(h, w):
            raise CTInvariancesError(
                f"the training slices ({h} x {w} pixels) are smaller than the training patch ({patch} px): "
                "train on larger slices or with a smaller --patch"
            )
        self.rng = np.random.default_rng(seed)
        self._air = float(hu_to_normalized(np.float32(-900.0)))

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        n, h, w = self.ld.shape
        xs, ys, picked, maps = [], [], [], []
        local = self.noise_hu is not None and self.noise_hu.dim() == 3
        tries = 0
        while len(xs) < size:
            tries += 1
            if not xs and tries > AIR_TRIES * size:  # never ends otherwise
                raise CTInvariancesError(
                    f"none of {tries - 1} random {self.patch} px patches of the training slices holds "
                    "anatomy (their full-dose mean is below -900 HU: air): train on slices of a patient"
                )
            i = int(self.rng.integers(n))
            r = int(self.rng.integers(h - self.patch + 1))
            c = int(self.rng.integers(w - self.patch + 1))
            y = self.fd[i, r : r + self.patch, c : c + self.patch]
            if float(y.mean()) < self._air:
                continue
            x = self.ld[i, r : r + self.patch, c : c + self.patch]
            nm = self.noise_hu[i, r : r + self.patch, c : c + self.patch] if local else None
            if self.rng.random() < 0.5:  # flips: anatomy is roughly left-right symmetric
                x, y = x.flip(-1), y.flip(-1)
                nm = None if nm is None else nm.flip(-1)
            maps.append(nm)
            xs.append(x)
            ys.append(y)
            picked.append(i)
        if local:
            self.last_noise_hu = torch.stack(maps)[:, None]
        elif self.noise_hu is not None:
            self.last_noise_hu = self.noise_hu[picked]
        return torch.stack(xs)[:, None], torch.stack(ys)[:, None]

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state
