"""Faster single-channel layers on the CPU: a denoiser's first layer's input gradient, its last
layer's forward pass.

The consistency step spends its time in forward passes and in J^T r, a backward pass down to the
input image. A CT denoiser maps one channel to many in its first layer and many to one in its last;
oneDNN is slow exactly where a convolution sums many channels into one: the first layer's input
gradient and the last layer's output (measured on four 284 x 512 crops, 2-core CPU: 0.52 s against
0.12 s for its forward pass, cnn10's 9 x 9, 1 -> 64 layer). Such a sum is one matrix product
(kernel taps x channels by channels x pixels) and k*k shifted additions: 0.11 s for that gradient,
0.042 s instead of 0.071 s for cnn10's last layer (5 x 5, 32 -> 1), 0.09 s instead of 0.20 s for
RED-CNN's (a transposed 5 x 5, 96 -> 1). :func:`fast_single_channel_layers` gives the eligible
layers of a module these computations for the length of a ``with`` block; they agree with oneDNN's
to float round-off (Testing/test_denoisers.py). They apply only on the CPU, only where the weights
need no gradient, and only to ``nn.Conv2d`` / ``nn.ConvTranspose2d`` with stride 1, dilation 1,
one group and zero padding; anything else runs the layer's own code.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


def _tap_planes(image: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """[kh*kw, H, W]: per kernel tap, the channels of ``image`` [C, H, W] weighted by that tap of
    ``weight`` [C, 1, kh, kw] or [1, C, kh, kw] and summed (one matrix product)."""
    c, h, w = image.shape
    kh, kw = weight.shape[-2:]
    taps_by_channel = weight.reshape(c, kh * kw).t().to(image.dtype)  # [taps, C]
    # [C, pixels]: a free view when the image is channels-last (as the denoisers' layers are)
    pixels = image.permute(1, 2, 0).reshape(-1, c).t()
    return (taps_by_channel @ pixels).view(kh * kw, h, w)


def sum_of_shifted_taps(
    grad: torch.Tensor, weight: torch.Tensor, padding: tuple[int, int], in_size: tuple[int, int]
) -> torch.Tensor:
    """[B, 1, *in_size]: the input gradient of conv2d(x, weight, padding) (stride 1) for output
    gradient ``grad`` [B, C, h', w'], weight [C, 1, kh, kw]; equally the output of a transposed
    convolution of ``grad`` with that weight."""
    b, _, ho, wo = grad.shape
    kh, kw = weight.shape[-2:]
    ph, pw = padding
    h, w = in_size
    out = grad.new_zeros(b, h + 2 * ph, w + 2 * pw)
    for i in range(b):  # one image at a time: the tap planes of a whole batch would be k*k images each
        taps = _tap_planes(grad[i], weight)
        for t in range(kh * kw):
            dy, dx = divmod(t, kw)
            out[i, dy : dy + ho, dx : dx + wo] += taps[t]
    return out[:, ph : ph + h, pw : pw + w].unsqueeze(1)


def single_output_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: tuple[int, int]
) -> torch.Tensor:
    """conv2d(x, weight, bias, padding=padding) for weight [1, C, kh, kw] (stride 1)."""
    b, _, h, w = x.shape
    kh, kw = weight.shape[-2:]
    ph, pw = padding
    ho, wo = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
    out = x.new_empty(b, 1, ho, wo)
    for i in range(b):
        taps = _tap_planes(x[i], weight)
        taps = F.pad(taps, (pw, pw, ph, ph))  # the zero padding, after the product: k*k planes, not C
        acc = taps[0, :ho, :wo].clone()
        for t in range(1, kh * kw):
            dy, dx = divmod(t, kw)
            acc += taps[t, dy : dy + ho, dx : dx + wo]
        out[i, 0] = acc if bias is None else acc + bias.to(x.dtype)
    return out


class _FirstLayer(torch.autograd.Function):
    """conv2d(x, weight, bias) from one channel; backward: the input gradient only (weights frozen)."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        ctx.save_for_backward(weight)
        ctx.padding = padding
        ctx.in_size = tuple(x.shape[-2:])
        return F.conv2d(x, weight, bias, 1, padding)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return sum_of_shifted_taps(grad, weight, ctx.padding, ctx.in_size), None, None, None


class _LastLayer(torch.autograd.Function):
    """A (transposed) convolution to one channel; backward: oneDNN's input gradient (fast here)."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding, transposed):
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.transposed = padding, transposed
        if transposed:
            kh, kw = weight.shape[-2:]
            size = (x.shape[-2] + kh - 1 - 2 * padding[0], x.shape[-1] + kw - 1 - 2 * padding[1])
            out = sum_of_shifted_taps(x, weight, padding, size)
            return out if bias is None else out + bias.to(x.dtype).view(1, 1, 1, 1)
        return single_output_conv(x, weight, bias, padding)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = torch.ops.aten.convolution_backward(
            grad, x, weight, None, [1, 1], list(ctx.padding), [1, 1], ctx.transposed, [0, 0], 1,
            [True, False, False],
        )[0]
        return grad_x, None, None, None, None


def _plain(m: nn.Module) -> bool:
    """stride 1, dilation 1, one group, zero padding given as numbers, the class's own forward."""
    return (
        isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))
        # a subclass with its own forward keeps it
        and type(m).forward in (nn.Conv2d.forward, nn.ConvTranspose2d.forward)
        and m.groups == 1
        and tuple(m.stride) == (1, 1)
        and tuple(m.dilation) == (1, 1)
        and m.padding_mode == "zeros"
        and not isinstance(m.padding, str)
        and tuple(getattr(m, "output_padding", (0, 0))) == (0, 0)
    )


def _first_layer(m: nn.Module) -> bool:
    return _plain(m) and type(m) is nn.Conv2d and m.in_channels == 1


def _last_layer(m: nn.Module) -> bool:
    return _plain(m) and m.out_channels == 1


def _forward(self: nn.Module, x: torch.Tensor, *args) -> torch.Tensor:
    frozen = not self.weight.requires_grad and (self.bias is None or not self.bias.requires_grad)
    if frozen and not args and x.device.type == "cpu" and x.dim() == 4:
        if self.out_channels == 1:
            transposed = isinstance(self, nn.ConvTranspose2d)
            return _LastLayer.apply(x, self.weight, self.bias, tuple(self.padding), transposed)
        if x.requires_grad:  # a first layer: only its backward is faster
            return _FirstLayer.apply(x, self.weight, self.bias, tuple(self.padding))
    return type(self).forward(self, x, *args)  # e.g. a transposed layer given its output size


@contextlib.contextmanager
def fast_single_channel_layers(module) -> Iterator[int]:
    """Within the block, the eligible single-channel layers of ``module`` (an ``nn.Module``;
    anything else is left alone) use the computations above; yields how many. The layers compute
    the same outputs. Afterwards the module is as it was (it can be scripted or saved; a layer
    already sped up by an enclosing block is left to that block)."""
    installed = []
    if isinstance(module, nn.Module):
        for m in module.modules():
            if (_first_layer(m) or _last_layer(m)) and "forward" not in vars(m):
                # a bound method (not a closure): a deep copy of the module binds it to the copy
                m.forward = types.MethodType(_forward, m)
                installed.append(m)
    try:
        yield len(installed)
    finally:
        for m in installed:
            vars(m).pop("forward", None)
