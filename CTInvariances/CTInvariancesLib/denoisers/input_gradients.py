"""Faster gradients to the input through a denoiser's single-channel first convolution (CPU).

The consistency step spends its time in J^T r, a backward pass down to the input image. A CT
denoiser's first layer maps one channel to many; oneDNN computes that layer's input gradient (many
channels back to one) several times slower than the layer's forward pass. The same gradient is one
matrix product (kernel taps x channels by channels x pixels) and k*k shifted additions: measured
on four 284 x 512 crops (2-core CPU), 0.11 s instead of 0.52 s for cnn10's 9 x 9, 1 -> 64 layer,
0.025 s instead of 0.14 s for RED-CNN's 5 x 5, 1 -> 32. :func:`fast_input_gradients` gives every
eligible ``nn.Conv2d`` of a module this backward for the length of a ``with`` block; it agrees with
autograd to float round-off (Testing/test_denoisers.py). It applies only on the CPU, only where
the weights need no gradient, and only to one input channel, stride 1, dilation 1, one group and
zero padding; anything else runs the layer's own code.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


class _SingleChannelConv(torch.autograd.Function):
    """conv2d(x, weight, bias) whose backward returns the input gradient only (weights frozen)."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        ctx.save_for_backward(weight)
        ctx.padding = padding
        ctx.in_size = tuple(x.shape[-2:])
        return F.conv2d(x, weight, bias, 1, padding)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return input_gradient(grad, weight, ctx.padding, ctx.in_size), None, None, None


def input_gradient(
    grad: torch.Tensor, weight: torch.Tensor, padding: tuple[int, int], in_size: tuple[int, int]
) -> torch.Tensor:
    """d/dx of sum(grad * conv2d(x, weight, padding=padding)) for x [B, 1, *in_size], stride 1."""
    b, c, ho, wo = grad.shape
    kh, kw = weight.shape[-2:]
    ph, pw = padding
    h, w = in_size
    taps_by_channel = weight.reshape(c, kh * kw).t().to(grad.dtype)  # [taps, C]
    out = grad.new_zeros(b, h + 2 * ph, w + 2 * pw)
    for i in range(b):  # one image at a time: the tap planes of a whole batch would be k*k images each
        # [C, pixels]: a free view when grad is channels-last (as the denoisers' layers are)
        pixels = grad[i].permute(1, 2, 0).reshape(-1, c).t()
        taps = (taps_by_channel @ pixels).view(kh * kw, ho, wo)
        for t in range(kh * kw):
            dy, dx = divmod(t, kw)
            out[i, dy : dy + ho, dx : dx + wo] += taps[t]
    return out[:, ph : ph + h, pw : pw + w].unsqueeze(1)


def _eligible(m: nn.Module) -> bool:
    return (
        isinstance(m, nn.Conv2d)
        and type(m).forward is nn.Conv2d.forward  # a subclass with its own forward keeps it
        and m.in_channels == 1
        and m.groups == 1
        and tuple(m.stride) == (1, 1)
        and tuple(m.dilation) == (1, 1)
        and m.padding_mode == "zeros"
        and not isinstance(m.padding, str)
    )


def _forward(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    frozen = not self.weight.requires_grad and (self.bias is None or not self.bias.requires_grad)
    if x.requires_grad and frozen and x.device.type == "cpu":
        return _SingleChannelConv.apply(x, self.weight, self.bias, tuple(self.padding))
    return nn.Conv2d.forward(self, x)


@contextlib.contextmanager
def fast_input_gradients(module) -> Iterator[int]:
    """Within the block, the eligible single-input-channel convolutions of ``module`` (an
    ``nn.Module``; anything else is left alone) use the fast input gradient; yields how many. The
    layers compute the same outputs. Afterwards the module is as it was (it can be scripted or
    saved; a layer already sped up by an enclosing block is left to that block)."""
    installed = []
    if isinstance(module, nn.Module):
        for m in module.modules():
            if _eligible(m) and "forward" not in vars(m):
                # a bound method (not a closure): a deep copy of the module binds it to the copy
                m.forward = types.MethodType(_forward, m)
                installed.append(m)
    try:
        yield len(installed)
    finally:
        for m in installed:
            vars(m).pop("forward", None)
