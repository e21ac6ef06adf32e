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
    """Adds 1 HU (in HU units) and fails if it is shown anything far below air (a padding value
    such as -1500 or -3024 HU is not a material; the tool must hand air instead)."""

    def forward(self, x):
        if float(x.min()) < -1100.0:
            raise ValueError(f"saw {float(x.min()):.0f} HU: padding was not replaced by air")
        return x + 1.0


def refuses_padding() -> nn.Module:
    return _RefusesPadding()


class _SlowIdentity(nn.Module):
    """Identity that takes a while per call: time to interrupt a run in the middle."""

    def forward(self, x):
        import time

        time.sleep(0.3)
        return x


def slow_identity() -> nn.Module:
    return _SlowIdentity()


class _MemoryError(nn.Module):
    def forward(self, x):
        raise MemoryError


def memory_error() -> nn.Module:
    """A network that runs the machine out of memory."""
    return _MemoryError()


class _NotDifferentiable(nn.Module):
    """Runs outside autograd (as a network wrapping numpy or a C library would)."""

    def forward(self, x):
        import torch

        return torch.from_numpy(x.detach().cpu().numpy().copy())


def not_differentiable() -> nn.Module:
    return _NotDifferentiable()


class _ReturnsTuple(nn.Module):
    def forward(self, x):
        return x, x.mean()


def returns_tuple() -> nn.Module:
    """A network that returns (image, extra) as some training code does."""
    return _ReturnsTuple()


class _Constant(nn.Module):
    def forward(self, x):
        return x * 0.0


def constant() -> nn.Module:
    """Ignores its input completely: every structure is invisible to it."""
    return _Constant()
