"""Training the invariance engine: the conditional VAE, then one cINN per denoiser (resumable,
single process or data-parallel under torchrun).

Data: low-dose patches x simulated from real full-dose CT (the denoisers' training slices, same
held-out slices), with conditions f(x) computed by the denoiser on the whole slice and cropped with
x, exactly as sampling does. A cVAE may be conditioned on several denoisers: each training patch
takes the output of one of them, so one cVAE serves them all (the paper trains one per denoiser).

cVAE loss (the paper's): l1_weight * sum|x^ - x| + kl_weight * KL (both summed per sample, mean over
the batch) + adv_weight * WGAN-GP loss of a critic that sees [image, f(x)]. The paper's VGG-16
perceptual term is left out: no ImageNet weights are available offline.
cINN loss: negative log-likelihood of v = t(z | f(x)) under N(0, I) with z a posterior sample
(not the mean), per latent dimension; the cVAE is frozen.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..denoisers import DENOISER_NAMES
from ..denoisers.loading import Denoiser, load_denoiser
from ..errors import CTInvariancesError
from ..invariance.cinn import CINNConfig
from ..invariance.cvae import CVAEConfig
from ..invariance.models import (
    build_cinn,
    build_cvae,
    cinn_config_for,
    cinn_fits,
    load_cvae,
    save_cinn,
    save_cvae,
)
from ..invariance.spatial import SpatialCINNConfig, SpatialCVAEConfig
from . import distributed as ddp
from .data import PatchSampler, cache_dir, make_pairs

MODEL_SIZES = ("spatial", "compact", "paper")


def model_configs(size: str) -> tuple[CVAEConfig | SpatialCVAEConfig, CINNConfig | SpatialCINNConfig]:
    if size == "paper":
        return CVAEConfig.paper(), CINNConfig.paper()
    if size == "compact":
        return CVAEConfig.compact(), CINNConfig.compact()
    if size == "spatial":
        return SpatialCVAEConfig(), SpatialCINNConfig()
    raise ValueError(f"unknown model size {size!r} ({', '.join(MODEL_SIZES)})")


# Loss weights and schedule per size where they differ from the paper's (CVAETrainingConfig's
# defaults). The spatial latent has about one element per pixel. Encoding a pixel's noise (std s in
# normalised units) saves about l1_weight * 0.8 s of L1 and costs about kl_weight * 3 nats of KL: with
# s = 0.01 (5 HU, the quieter held-out slices) the saving is ~1e-5, so kl_weight 1e-5 collapsed the
# posterior on a GPU run (KL 0.04 nats per 128 px crop: the latent carried nothing) and the paper's
# 0.575 does so by far. 1e-7 keeps encoding worthwhile down to ~0.1 HU of noise; the KL still keeps the
# codes at unit scale. No critic: with a complete latent, L1 alone reconstructs the texture.
SIZE_RECIPES = {
    "spatial": {"kl_weight": 1e-7, "adv_weight": 0.0, "lr": 4e-4, "batch_size": 16},
}


def recipe_value(size: str, name: str, given):
    """``given`` when set, else the size's recipe value, else CVAETrainingConfig's default."""
    if given is not None:
        return given
    if name in SIZE_RECIPES.get(size, {}):
        return SIZE_RECIPES[size][name]
    return CVAETrainingConfig.__dataclass_fields__[name].default


# --- data ------------------------------------------------------------------------------------


def training_slices(
    data: tuple[str, ...],
    dose_fraction: float,
    realisations: int,
    seed: int,
    max_memory_gb: float | None = None,
    companions: int = 0,
    patch: int = 64,
) -> dict:
    """Low-dose training slices (HU). ``data`` empty: the shared data's training split; else CT
    volumes (any readable input) taken as full dose, all of their slices used; their slices must be
    at least ``patch`` (and 64) pixels wide and high.

    User volumes must share one slice size (the patch sampler stacks them). Before any simulation
    the working memory (the volumes, their ``realisations`` low-dose copies and the simulator's) is
    checked against what is available or ``max_memory_gb``, counting ``companions`` more arrays of
    the low-dose slices' size that training will hold beside them (f(x) per denoiser, noise maps):
    the simulator then takes as many slices together as fit (same images, only slower), and the
    data are refused, with the numbers, when not even one slice fits."""
    if not data:
        return make_pairs("train", dose_fraction, realisations, seed)
    from ..files import check_memory, memory_limit_bytes
    from ..io import read_volume
    from ..lowdose import (
        LowDoseSettings,
        LowDoseSimulator,
        fitting_fbp_batch,
        simulation_memory_bytes,
        slice_seed,
    )

    volumes = []
    smallest = max(64, patch)
    for path in data:
        vol = read_volume(path)
        size = vol.array.shape[1:]
        if size[0] < smallest or size[1] < smallest:
            raise CTInvariancesError(
                f"its slices are {size[0]} x {size[1]} pixels; training needs at least "
                f"{smallest} x {smallest} (the training patch{'' if patch > 64 else ' and the minimum'})",
                path,
            )
        if volumes and size != volumes[0][1].array.shape[1:]:
            first = volumes[0][1].array.shape[1:]
            raise CTInvariancesError(
                f"its slices are {size[0]} x {size[1]} pixels but those of {volumes[0][0]} are "
                f"{first[0]} x {first[1]}: train on volumes of one slice size (resample the others)",
                path,
            )
        volumes.append((path, vol))
    shape = volumes[0][1].array.shape[1:]
    settings = LowDoseSettings(dose_fraction=dose_fraction)
    views = settings.geometry.n_views
    n_out = sum(len(vol.array) for _, vol in volumes) * realisations
    low_dose = 4.0 * n_out * shape[0] * shape[1]
    held = sum(4.0 * vol.array.size for _, vol in volumes) + low_dose  # while simulating
    limit = memory_limit_bytes(max_memory_gb)
    longest = max(len(vol.array) for _, vol in volumes)
    batch = fitting_fbp_batch(shape, views, longest, limit, held, realisations)
    # then the full-dose volumes go and the companions come
    simulating = held + simulation_memory_bytes(shape, views, batch * realisations)
    check_memory(
        max(simulating, low_dose * (1 + companions)),
        max_memory_gb,
        "train on fewer or smaller volumes, or fewer --realisations",
        what=f"training on this data ({len(volumes)} volume{'s' if len(volumes) > 1 else ''}, {n_out} "
        f"low-dose slices{' and their f(x)' if companions else ''})",
    )
    sim = LowDoseSimulator(settings, fbp_batch=batch)
    ld = np.empty((n_out, *shape), np.float32)
    names, pixels = [], []
    for i, (path, vol) in enumerate(volumes):
        pixel_mm = (vol.spacing[1], vol.spacing[0])
        # batch by batch into the preallocated array: no second copy of the volume's low-dose slices
        for at in range(0, len(vol.array), batch):
            block = vol.array[at : at + batch]
            seeds = [[slice_seed(seed + 1000 * r, k) for r in range(realisations)]
                     for k in range(at, at + len(block))]
            lows, _ = sim.simulate_slices(block, pixel_mm, seeds)
            ld[len(names) : len(names) + lows.shape[0] * realisations] = lows.reshape(-1, *shape)
            for k in range(at, at + len(block)):
                for r in range(realisations):
                    names.append(f"{Path(path).name}[{k}]#{r}")
                    pixels.append(pixel_mm)
        volumes[i] = (path, None)  # the full-dose volume is no longer needed
    return {"ld": ld, "names": np.array(names), "pixel_mm": np.array(pixels)}


def _cached_array(path: Path, compute) -> np.ndarray:
    """``compute()`` once, then read from ``path`` (an .npy in the cache)."""
    if path.exists():
        return np.load(path)
    out = compute()
    tmp = path.with_suffix(f".{os.getpid()}.partial.npy")  # several ranks may write at once
    np.save(tmp, out)
    os.replace(tmp, path)
    return out


def denoise_cached(den: Denoiser, ld_hu: np.ndarray, tag: str) -> np.ndarray:
    """f(x) for every slice, cached by the denoiser's hash and the data."""
    key = hashlib.sha256((str(den.sha256 or den.source) + tag).encode()).hexdigest()[:16]
    return _cached_array(
        cache_dir() / f"fx-{den.name}-{key}.npy", lambda: den.denoise_slices(ld_hu, batch_size=2)
    )


def noise_maps_cached(slices: dict, tag: str, device: str | torch.device = "cpu") -> np.ndarray:
    """The local noise map (``sampler.slice_noise_map``) of every training slice [N, H, W], cached by
    the data: what a cINN with ``noise_map`` is conditioned on."""
    from ..datasets import slices_pixel_mm
    from ..invariance.sampler import NOISE_MAP_REALISATIONS, NOISE_MAP_SEED, slice_noise_map

    recipe = f"{tag}|{NOISE_MAP_REALISATIONS}|{NOISE_MAP_SEED}|v1"
    path = cache_dir() / f"noisemap-{hashlib.sha256(recipe.encode()).hexdigest()[:16]}.npy"
    return _cached_array(
        path,
        lambda: np.stack(
            [slice_noise_map(x, p, device) for x, p in zip(slices["ld"], slices_pixel_mm(slices))]
        ),
    )


def conditioned_sampler(
    ld_hu: np.ndarray,
    fx_hu: list[np.ndarray],
    patch: int,
    seed: int,
    noise_levels: bool = False,
    noise_maps: np.ndarray | None = None,
) -> PatchSampler:
    """Random (x, f(x)) patch pairs in normalised units; each slice appears once per denoiser. With
    ``noise_levels`` the sampler also knows each slice's noise level (what the spatial cINN is
    conditioned on; only computed for a model that uses it), or its local ``noise_maps`` [N, H, W]."""
    from ..invariance.sampler import slice_noise_hu

    ld = np.concatenate([ld_hu] * len(fx_hu))
    fx = np.concatenate(fx_hu)
    if noise_maps is not None:
        noise = np.concatenate([noise_maps] * len(fx_hu))
    elif noise_levels:
        noise = np.array([slice_noise_hu(s) for s in ld_hu] * len(fx_hu), np.float32)
    else:
        noise = None
    return PatchSampler(ld, fx, patch, seed=seed, noise_hu=noise)


def _data_tag(names: np.ndarray) -> str:
    return hashlib.sha256("|".join(map(str, names)).encode()).hexdigest()


# --- critic ----------------------------------------------------------------------------------


class ConditionalCritic(nn.Module):
    """WGAN critic on [image, f(x)]: strided conv4x4 + InstanceNorm + LeakyReLU, then linear."""

    def __init__(self, patch: int, width: int = 32, in_ch: int = 2, max_width: int = 256) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c, n = in_ch, patch
        for i in range(int(np.log2(patch)) - 2):
            w = min(width * 2**i, max_width)
            layers += [nn.Conv2d(c, w, 4, 2, 1)]
            if i > 0:
                layers += [nn.InstanceNorm2d(w, affine=True)]
            layers += [nn.LeakyReLU(0.2)]
            c, n = w, n // 2
        self.net = nn.Sequential(*layers)
        self.fc = nn.Linear(c * n * n, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.net(x).flatten(1))


# --- shared loop pieces ----------------------------------------------------------------------


def _scalars(**values) -> dict[str, float]:
    return {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in values.items()}


def _atomic_save(state: dict, path: Path) -> None:
    tmp = path.with_suffix(".partial")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _state_digest(modules: dict[str, nn.Module]) -> str:
    """Hash of the trained parameters of every module (model and critic). Buffers are left out: batch
    statistics legitimately differ per rank until they are broadcast from rank 0."""
    h = hashlib.sha256()
    for name, module in sorted(modules.items()):
        for k, v in sorted(module.named_parameters()):
            h.update(f"{name}.{k}".encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def conditioned_data(
    cfg,
    denoisers: list[Denoiser],
    patch: int,
    rank: int,
    noise_levels: bool = False,
    noise_maps: bool = False,
    device: str | torch.device = "cpu",
) -> tuple[PatchSampler, int]:
    """(x, f(x)) patches from the configured CT data for these denoisers; each rank draws its own."""
    slices = training_slices(
        cfg.data,
        cfg.dose_fraction,
        cfg.realisations,
        cfg.seed,
        max_memory_gb=cfg.max_memory_gb,
        companions=len(denoisers) + int(noise_maps),
        patch=patch,
    )
    tag = _data_tag(slices["names"]) + f"{cfg.dose_fraction}-{cfg.realisations}-{cfg.seed}"
    fx = [denoise_cached(d, slices["ld"], tag) for d in denoisers]
    maps = noise_maps_cached(slices, tag, device) if noise_maps else None
    sampler = conditioned_sampler(slices["ld"], fx, patch, cfg.seed + 7919 * rank, noise_levels, maps)
    return sampler, len(slices["ld"])


class _Checkpointed:
    """Checkpoint save/resume shared by the trainers: ``_stateful()`` names what is saved."""

    out: Path
    ctx: ddp.DistContext
    device: torch.device
    cfg: object
    step: int
    elapsed: float

    def _stateful(self) -> dict:
        raise NotImplementedError

    def _ckpt(self) -> Path:
        return self.out / "checkpoint.pt"

    def _log_name(self) -> str:
        return "log.jsonl"

    def _extra_state(self) -> dict:
        return {}

    def save_checkpoint(self, sampler) -> None:
        if not self.ctx.is_main:
            return
        state = {k: m.state_dict() for k, m in self._stateful().items()}
        state.update(
            step=self.step,
            elapsed=self.elapsed,
            sampler=json.dumps(sampler.state()),
            torch_rng=torch.get_rng_state(),
            config=json.dumps(asdict(self.cfg)),
            **self._extra_state(),
        )
        _atomic_save(state, self._ckpt())

    def try_resume(self, sampler) -> bool:
        if not self._ckpt().exists():
            return False
        state = torch.load(self._ckpt(), map_location=self.device, weights_only=True)
        for k, m in self._stateful().items():
            m.load_state_dict(state[k])
        if self.ctx.is_main:  # other ranks keep their own patch streams
            sampler.set_state(json.loads(state["sampler"]))
            torch.set_rng_state(state["torch_rng"].cpu())  # loaded with map_location: may be on the GPU
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])
        self._resumed(state)
        return True

    def _resumed(self, state: dict) -> None:
        pass

    def _ddp_wrap(self) -> None:
        if self.ctx.enabled:
            self.ddp_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )

    def _steps(self, sampler, desc: str, progress: bool, stop_at: int | None, step_fn) -> bool:
        """Run ``step_fn(sampler) -> losses`` up to cfg.steps (or ``stop_at``) with checkpoints and the
        log; True when training is complete and this process should export."""
        cfg = self.cfg
        loop = _Loop(self.out, self.ctx, cfg.steps, desc, progress, cfg.checkpoint_every, self._log_name())
        loop.bar.n = self.step
        t0, base = time.perf_counter(), self.elapsed
        self.total = cfg.steps
        cap = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
        end = cap
        first, probes = self.step, (self.step + 20, self.step + 300)
        while self.step < end:
            lr = cfg.lr * (0.1 if self.step >= int(0.85 * self.total) else 1.0)  # late decay
            for g in self.opt.param_groups:
                g["lr"] = lr
            losses = step_fn(sampler)
            self.step += 1
            if cfg.time_limit_s and self.step in probes:
                # a time budget becomes a step count (same on every rank: rank 0's rate is broadcast),
                # so the schedule (late decay) and the export still happen
                spent = time.perf_counter() - t0
                rate = ddp.broadcast_float((self.step - first) / max(spent, 1e-6), self.ctx)
                fit = self.step + int(rate * max(cfg.time_limit_s - base - spent, 0.0))
                self.total = max(self.step, min(cfg.steps, fit))
                end = min(cap, self.total)  # a later probe may raise the estimate again
                loop.bar.total = self.total
            loop.update(self.step, losses)
            if loop.due(self.step, end):
                self.elapsed = base + time.perf_counter() - t0
                loop.log(self.step, self.elapsed)
                self.save_checkpoint(sampler)
        loop.close()
        if self.ctx.enabled:  # before the buffers are copied from rank 0: what each rank trained
            trained = {"model": self.model, **({"critic": self.critic} if hasattr(self, "critic") else {})}
            (self.out / f"rank{self.ctx.rank}.sha256").write_text(_state_digest(trained) + "\n")
        ddp.broadcast_buffers(self.model, self.ctx)
        return self.step >= self.total and self.ctx.is_main


