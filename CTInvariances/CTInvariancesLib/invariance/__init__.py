"""The invariance engine: conditional VAE + conditional INN, sampling inputs a denoiser maps to the
same output."""

from .cinn import CINNConfig, ConditionalINN
from .consistency import ConsistencyResult, consistency_project
from .cvae import ConditionalVAE, CVAEConfig
from .models import import_published, load_cinn, load_cvae
from .sampler import InvarianceSampler, NoiseSampler, SliceSamples, std_map

__all__ = [
    "CINNConfig",
    "CVAEConfig",
    "ConditionalINN",
    "ConsistencyResult",
    "ConditionalVAE",
    "InvarianceSampler",
    "NoiseSampler",
    "SliceSamples",
    "consistency_project",
    "import_published",
    "load_cinn",
    "load_cvae",
    "std_map",
]
