"""The conditional VAE ("BigAE"): a ResNet encoder on [x, f(x)] and a BigGAN decoder on f(x).

``CVAEConfig.paper()`` builds the published architecture (ResNet-50 encoder, BigGAN-128 decoder
with 96 base channels, z = 256); its state_dict names and shapes equal the published
``<denoiser>-vae.pt`` files exactly. ``CVAEConfig.compact()`` is the same structure scaled down to
64x64 patches, z = 64 and narrow layers, small enough to train on a CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .layers import MLP, ActNorm, ConvHead, SpectralNorm

LOGVAR_RANGE = (-30.0, 10.0)


@dataclass(frozen=True)
class CVAEConfig:
    patch: int = 128
    z_dim: int = 256
    encoder_width: int = 64  # ResNet stem channels (64 = ResNet-50)
    encoder_blocks: tuple[int, ...] = (3, 4, 6, 3)  # bottleneck blocks per stage (ResNet-50)
    decoder_chn: int = 96  # BigGAN base channels
    z_chunk: int = 20  # latent dimensions fed to each decoder block's conditional BN
    class_dim: int = 1000  # width of the softmax "class" embedding computed from z
    class_emb: int = 128  # its linear projection, fed to every block with the z chunk
    cond_ch: int = 1  # channels of the denoiser output used as condition
    in_ch: int = 2  # encoder input: [x, f(x)]
    out_ch: int = 1
    # compact only: the decoder's output is added to f(x) (x^ = f(x) + D(z, f(x))), so it starts
    # from the denoiser output and learns what f removed; no parameter changes. The paper's decoder
    # (False) must stay as published so that published checkpoints decode the same.
    residual: bool = False
    name: str = field(default="paper", compare=False)

    @staticmethod
    def paper() -> CVAEConfig:
        return CVAEConfig()

    @staticmethod
    def compact() -> CVAEConfig:
        return CVAEConfig(
            patch=64,
            z_dim=64,
            encoder_width=16,
            encoder_blocks=(1, 1, 1, 1),
            decoder_chn=16,
            z_chunk=8,
            class_dim=128,
            class_emb=32,
            residual=True,
            name="compact",
        )

    @property
    def n_blocks(self) -> int:
        n = (self.patch // 4).bit_length() - 1
        if 4 * 2**n != self.patch:
            raise ValueError(f"patch must be 4 * 2^n, got {self.patch}")
        return n

    def to_dict(self) -> dict:
        d = asdict(self)
        d["encoder_blocks"] = list(self.encoder_blocks)
        return d

    @staticmethod
    def from_dict(d: dict) -> CVAEConfig:
        d = dict(d)
        d["encoder_blocks"] = tuple(d["encoder_blocks"])
        return CVAEConfig(**d)


class DiagonalGaussian:
    """q(z | x, f(x)) from the encoder's 2 z_dim outputs (mean, clamped log-variance)."""

    def __init__(self, params: torch.Tensor) -> None:
        self._split(params.flatten(1))

    def _split(self, params: torch.Tensor) -> None:
        """Mean and log-variance: the two halves of dimension 1."""
        self.mean, logvar = params.chunk(2, dim=1)
        self.logvar = logvar.clamp(*LOGVAR_RANGE)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """A posterior sample; with a ``generator``, the noise is drawn on the generator's device (a
        CPU generator gives the same draws whether the model runs on the CPU or a GPU)."""
        device = self.mean.device if generator is None else generator.device
        eps = torch.randn(self.mean.shape, generator=generator, device=device, dtype=self.mean.dtype)
        return self.mean + self.std * eps.to(self.mean.device)

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per sample, summed over all latent dimensions."""
        return 0.5 * (self.mean**2 + self.std**2 - 1.0 - self.logvar).flatten(1).sum(dim=1)


# --- encoder: torchvision's ResNet layout (names match), written out so no torchvision is needed


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        skip = x if self.downsample is None else self.downsample(x)
        return self.relu(out + skip)


class ResNet(nn.Module):
    def __init__(self, in_ch: int, width: int, blocks: tuple[int, ...], out_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = width
        for i, n in enumerate(blocks):
            planes = width * 2**i
            layer = []
            for b in range(n):
                layer.append(Bottleneck(cin, planes, 2 if (b == 0 and i > 0) else 1))
                cin = planes * Bottleneck.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
        self.n_stages = len(blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = ConvHead(cin, out_dim, 1)  # the published 1x1 "DenseEncoderLayer"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.n_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(self.avgpool(x))


class ResnetEncoder(nn.Module):
    def __init__(self, cfg: CVAEConfig) -> None:
        super().__init__()
        self.model = ResNet(cfg.in_ch, cfg.encoder_width, cfg.encoder_blocks, 2 * cfg.z_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


# --- decoder: BigGAN generator with the denoiser output concatenated at every resolution


class ConditionalBatchNorm(nn.Module):
    def __init__(self, num_features: int, cond_dim: int) -> None:
        super().__init__()
        self.num_features = num_features
        self.bn = nn.BatchNorm2d(num_features, affine=False, eps=1e-4)
        self.gamma_embed = SpectralNorm(nn.Linear(cond_dim, num_features, bias=False))
        self.beta_embed = SpectralNorm(nn.Linear(cond_dim, num_features, bias=False))

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gamma = self.gamma_embed(cond)[:, :, None, None] + 1.0
        beta = self.beta_embed(cond)[:, :, None, None]
        return gamma * self.bn(x) + beta


def upsample2(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour 2x up-sampling, identical to F.interpolate(x, scale_factor=2) but several
    times faster on CPU (the interpolate kernel dominated decoding time)."""
    b, c, h, w = x.shape
    return x[:, :, :, None, :, None].expand(b, c, h, 2, w, 2).reshape(b, c, 2 * h, 2 * w)