class _Loop:
    """Checkpointed step loop with a progress bar and a JSON-lines log (rank 0 writes)."""

    def __init__(
        self,
        out: Path,
        ctx: ddp.DistContext,
        total: int,
        desc: str,
        progress: bool,
        checkpoint_every: int,
        log_name: str = "log.jsonl",
    ) -> None:
        self.out, self.ctx, self.total, self.every = out, ctx, total, checkpoint_every
        self.log_path = out / log_name
        self.running: dict[str, float] = {}
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, disable=not (progress and ctx.is_main), dynamic_ncols=True)

    def update(self, step: int, losses: dict[str, float]) -> None:
        for k, v in losses.items():
            self.running[k] = 0.98 * self.running.get(k, v) + 0.02 * v
        self.bar.n = step
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in self.running.items()}, refresh=False)
        self.bar.refresh()

    def due(self, step: int, end: int) -> bool:
        return step % self.every == 0 or step == end

    def log(self, step: int, elapsed: float) -> None:
        running = ddp.mean_scalars(self.running, self.ctx)
        if self.ctx.is_main:
            with open(self.log_path, "a") as f:
                f.write(
                    json.dumps(
                        {
                            "step": step,
                            "elapsed_s": round(elapsed, 1),
                            **{k: round(v, 6) for k, v in running.items()},
                        }
                    )
                    + "\n"
                )

    def close(self) -> None:
        self.bar.close()


