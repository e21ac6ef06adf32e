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


class _Raises(nn.Module):
    def forward(self, x):
        raise KeyError("layer 'decoder.3' not found")


def raises() -> nn.Module:
    """A user network with a bug: every call raises."""
    return _Raises()


class _ThreeChannels(nn.Module):
    def forward(self, x):
        return x.repeat(1, 3, 1, 1)


def three_channels() -> nn.Module:
    """A network written for RGB: returns three channels."""
    return _ThreeChannels()


class _HalfSize(nn.Module):
    def forward(self, x):
        return x[..., ::2, ::2]


def half_size() -> nn.Module:
    """A network that downsamples: the output is not the input's size."""
    return _HalfSize()


class _RefusesPadding(nn.Module):
    """Identity in HU that fails if it is shown anything far below air (a padding value such as
    -1500 or -3024 HU is not a material; the tool must hand air instead)."""

    def forward(self, x):
        if float(x.min()) < -1100.0:
            raise ValueError(f"saw {float(x.min()):.0f} HU: padding was not replaced by air")
        return x


def refuses_padding() -> nn.Module:
    return _RefusesPadding()
