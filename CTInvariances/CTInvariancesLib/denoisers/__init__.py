"""The four benchmark denoisers, weight loading, and slice-wise denoising in HU."""

from __future__ import annotations

from torch import nn

from .cnn10 import CNN10
from .dugan import DUGANGenerator
from .redcnn import REDCNN
from .wganvgg import WGANVGGGenerator

DENOISER_NAMES = ("cnn10", "redcnn", "wganvgg", "dugan")
_BUILDERS = {
    "cnn10": lambda width=64: CNN10(width=width),
    "redcnn": lambda width=96: REDCNN(out_ch=width),
    "wganvgg": lambda width=32: WGANVGGGenerator(width=width),
    "dugan": lambda width=96: DUGANGenerator(out_ch=width),
}
PUBLISHED_WIDTH = {"cnn10": 64, "redcnn": 96, "wganvgg": 32, "dugan": 96}


def build_denoiser(name: str, **kw) -> nn.Module:
    """The torch module for ``name``; default arguments give the published ldct-benchmark layout.

    ``width`` scales the channel count (for small CPU variants).
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown denoiser {name!r}; known: {', '.join(DENOISER_NAMES)}")
    if "out_ch" in kw:  # ldct-benchmark's own argument name for RED-CNN / DU-GAN
        kw["width"] = kw.pop("out_ch")
    return _BUILDERS[name](**kw)


from .loading import Denoiser, load_denoiser  # noqa: E402  (needs build_denoiser)

__all__ = ["DENOISER_NAMES", "Denoiser", "build_denoiser", "load_denoiser"]