class GBlock(nn.Module):
    """Up-sampling residual block with conditional BN (BigGAN)."""

    def __init__(self, cin: int, cout: int, cond_dim: int) -> None:
        super().__init__()
        self.conv0 = SpectralNorm(nn.Conv2d(cin, cout, 3, 1, 1))
        self.conv1 = SpectralNorm(nn.Conv2d(cout, cout, 3, 1, 1))
        self.conv_sc = SpectralNorm(nn.Conv2d(cin, cout, 1, 1, 0))
        self.HyperBN = ConditionalBatchNorm(cin, cond_dim)
        self.HyperBN_1 = ConditionalBatchNorm(cout, cond_dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.HyperBN(x, cond))
        h = self.conv0(upsample2(h))
        h = self.conv1(F.relu(self.HyperBN_1(h, cond)))
        return h + self.conv_sc(upsample2(x))


class SelfAttention(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.theta = SpectralNorm(nn.Conv2d(ch, ch // 8, 1, bias=False))
        self.phi = SpectralNorm(nn.Conv2d(ch, ch // 8, 1, bias=False))
        self.g = SpectralNorm(nn.Conv2d(ch, ch // 2, 1, bias=False))
        self.o_conv = SpectralNorm(nn.Conv2d(ch // 2, ch, 1, bias=False))
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = h * w
        theta = self.theta(x).view(b, -1, n).permute(0, 2, 1)
        phi = F.max_pool2d(self.phi(x), 2).view(b, -1, n // 4)
        attn = torch.softmax(torch.bmm(theta, phi), dim=-1)
        g = F.max_pool2d(self.g(x), 2).view(b, -1, n // 4)
        out = torch.bmm(g, attn.permute(0, 2, 1)).view(b, -1, h, w)
        return self.gamma * self.o_conv(out) + x


class Generator(nn.Module):
    def __init__(self, cfg: CVAEConfig) -> None:
        super().__init__()
        n, chn, cc = cfg.n_blocks, cfg.decoder_chn, cfg.cond_ch
        if not 1 <= n <= 5:
            raise ValueError("the decoder supports patches of 8 to 128 pixels")
        mult_out = [16, 8, 4, 2, 1][-n:]  # channel multipliers, the paper's for 128x128
        mult_in = [mult_out[0]] + mult_out[:-1]
        cond_dim = cfg.z_chunk + cfg.class_emb
        self.GBlock = nn.ModuleList(
            [GBlock(mi * chn + cc, mo * chn, cond_dim) for mi, mo in zip(mult_in, mult_out)]
        )
        self.first_view = mult_in[0] * chn
        first_split = cfg.z_dim - n * cfg.z_chunk
        if first_split <= 0:
            raise ValueError("z_dim too small for the number of decoder blocks and z_chunk")
        self.split_at = [first_split] + [cfg.z_chunk] * n
        self.sa_id = n - 1
        self.linear = nn.Linear(cfg.class_dim, cfg.class_emb, bias=False)
        self.G_linear = SpectralNorm(nn.Linear(first_split, 16 * self.first_view))
        self.attention = SelfAttention(mult_in[-1] * chn)
        self.ScaledCrossReplicaBN = ActNorm(chn)
        self.colorize = nn.Conv2d(chn + cc, cfg.out_ch, 3, padding=1)
        self.residual = cfg.residual

    def forward(self, z: torch.Tensor, class_vec: torch.Tensor, fx: torch.Tensor) -> torch.Tensor:
        codes = torch.split(z, self.split_at, 1)
        class_emb = self.linear(class_vec)
        h = self.G_linear(codes[0]).view(-1, 4, 4, self.first_view).permute(0, 3, 1, 2)
        n = len(self.GBlock)
        for i, (code, block) in enumerate(zip(codes[1:], self.GBlock)):
            if i == self.sa_id:
                h = self.attention(h)
            cond = torch.cat([code, class_emb], 1)
            h = torch.cat([h, F.interpolate(fx, scale_factor=1 / 2 ** (n - i))], 1)
            h = block(h, cond)
        h = self.ScaledCrossReplicaBN(h)
        out = self.colorize(torch.cat([h, fx], 1))
        return out + fx if self.residual else out


class ClassUp(nn.Module):
    """z -> MLP -> softmax 'class' vector (BigGAN's class input, computed from the latent)."""

    def __init__(self, z_dim: int, class_dim: int) -> None:
        super().__init__()
        self.main = MLP(z_dim, depth=2, hidden=2 * class_dim, out_dim=class_dim).main

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.main(z), dim=1)


class BigGANDecoder(nn.Module):
    def __init__(self, cfg: CVAEConfig) -> None:
        super().__init__()
        self.map_to_class_embedding = ClassUp(cfg.z_dim, cfg.class_dim)
        self.decoder = Generator(cfg)

    def forward(self, z: torch.Tensor, fx: torch.Tensor) -> torch.Tensor:
        return self.decoder(z, self.map_to_class_embedding(z), fx)


class ConditionalVAE(nn.Module):
    """E(x, f(x)) -> q(z), D(z, f(x)) -> x, on patches of ``cfg.patch`` pixels in normalised units."""

    def __init__(self, cfg: CVAEConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or CVAEConfig.paper()
        _ = self.cfg.n_blocks  # validates the patch size
        self.encoder = ResnetEncoder(self.cfg)
        self.decoder = BigGANDecoder(self.cfg)

    @property
    def z_dim(self) -> int:
        return self.cfg.z_dim

    @property
    def patch(self) -> int:
        return self.cfg.patch

    def encode(self, x: torch.Tensor, fx: torch.Tensor) -> DiagonalGaussian:
        return DiagonalGaussian(self.encoder(torch.cat([x, fx], 1)))

    def decode(self, z: torch.Tensor, fx: torch.Tensor) -> torch.Tensor:
        return self.decoder(z.flatten(1), fx)

    def forward(self, x: torch.Tensor, fx: torch.Tensor, generator: torch.Generator | None = None):
        """(KL per sample, reconstruction from a posterior sample, the posterior)."""
        q = self.encode(x, fx)
        return q.kl(), self.decode(q.sample(generator), fx), q