# --- cVAE ------------------------------------------------------------------------------------


@dataclass
class CVAETrainingConfig:
    out: str
    size: str = "compact"
    denoisers: tuple[str, ...] = DENOISER_NAMES
    data: tuple[str, ...] = ()
    steps: int = 6000
    batch_size: int = 16
    lr: float = 1e-4  # the paper: 1e-5 at batch 64 for 75k iterations on GPUs
    critic_lr_factor: float = 4.0
    betas: tuple[float, float] = (0.5, 0.999)
    l1_weight: float = 0.0011852
    # summed squared error; 0 in every recipe. With L1 alone a tiny residual decoder can stay at the
    # saddle where it ignores z and the encoder has no reason to carry anything (its gradient is a
    # sign, uncorrelated with the missing content): seen on 32 px synthetic blobs, not on CT data
    l2_weight: float = 0.0
    kl_weight: float = 0.57504
    adv_weight: float = 1.0
    adv_start: int = 500  # steps of autoencoding before the adversarial term switches on
    gp_weight: float = 10.0
    critic_width: int = 32
    dose_fraction: float = 0.25
    realisations: int = 2
    max_memory_gb: float | None = None  # for simulating user --data (training_slices)
    seed: int = 0
    checkpoint_every: int = 200
    device: str = "auto"
    time_limit_s: float | None = None  # train for at most this long (steps scaled down to fit)
    model_config: CVAEConfig | SpatialCVAEConfig | None = None  # overrides ``size`` (custom sizes, tests)
    init: str | None = None  # start from this trained cVAE (same architecture; a fresh critic)


