"""Training the four denoisers on simulated low-dose / full-dose patches (resumable).

Recipes (all in ldct-benchmark's normalised units). The pixel loss is MSE for the first
``relative_from`` fraction of the steps, then the noise-normalised MSE: each patch's squared error
divided by that of its low-dose input (``relative_mse``). Plain MSE learns fast but is dominated by
the noisiest scans (here the abdomen; the head series carries a quarter of its noise variance) and
leaves quiet scans nearly untouched; normalising weights every patch by how much noise there is to
remove, which is what a per-slice PSNR gain measures. (Normalised from the start, training was
several times slower to get going.)

- cnn10, redcnn: MSE then noise-normalised MSE, Adam.
- wganvgg: WGAN-GP with the WGAN-VGG critic layout plus a perceptual term. ImageNet VGG-19 weights
  cannot be downloaded here, so the perceptual term is replaced by the pixel loss + L1 of Sobel
  gradients (a structure term that needs no pretrained network); the adversarial weight is small.
- dugan: RED-CNN generator, least-squares adversarial losses from two U-Net critics (image domain
  and Sobel-gradient domain, each with a global and a per-pixel output) plus pixel and gradient
  L1/MSE terms, as in DU-GAN; CutMix regularisation of the critics is left out.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..denoisers import build_denoiser
from ..denoisers.dugan import UNetCritic, sobel_gradients
from ..denoisers.redcnn import REDCNN
from ..weights import save_weights_with_card
from .data import PatchSampler, make_pairs
from .distributed import hardware_description


@dataclass
class DenoiserTrainingConfig:
    arch: str
    out: str
    width: int | None = None
    steps: int = 2000
    batch_size: int = 16
    patch: int = 64
    lr: float = 1e-3
    dose_fraction: float = 0.25
    realisations: int = 3
    seed: int = 0
    checkpoint_every: int = 200
    adv_weight: float = 1e-3
    critic_width: int = 16
    identity_init: bool = True  # start as the identity map (see identity_init)
    relative_from: float = 0.6  # fraction of steps after which the pixel loss is relative_mse
    init: str | None = None  # start from these weights (fine-tuning) instead of identity_init
    extra: dict = field(default_factory=dict)


class WGANCritic(nn.Module):
    """WGAN-VGG critic layout (six conv3x3 + LeakyReLU, two linear), width-scalable."""

    def __init__(self, patch: int, width: int = 64) -> None:
        super().__init__()
        chans = [
            (1, width, 1),
            (width, width, 2),
            (width, 2 * width, 1),
            (2 * width, 2 * width, 2),
            (2 * width, 4 * width, 1),
            (4 * width, 4 * width, 2),
        ]
        layers: list[nn.Module] = []
        n = patch
        for cin, cout, stride in chans:
            layers += [nn.Conv2d(cin, cout, 3, stride, 0), nn.LeakyReLU()]
            n = (n - 3) // stride + 1
        self.net = nn.Sequential(*layers)
        self.fc1 = nn.Linear(4 * width * n * n, 256)
        self.fc2 = nn.Linear(256, 1)

    def forward(self, x):
        return self.fc2(F.leaky_relu(self.fc1(self.net(x).flatten(1))))


@torch.no_grad()
def identity_init(model: nn.Module, offset: float = 2.0, others: float = 0.01) -> bool:
    """Start a denoiser as the identity map, so that training learns denoising as a departure
    from the input instead of first learning to reproduce the image: what makes these networks
    trainable in minutes on a CPU. The architecture (and state_dict) is unchanged.

    RED-CNN / DU-GAN: the last transposed conv is zeroed, leaving the input->output shortcut.
    Plain conv stacks (cnn10, wganvgg): channel 0 of every layer carries the input through (a
    centred delta kernel; the first bias adds ``offset`` so that the ReLUs pass any normalised CT
    value, the last subtracts it) and the output layer's other inputs are scaled by ``others``.
    Returns False (changing nothing) for anything else.
    """
    if isinstance(model, REDCNN):
        nn.init.zeros_(model.tconv5.weight)
        nn.init.zeros_(model.tconv5.bias)
        return True
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if len(convs) < 2 or any(isinstance(m, nn.ConvTranspose2d) for m in model.modules()):
        return False
    for i, conv in enumerate(convs):
        kh, kw = conv.kernel_size
        conv.weight[0].zero_()
        conv.weight[0, 0, kh // 2, kw // 2] = 1.0
        if i == len(convs) - 1:
            conv.weight[0, 1:] *= others
            conv.bias[0] = -offset
        else:
            conv.bias[0] = offset if i == 0 else 0.0
    return True


def pixel_loss(output, target, noisy, relative: bool) -> torch.Tensor:
    return relative_mse(output, target, noisy) if relative else F.mse_loss(output, target)


def relative_mse(output: torch.Tensor, target: torch.Tensor, noisy: torch.Tensor) -> torch.Tensor:
    """Noise-normalised MSE: each patch's MSE(output, target) divided by its MSE(noisy, target),
    times the batch mean of the latter, so the loss keeps the scale of MSE (switching from MSE
    does not upset Adam's moment estimates)."""
    err = ((output - target) ** 2).mean(dim=(1, 2, 3))
    ref = ((noisy - target) ** 2).mean(dim=(1, 2, 3)).clamp(min=1e-12).detach()
    return (err / ref).mean() * ref.mean()


def _gradient_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(sobel_gradients(a), sobel_gradients(b))


class DenoiserTrainer:
    """One training run; ``run()`` resumes from ``out/checkpoint.pt`` when present."""

    def __init__(self, cfg: DenoiserTrainingConfig, device: str = "cpu") -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        torch.manual_seed(cfg.seed)
        kw = {} if cfg.width is None else {"width": cfg.width}
        self.model = build_denoiser(cfg.arch, **kw)
        self.init_sha256 = None
        self.init_card: dict = {}
        if cfg.init:
            self.init_sha256 = self._load_init(cfg.init)
        self.identity_initialised = not cfg.init and cfg.identity_init and identity_init(self.model)
        self.model.to(self.device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
        self.critics: list[nn.Module] = []
        if cfg.arch == "wganvgg":
            self.critics = [WGANCritic(cfg.patch, cfg.critic_width).to(self.device)]
        elif cfg.arch == "dugan":
            self.critics = [UNetCritic(1, cfg.critic_width).to(self.device) for _ in range(2)]
        self.critic_opts = [
            torch.optim.Adam(c.parameters(), lr=cfg.lr, betas=(0.5, 0.9)) for c in self.critics
        ]
        self.step = 0
        self.elapsed = 0.0
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out / "log.jsonl"

    def _load_init(self, path: str) -> str:
        """Load starting weights (our .safetensors with card, or a published .pt); their hash."""
        from ..denoisers import load_denoiser

        den = load_denoiser(path, arch=self.cfg.arch)
        try:
            self.model.load_state_dict(den.module.state_dict())
        except RuntimeError as exc:
            raise ValueError(f"{path}: weights do not fit {self.cfg.arch} of this width: {exc}") from None
        self.init_card = den.card
        return den.sha256

    # --- checkpoints -------------------------------------------------------------------------
    def _ckpt_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def save_checkpoint(self, sampler: PatchSampler) -> None:
        state = {
            "step": self.step,
            "elapsed": self.elapsed,
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "critics": [c.state_dict() for c in self.critics],
            "critic_opts": [o.state_dict() for o in self.critic_opts],
            "sampler": json.dumps(sampler.state()),
            "torch_rng": torch.get_rng_state(),
            "config": json.dumps(asdict(self.cfg)),
        }
        tmp = self._ckpt_path().with_suffix(".partial")
        torch.save(state, tmp)
        os.replace(tmp, self._ckpt_path())

    def try_resume(self, sampler: PatchSampler) -> bool:
        path = self._ckpt_path()
        if not path.exists():
            return False
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        for c, s in zip(self.critics, state["critics"]):
            c.load_state_dict(s)
        for o, s in zip(self.critic_opts, state["critic_opts"]):
            o.load_state_dict(s)
        sampler.set_state(json.loads(state["sampler"]))
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        self.elapsed = float(state["elapsed"])
        return True

    # --- steps -------------------------------------------------------------------------------
    def _relative(self) -> bool:
        return self.step >= int(self.cfg.relative_from * self.cfg.steps)

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        arch = self.cfg.arch
        if arch in ("cnn10", "redcnn"):
            out = self.model(x)
            loss = pixel_loss(out, y, x, self._relative())
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            return _scalars(loss=loss, mse=F.mse_loss(out, y))
        if arch == "wganvgg":
            return self._wgan_step(x, y)
        return self._dugan_step(x, y)

    def _wgan_step(self, x, y) -> dict[str, float]:
        critic, copt = self.critics[0], self.critic_opts[0]
        with torch.no_grad():
            fake = self.model(x)
        d_loss = critic(fake).mean() - critic(y).mean()
        a = torch.rand(y.shape[0], 1, 1, 1, device=y.device)
        interp = (a * y + (1 - a) * fake).requires_grad_(True)
        grads = torch.autograd.grad(critic(interp).sum(), interp, create_graph=True)[0]
        gp = 10.0 * ((grads.flatten(1).norm(dim=1) - 1) ** 2).mean()
        copt.zero_grad(set_to_none=True)
        (d_loss + gp).backward()
        copt.step()
        fake = self.model(x)
        pixel = pixel_loss(fake, y, x, self._relative())
        structure = _gradient_loss(fake, y)
        adv = -critic(fake).mean()
        loss = pixel + 0.1 * structure + self.cfg.adv_weight * adv
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return _scalars(pixel=pixel, mse=F.mse_loss(fake, y), grad_l1=structure, adv=adv, critic=d_loss)

    def _dugan_step(self, x, y) -> dict[str, float]:
        # (critic, its optimiser, the domain it judges): image and gradient magnitude
        domains = list(zip(self.critics, self.critic_opts, (_identity, _gradient_magnitude)))
        with torch.no_grad():
            fake = self.model(x)
        d_total = 0.0
        for critic, opt, domain in domains:
            d_loss = _lsgan_loss(critic(domain(y)), 1.0) + _lsgan_loss(critic(domain(fake)), 0.0)
            opt.zero_grad(set_to_none=True)
            d_loss.backward()
            opt.step()
            d_total += float(d_loss.detach())
        fake = self.model(x)
        adv = sum(_lsgan_loss(critic(domain(fake)), 1.0) for critic, _, domain in domains)
        pixel = pixel_loss(fake, y, x, self._relative())
        grad = _gradient_loss(fake, y)
        loss = pixel + 0.1 * grad + self.cfg.adv_weight * adv
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return _scalars(pixel=pixel, mse=F.mse_loss(fake, y), grad_l1=grad, adv=adv, critic=d_total)

    # --- main loop ---------------------------------------------------------------------------
    def run(
        self,
        pairs: dict[str, np.ndarray] | None = None,
        progress: bool = True,
        stop_at: int | None = None,
    ) -> Path | None:
        """Train to ``cfg.steps`` (resuming from the last checkpoint) and export the weights.

        ``stop_at`` ends this invocation after that step with a checkpoint but no export, as an
        interruption would; a later ``run()`` continues exactly where it stopped.
        """
        from tqdm import tqdm

        cfg = self.cfg
        if pairs is None:
            pairs = make_pairs("train", cfg.dose_fraction, cfg.realisations, cfg.seed)
        sampler = PatchSampler(pairs["ld"], pairs["fd"], cfg.patch, seed=cfg.seed)
        resumed = self.try_resume(sampler)
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            desc=f"train {cfg.arch}",
            disable=not progress,
            dynamic_ncols=True,
        )
        if resumed:
            bar.write(f"resumed from step {self.step}")
        self.model.train()
        t0 = time.perf_counter()
        base_elapsed = self.elapsed
        running: dict[str, float] = {}
        end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
        while self.step < end:
            lr = cfg.lr * (0.1 if self.step >= int(0.8 * cfg.steps) else 1.0)  # late decay
            for group in self.opt.param_groups:
                group["lr"] = lr
            x, y = sampler.batch(cfg.batch_size)
            losses = self._train_step(x.to(self.device), y.to(self.device))
            self.step += 1
            for k, v in losses.items():
                running[k] = 0.98 * running.get(k, v) + 0.02 * v
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in running.items()})
            if self.step % cfg.checkpoint_every == 0 or self.step in (end, cfg.steps):
                self.elapsed = base_elapsed + time.perf_counter() - t0
                with open(self.log_path, "a") as f:
                    f.write(
                        json.dumps(
                            {
                                "step": self.step,
                                "elapsed_s": round(self.elapsed, 1),
                                **{k: round(v, 6) for k, v in running.items()},
                            }
                        )
                        + "\n"
                    )
                self.save_checkpoint(sampler)
        bar.close()
        if self.step < cfg.steps:
            return None
        self.model.eval()
        return self.export(pairs)

    def export(self, pairs: dict[str, np.ndarray]) -> Path:
        cfg = self.cfg
        width = cfg.width if cfg.width is not None else None
        card = {
            "name": cfg.arch,
            "arch": cfg.arch,
            "kwargs": {} if width is None else {"width": width},
            "num_parameters": sum(p.numel() for p in self.model.parameters()),
            "input_convention": "normalized",
            "normalization": "ldct-benchmark meanstd: (HU + 1024 - 481.454) / 502.185",
            "training": {
                "data": "real full-dose CT from ../shared/data (abdomen-siemens-20 k 0-13, "
                "head-ge-28 k 0-19); low dose simulated by projection-domain noise insertion",
                "n_training_slices": int(len(set(str(n).split("#")[0] for n in pairs["names"]))),
                "noise_realisations_per_slice": cfg.realisations,
                "dose_fraction": cfg.dose_fraction,
                "steps": self.step,
                "batch_size": cfg.batch_size,
                "patch": cfg.patch,
                "lr": cfg.lr,
                "seed": cfg.seed,
                "identity_init": self.identity_initialised,
                "init": None
                if not cfg.init
                else {
                    "from": cfg.init,
                    "sha256": self.init_sha256,
                    "training": self.init_card.get("training"),  # the earlier stage(s)
                },
                "pixel_loss": f"MSE for steps < {int(cfg.relative_from * cfg.steps)}, then "
                "noise-normalised MSE (per-patch MSE / MSE of the low-dose input)",
                "recipe": __doc__.split("Recipes")[1].strip().split("\n\n")[0] if __doc__ else "",
                "train_time_s": round(self.elapsed, 1),
                "hardware": hardware_description(self.device),
                "scale": "demo-scale: smaller and shorter than the published ldct-benchmark models",
            },
        }
        return save_weights_with_card(self.model.state_dict(), self.out / f"{cfg.arch}.safetensors", card)


def _scalars(**values) -> dict[str, float]:
    return {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in values.items()}


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def _gradient_magnitude(t: torch.Tensor) -> torch.Tensor:
    g = sobel_gradients(t)
    return torch.sqrt(g[:, :1] ** 2 + g[:, 1:2] ** 2 + 1e-8)


def _lsgan_loss(outputs: tuple[torch.Tensor, torch.Tensor], target: float) -> torch.Tensor:
    """Least-squares GAN loss on the critic's global and per-pixel outputs."""
    return sum(F.mse_loss(o, torch.full_like(o, target)) for o in outputs)
