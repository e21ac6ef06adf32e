"""RED-CNN (Chen et al. 2017): residual encoder-decoder, ldct-benchmark variant (no final ReLU)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class REDCNN(nn.Module):
    """Five valid conv5x5 + five transposed conv5x5 with shortcuts input->output,
    conv2->tconv3 and conv4->tconv1. ``out_ch`` is the width (96 published)."""

    def __init__(self, out_ch: int = 96) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, out_ch, 5)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 5)
        self.conv3 = nn.Conv2d(out_ch, out_ch, 5)
        self.conv4 = nn.Conv2d(out_ch, out_ch, 5)
        self.conv5 = nn.Conv2d(out_ch, out_ch, 5)
        self.tconv1 = nn.ConvTranspose2d(out_ch, out_ch, 5)
        self.tconv2 = nn.ConvTranspose2d(out_ch, out_ch, 5)
        self.tconv3 = nn.ConvTranspose2d(out_ch, out_ch, 5)
        self.tconv4 = nn.ConvTranspose2d(out_ch, out_ch, 5)
        self.tconv5 = nn.ConvTranspose2d(out_ch, 1, 5)

    def forward(self, x):
        residual_1 = x
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        residual_2 = out
        out = F.relu(self.conv3(out))
        out = F.relu(self.conv4(out))
        residual_3 = out
        out = F.relu(self.conv5(out))
        out = self.tconv1(out) + residual_3
        out = self.tconv2(F.relu(out))
        out = self.tconv3(F.relu(out)) + residual_2
        out = self.tconv4(F.relu(out))
        return self.tconv5(F.relu(out)) + residual_1