class CVAETrainer(_Checkpointed):
    """``source``: an object with ``batch(n) -> (x, f(x))`` (normalised, [n, 1, P, P]) and
    ``state()`` / ``set_state()``, replacing the CT data (synthetic data in tests)."""

    def __init__(self, cfg: CVAETrainingConfig, ctx: ddp.DistContext | None = None, source=None) -> None:
        self.cfg = cfg
        self.ctx = ctx or ddp.setup(cfg.device)
        self.device = self.ctx.device
        self.source = source
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.model_cfg = cfg.model_config or model_configs(cfg.size)[0]
        self.model = build_cvae(self.model_cfg).to(self.device)
        self.init_from = _warm_start_cvae(self.model, cfg.init) if cfg.init else None
        self.critic = ConditionalCritic(self.model_cfg.patch, cfg.critic_width).to(self.device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=cfg.betas)
        self.copt = torch.optim.Adam(
            self.critic.parameters(), lr=cfg.lr * cfg.critic_lr_factor, betas=cfg.betas
        )
        self.step = 0
        self.elapsed = 0.0
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.denoisers: list[Denoiser] = []
        self.ddp_model: nn.Module = self.model
        self.history: list[dict] = []  # one entry per invocation of run(): steps and loss weights

    def _prepare_data(self) -> PatchSampler:
        if self.source is not None:
            self.n_slices = 0
            return self.source
        self.denoisers = [load_denoiser(d, device=self.device) for d in self.cfg.denoisers]
        patch = self.model_cfg.patch
        sampler, self.n_slices = conditioned_data(self.cfg, self.denoisers, patch, self.ctx.rank)
        return sampler

    def _stateful(self) -> dict:
        return {"model": self.model, "critic": self.critic, "opt": self.opt, "copt": self.copt}

    def _extra_state(self) -> dict:
        return {"history": json.dumps(self.history + [self._stage()])}

    def _resumed(self, state: dict) -> None:
        if "history" in state:
            self.history = json.loads(state["history"])
        else:  # checkpoints written before the history was kept: one stage, its stored config
            old = json.loads(state["config"])
            self.history = [dict(_stage_of(old), from_step=0, to_step=self.step)]

    def _stage(self) -> dict:
        return dict(_stage_of(asdict(self.cfg)), from_step=self._stage_start, to_step=self.step)

    def _batch(self, sampler: PatchSampler) -> tuple[torch.Tensor, torch.Tensor]:
        x, fx = sampler.batch(self.cfg.batch_size)
        return x.to(self.device), fx.to(self.device)

    def _critic_step(self, x, fx) -> dict[str, float]:
        with torch.no_grad():
            _, fake, _ = self.ddp_model(x, fx)
        real_in, fake_in = torch.cat([x, fx], 1), torch.cat([fake, fx], 1)
        d_loss = self.critic(fake_in).mean() - self.critic(real_in).mean()
        a = torch.rand(x.shape[0], 1, 1, 1, device=x.device)
        interp = (a * real_in + (1 - a) * fake_in).requires_grad_(True)
        grads = torch.autograd.grad(self.critic(interp).sum(), interp, create_graph=True)[0]
        gp = self.cfg.gp_weight * ((grads.flatten(1).norm(dim=1) - 1) ** 2).mean()
        self.copt.zero_grad(set_to_none=True)
        (d_loss + gp).backward()
        ddp.all_reduce_gradients(self.critic, self.ctx)
        self.copt.step()
        return _scalars(critic=d_loss, gp=gp)

    def _train_step(self, x, fx) -> dict[str, float]:
        cfg = self.cfg
        adversarial = cfg.adv_weight > 0 and self.step >= cfg.adv_start
        out = self._critic_step(x, fx) if adversarial else {}
        kl, rec, _ = self.ddp_model(x, fx)
        l1 = (rec - x).abs().sum(dim=(1, 2, 3)).mean()
        loss = cfg.l1_weight * l1 + cfg.kl_weight * kl.mean()
        if cfg.l2_weight:
            loss = loss + cfg.l2_weight * ((rec - x) ** 2).sum(dim=(1, 2, 3)).mean()
        if adversarial:
            adv = -self.critic(torch.cat([rec, fx], 1)).mean()
            loss = loss + cfg.adv_weight * adv
            out["adv"] = float(adv.detach())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        # mean |error| in HU (normalised units x 502.185)
        out.update(_scalars(loss=loss, kl=kl.mean(), l1_hu=(rec - x).abs().mean() * 502.185))
        return out

    @torch.no_grad()
    def _initialise(self, sampler: PatchSampler) -> None:
        """Data-dependent ActNorm initialisation on rank 0's first batch, then the same weights on
        every rank (DistributedDataParallel also broadcasts at construction)."""
        x, fx = self._batch(sampler)
        if self.init_from is None:  # a warm start keeps its normalisation statistics
            self.model.train()
            self.model(x, fx)
        ddp.broadcast_module(self.model, self.ctx)
        ddp.broadcast_module(self.critic, self.ctx)

    def run(self, progress: bool = True, stop_at: int | None = None) -> Path | None:
        cfg = self.cfg
        sampler = self._prepare_data()
        if not self.try_resume(sampler):
            self._initialise(sampler)
        self._stage_start = self.step
        self._ddp_wrap()
        self.model.train()
        self.critic.train()
        if not self._steps(
            sampler,
            f"train cvae ({cfg.size})",
            progress,
            stop_at,
            lambda smp: self._train_step(*self._batch(smp)),
        ):
            return None
        return self.export()

    def export(self) -> Path:
        cfg = self.cfg
        self.model.eval()
        training = {
            "data": _data_description(cfg.data, self.source),
            "n_training_slices": self.n_slices,
            "dose_fraction": cfg.dose_fraction,
            "conditions": [d.describe(portable=True) for d in self.denoisers],
            "steps": self.step,
            "batch_size": cfg.batch_size,
            "world_size": self.ctx.world_size,
            "lr": cfg.lr,
            "loss": {
                "l1_weight": cfg.l1_weight,
                "l2_weight": cfg.l2_weight,
                "kl_weight": cfg.kl_weight,
                "adv_weight": cfg.adv_weight,
                "adv_start": cfg.adv_start,
                "gp_weight": cfg.gp_weight,
                "perceptual": None,
            },
            "seed": cfg.seed,
            "stages": [h for h in self.history + [self._stage()] if h["to_step"] > h["from_step"]],
            "train_time_s": round(self.elapsed, 1),
            "hardware": ddp.hardware_description(self.device, self.ctx.world_size),
        }
        if self.init_from is not None:
            training["init"] = self.init_from
        return save_cvae(self.model, self.out / "cvae.safetensors", training)


