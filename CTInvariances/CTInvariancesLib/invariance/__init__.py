"""The invariance engine: conditional VAE + conditional INN, sampling inputs a denoiser maps to the
same output."""

from .cinn import CINNConfig, ConditionalINN
from .cvae import ConditionalVAE, CVAEConfig
from .models import import_published, load_cinn, load_cvae
from .sampler import InvarianceSampler, SliceSamples, std_map

__all__ = [
    "CINNConfig",
    "CVAEConfig",
    "ConditionalINN",
    "ConditionalVAE",
    "InvarianceSampler",
    "SliceSamples",
    "import_published",
    "load_cinn",
    "load_cvae",
    "std_map",
]
