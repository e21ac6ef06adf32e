"""Custom denoiser factories used by the tests (``module:callable`` loading)."""

from torch import nn


class _Identity(nn.Module):
    def forward(self, x):
        return x


def identity() -> nn.Module:
    return _Identity()


def smoother() -> nn.Module:
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False, padding_mode="replicate")
    nn.init.constant_(conv.weight, 1.0 / 9.0)
    return conv


class _NaNOut(nn.Module):
    def forward(self, x):
        return x * float("nan")


def nan_out() -> nn.Module:
    """A broken network: every output is NaN."""
    return _NaNOut()