def _warm_start_cvae(model: nn.Module, path: str) -> dict:
    """Load a trained cVAE of the same architecture into ``model`` (a fine-tune, e.g. with the
    critic switched on); a different architecture is a one-line error naming the file."""
    from ..invariance.models import load_cvae

    old, card = load_cvae(path)
    state, new = old.state_dict(), model.state_dict()
    if state.keys() != new.keys() or any(state[k].shape != new[k].shape for k in state):
        raise CTInvariancesError(
            f"--init: this cVAE's architecture ({card.get('config')}) is not the one being trained", path
        )
    model.load_state_dict(state)
    return {"file": card.get("file"), "sha256": card.get("sha256"), "training": card.get("training")}


def _warm_start(model: nn.Module, path: str) -> dict:
    """Load a trained cINN's weights into ``model``. Tensors that grew along their input channels
    (the condition embedder's first convolution when the noise-level channel is added) keep the old
    weights and start at zero for the new channels, so the model starts as the old one."""
    from ..invariance.models import load_cinn

    old, card = load_cinn(path)
    state = model.state_dict()
    for k, v in old.state_dict().items():
        if k not in state:
            raise CTInvariancesError(f"--init: {k} does not exist in the new cINN", path)
        t = state[k]
        if t.shape == v.shape:
            t.copy_(v)
        elif (
            t.dim() == 4
            and t.shape[0] == v.shape[0]
            and t.shape[1] > v.shape[1]
            and t.shape[2:] == v.shape[2:]
        ):
            t.zero_()
            t[:, : v.shape[1]].copy_(v)
        else:
            raise CTInvariancesError(
                f"--init: {k} has shape {tuple(v.shape)}, the new cINN {tuple(t.shape)}", path
            )
    model.load_state_dict(state)
    scale = getattr(model, "scale", None)
    if scale is not None and "scale.initialized" not in old.state_dict():
        # a noise scale new to the warm-started model stays the identity (its data-dependent
        # initialisation would change what the old steps see)
        scale.initialized.fill_(1)
    return {"file": card.get("file"), "sha256": card.get("sha256"), "training": card.get("training")}


