"""WGAN-VGG generator (Yang et al. 2018): eight conv3x3 layers with ReLU, no residual."""

from __future__ import annotations

from torch import nn


class WGANVGGGenerator(nn.Module):
    """conv3x3 1->32, six conv3x3 32->32, conv3x3 32->1, ReLU between (keys ``net.N``)
    and none after the last layer, as in ldct-benchmark."""

    def __init__(self, width: int = 32, n_layers: int = 8) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch_in = 1
        for i in range(n_layers):
            ch_out = 1 if i == n_layers - 1 else width
            layers.append(nn.Conv2d(ch_in, ch_out, 3, padding=1))
            if i < n_layers - 1:  # no activation after the output layer
                layers.append(nn.ReLU(inplace=True))
            ch_in = ch_out
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)
