"""CNN-10 (Chen et al. 2017): three convolutions, same padding."""

from __future__ import annotations

from torch import nn


class CNN10(nn.Module):
    """conv9x9 1->64, ReLU, conv3x3 64->32, ReLU, conv5x5 32->1 (state_dict keys ``layers.N``)."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        half = max(1, width // 2)
        self.layers = nn.Sequential(
            nn.Conv2d(1, width, 9, padding=4),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, half, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(half, 1, 5, padding=2),
        )

    def forward(self, x):
        return self.layers(x)