def _stage_of(cfg: dict) -> dict:
    keys = ("lr", "l1_weight", "kl_weight", "adv_weight", "adv_start", "batch_size")
    return {k: cfg.get(k) for k in keys}


def _data_description(data: tuple[str, ...], source) -> str | list:
    if source is not None:
        return getattr(source, "description", type(source).__name__)
    if data:
        return list(data)
    return (
        "real full-dose CT from ../shared/data (abdomen-siemens-20 k 0-13, head-ge-28 k 0-19); "
        "low dose simulated by projection-domain noise insertion"
    )


# --- cINN ------------------------------------------------------------------------------------


@dataclass
class CINNTrainingConfig:
    out: str
    denoiser: str
    cvae: str
    denoiser_arch: str | None = None
    denoiser_input_convention: str | None = None
    data: tuple[str, ...] = ()
    steps: int = 4000
    batch_size: int = 64
    lr: float = 2e-4  # the paper: 1e-5 at batch 128 for 47k iterations
    dose_fraction: float = 0.25
    realisations: int = 2
    max_memory_gb: float | None = None  # for simulating user --data (training_slices)
    seed: int = 0
    checkpoint_every: int = 200
    device: str = "auto"
    time_limit_s: float | None = None  # train for at most this long (steps scaled down to fit)
    patch: int | None = None  # crop size (spatial engines only; default: the cVAE's)
    init: str | None = None  # start from this cINN's weights (fine-tuning; see _warm_start)
    # crops whose latents fit the spatial cINN's output calibration at the end (0: no fit)
    calibration_crops: int = 1024
    # what that fit sets: "all" (shift and scale) or "mean" (shift only: the scale stays as trained,
    # so a power-guarded fine-tune's sample power is not undone; README spatial item 7)
    calibration_fit: str = "all"
    # weight of the invariance term (spatial engines): mean |f(x~) - f(x)|^2 of decoded cINN samples
    # x~ over mean |x~ - f(x)|^2, added to the NLL so that what the samples vary is what f ignores
    invariance_weight: float = 0.0
    invariance_batch: int = 8  # samples per step for that term (f and the decoder are backpropagated)
    # with it, this weight x log(power of x~ - f(x) / power of x - f(x))^2: alone, the invariance
    # term buys its ratio with variation f removes (high frequencies) beyond what x has (measured);
    # the same default as `train cinn --power-weight`
    power_weight: float = 10.0
    # with it, this weight x the variance over radial frequency bands of log(band power of x~ - f(x) /
    # band power of x - f(x)) over the crop: the samples' residual keeps x's spectral shape (the power
    # term alone let redcnn's fine-tune move its variation to high frequencies, 3x the reference's)
    spectrum_weight: float = 0.0
    # this weight x the sum over latent channels of mean(v)^2 + log(std(v))^2 on the NLL's batch: the
    # invariance term drew v's channel means off 0 (0.12 after 300 steps, 0.45 after 827), which the
    # NLL alone did not hold and a refit of the output calibration undid only by making samples louder
    moment_weight: float = 0.0
    model_config: CINNConfig | SpatialCINNConfig | None = None  # default: the layout that goes with the cVAE


def radial_band_power(images: torch.Tensor, bands: int = 8) -> torch.Tensor:
    """Mean power per radial frequency band (``bands`` equal-width rings from 0 to Nyquist; the
    corners beyond go to the last) of a batch [B, 1, H, W], summed over the batch; differentiable."""
    power = torch.fft.rfft2(images.float()).abs() ** 2
    h, w = images.shape[-2:]
    fy = torch.fft.fftfreq(h, device=images.device)[:, None]
    fx = torch.fft.rfftfreq(w, device=images.device)[None, :]
    ring = ((fy**2 + fx**2).sqrt() / 0.5 * bands).long().clamp(max=bands - 1).flatten()
    per_freq = power.sum(dim=(0, 1)).flatten()
    total = torch.zeros(bands, device=images.device).index_add(0, ring, per_freq)
    count = torch.zeros(bands, device=images.device).index_add(0, ring, torch.ones_like(per_freq))
    return total / count


def spectrum_shape_mismatch(residual: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Variance over radial bands of log(band power of ``residual`` / that of ``reference``): 0 when
    the two spectra have the same shape at any scale (the power term sets the scale)."""
    log_ratio = (radial_band_power(residual) / radial_band_power(reference).clamp_min(1e-12)).log()
    return ((log_ratio - log_ratio.mean()) ** 2).mean()


def latent_moment_mismatch(v: torch.Tensor) -> torch.Tensor:
    """Sum over the channels of v [B, C, ...] of mean^2 + log(std)^2 over the batch and positions:
    0 when every channel has N(0, 1)'s first two moments."""
    flat = v.transpose(0, 1).reshape(v.shape[1], -1)
    return (flat.mean(1) ** 2 + flat.std(1).log() ** 2).sum()


class CINNTrainer(_Checkpointed):
    """``denoiser`` may be a loaded :class:`Denoiser` instead of ``cfg.denoiser``; ``source`` as
    for :class:`CVAETrainer`."""

    def __init__(
        self,
        cfg: CINNTrainingConfig,
        ctx: ddp.DistContext | None = None,
        source=None,
        denoiser: Denoiser | None = None,
    ) -> None:
        self.cfg = cfg
        self.source = source
        self.ctx = ctx or ddp.setup(cfg.device)
        self.device = self.ctx.device
        torch.manual_seed(cfg.seed)
        self.cvae, self.cvae_card = load_cvae(cfg.cvae, device=self.device)
        self.cvae.eval().requires_grad_(False)
        cinn_cfg = cfg.model_config or cinn_config_for(self.cvae.cfg)
        if not cinn_fits(cinn_cfg, self.cvae):
            raise CTInvariancesError(
                "the cINN configuration does not fit this cVAE (latent shape / patch)", cfg.cvae
            )
        if cfg.patch is not None and (
            not isinstance(cinn_cfg, SpatialCINNConfig) or cfg.patch % self.cvae.multiple or cfg.patch < 16
        ):
            raise CTInvariancesError(
                f"--patch {cfg.patch}: only a spatial engine trains on other crop sizes "
                "(a multiple of its latent stride, at least 16)",
                cfg.cvae,
            )
        if cfg.invariance_weight > 0 and not isinstance(cinn_cfg, SpatialCINNConfig):
            raise CTInvariancesError("--invariance-weight needs a spatial engine", cfg.cvae)
        if cfg.calibration_fit not in ("all", "mean"):
            raise CTInvariancesError(f"calibration fit must be 'all' or 'mean', got {cfg.calibration_fit!r}")
        self.model = build_cinn(cinn_cfg, seed=cfg.seed).to(self.device)
        self.init_from = None
        if cfg.init:
            self.init_from = _warm_start(self.model, cfg.init)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.step, self.elapsed = 0, 0.0
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.denoiser = denoiser or load_denoiser(
            cfg.denoiser,
            device=self.device,
            arch=cfg.denoiser_arch,
            input_convention=cfg.denoiser_input_convention,
        )
        self.ddp_model: nn.Module = self.model

    def _prepare_data(self) -> PatchSampler:
        if self.source is not None:
            self.n_slices = 0
            return self.source
        patch = self.cfg.patch or self.cvae.patch  # a spatial engine trains on any crop size
        sampler, self.n_slices = conditioned_data(
            self.cfg,
            [self.denoiser],
            patch,
            self.ctx.rank,
            self._uses_noise_level(),
            getattr(self.model.cfg, "noise_map", False),
            self.device,
        )
        return sampler

    def _stateful(self) -> dict:
        return {"model": self.model, "opt": self.opt}

    def _uses_noise_level(self) -> bool:
        return getattr(self.model.cfg, "noise_condition", False)

    # its own checkpoint and log, so a cINN can be trained in the cVAE's folder (where the sampler looks
    # for it) without resuming from the cVAE's checkpoint
    def _ckpt(self) -> Path:
        return self.out / f"checkpoint-cinn-{self.denoiser.name}.pt"

    def _log_name(self) -> str:
        return f"log-cinn-{self.denoiser.name}.jsonl"

    def _nll_step(self, sampler) -> dict[str, float]:
        z, fx, noise, x = self._latents(sampler, with_x=True)
        v, logdet = self.ddp_model(z, fx, noise_hu=noise)
        nll = 0.5 * (v**2).mean() - logdet.mean() / v[0].numel()
        loss, out = nll, {}
        if self.cfg.moment_weight > 0:
            moments = latent_moment_mismatch(v)
            loss = loss + self.cfg.moment_weight * moments
            out["moments"] = moments
        if self.cfg.invariance_weight > 0:
            inv, power, shape = self._invariance_terms(x, fx, noise)
            realism = sum(p.log() ** 2 for p in power.values())
            loss = loss + self.cfg.invariance_weight * inv + self.cfg.power_weight * realism
            loss = loss + self.cfg.spectrum_weight * shape
            out |= {"invariance": inv, "spectrum_shape": shape}
            out |= {f"power_ratio_{k}": p for k, p in power.items()}
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 10.0)
        self.opt.step()
        return _scalars(nll=nll, v_std=v.detach().std(), **out)

    def _invariance_terms(
        self, x: torch.Tensor, fx: torch.Tensor, noise
    ) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """For decoded samples x~ of the first crops: (mean |f(x~) - f(x)|^2 / mean |x~ - f(x)|^2,
        the share of the samples' variation that the denoiser still sees, 0 for an exact invariance;
        {"body", "outside"}: mean |x~ - f(x)|^2 / mean |x - f(x)|^2 there, their realism in power;
        the spread of the radial spectrum's log ratio, 0 when x~ - f(x) has x - f(x)'s shape).
        The first is a ratio so that less variation does not lower it (an absolute penalty, tried
        first, shrank the samples). f(x) is recomputed on the crop, so that crop borders affect both
        terms alike."""
        from ..normalization import normalized_to_hu

        n = min(self.cfg.invariance_batch, len(x))
        x, fx = x[:n], fx[:n]
        noise = None if noise is None else noise[:n]
        with torch.no_grad():
            target = self.denoiser.on_normalized(x)
        v = torch.randn((n, *self.cvae.latent_shape(*x.shape[-2:])), device=x.device)
        samples = self.cvae.decode(self.model.reverse(v, fx, noise_hu=noise), fx)
        seen = self.denoiser.on_normalized(samples) - target
        residual = (samples - fx) ** 2
        share = (seen**2).mean() / residual.mean().clamp_min(1e-12)
        # the power ratio inside the body (f(x) above -500 HU, as the realism bound measures it) and
        # outside it, each where the crops have it: with the body's alone, the samples put variation
        # into the air around the patient, which f ignores (measured: 4x x's there, redcnn)
        body = normalized_to_hu(fx) > -500.0
        ratios = {
            name: (residual * m).sum() / ((x - fx) ** 2 * m).sum().clamp_min(1e-12)
            for name, m in (("body", body.float()), ("outside", (~body).float()))
            if float(m.sum()) >= 0.05 * m.numel()
        }
        return share, ratios, spectrum_shape_mismatch(samples - fx, x - fx)

    @torch.no_grad()
    def _fit_calibration(self, sampler: PatchSampler) -> dict | None:
        """The spatial cINN's output calibration at its maximum likelihood for ``calibration_crops``
        fresh training crops, everything before it frozen (OutputCalibration.fit)."""
        layer = getattr(self.model, "calibration", None)
        if layer is None or self.cfg.calibration_crops <= 0:
            return None
        t0 = time.perf_counter()
        us, covs = [], []
        n = 0
        while n < self.cfg.calibration_crops:
            z, fx, noise = self._latents(sampler)
            u, _, level = self.model.forward_uncalibrated(z, fx, noise_hu=noise)
            us.append(u.float().cpu())
            covs.append(layer.covariates(level, fx).float().cpu())
            n += len(z)
        fit = layer.fit(torch.cat(us), torch.cat(covs), scale=self.cfg.calibration_fit == "all")
        return {
            "fit": self.cfg.calibration_fit,
            "crops": n,
            "crop_px": int(fx.shape[-1]),
            "nll_per_dim_before": round(fit["nll_before"], 5),
            "nll_per_dim_after": round(fit["nll_after"], 5),
            "seconds": round(time.perf_counter() - t0, 1),
        }

    @torch.no_grad()
    def _latents(self, sampler: PatchSampler, with_x: bool = False):
        """(z, f(x), noise level or None[, x]) of a batch of training crops, z a posterior sample."""
        x, fx = sampler.batch(self.cfg.batch_size)
        x, fx = x.to(self.device), fx.to(self.device)
        noise = getattr(sampler, "last_noise_hu", None)
        if noise is None and self._uses_noise_level():
            # a replacement data source without noise levels (tests): measure each patch
            from ..invariance.sampler import slice_noise_hu
            from ..normalization import normalized_to_hu

            noise = torch.tensor([slice_noise_hu(normalized_to_hu(p[0].cpu().numpy())) for p in x])
        noise = None if noise is None else noise.to(self.device)
        z = self.cvae.encode(x, fx).sample()
        return (z, fx, noise, x) if with_x else (z, fx, noise)

    def run(self, progress: bool = True, stop_at: int | None = None) -> Path | None:
        cfg = self.cfg
        sampler = self._prepare_data()
        if not self.try_resume(sampler):
            z, fx, noise = self._latents(sampler)
            self.model.train()
            if self.init_from is None:
                with torch.no_grad():
                    self.model(z, fx, noise_hu=noise)  # data-dependent ActNorm initialisation
            ddp.broadcast_module(self.model, self.ctx)
        self._ddp_wrap()
        self.model.train()
        if not self._steps(sampler, f"train cinn ({self.denoiser.name})", progress, stop_at, self._nll_step):
            return None
        self.model.eval()
        calibration = self._fit_calibration(sampler)
        training = {
            "data": "as the cVAE"
            if not (cfg.data or self.source)
            else _data_description(cfg.data, self.source),
            "n_training_slices": self.n_slices,
            "dose_fraction": cfg.dose_fraction,
            "steps": self.step,
            "batch_size": cfg.batch_size,
            "world_size": self.ctx.world_size,
            "lr": cfg.lr,
            "loss": "NLL of v under N(0, I) per dimension, z a posterior sample; exact log-det"
            + (
                f" + {cfg.invariance_weight:g} x mean|f(x~) - f(x)|^2 / mean|x~ - f(x)|^2 of "
                f"{cfg.invariance_batch} decoded samples x~ per step + {cfg.power_weight:g} x "
                "log(mean|x~ - f(x)|^2 / mean|x - f(x)|^2)^2 inside and outside the body (f(x) > -500 HU)"
                + (
                    f" + {cfg.spectrum_weight:g} x the variance over 8 radial bands of log(band power "
                    "of x~ - f(x) / band power of x - f(x))"
                    if cfg.spectrum_weight > 0
                    else ""
                )
                if cfg.invariance_weight > 0
                else ""
            )
            + (
                f" + {cfg.moment_weight:g} x the sum over latent channels of mean(v)^2 + log(std(v))^2"
                if cfg.moment_weight > 0
                else ""
            ),
            "invariance_weight": cfg.invariance_weight,
            "power_weight": cfg.power_weight,
            "spectrum_weight": cfg.spectrum_weight,
            "moment_weight": cfg.moment_weight,
            "init": self.init_from,
            "calibration": calibration,
            "patch": self.cfg.patch,
            "seed": cfg.seed,
            "train_time_s": round(self.elapsed, 1),
            "hardware": ddp.hardware_description(self.device, self.ctx.world_size),
        }
        return save_cinn(
            self.model,
            self.out / f"cinn-{self.denoiser.name}.safetensors",
            self.denoiser,
            self.cvae_card,
            training,
        )
