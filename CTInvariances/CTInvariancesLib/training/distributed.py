"""Data-parallel training under ``torchrun`` (gloo on CPU, NCCL on GPUs; nodes via torchrun's flags)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> DistContext:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), else a single process.

    ``device``: "auto" (CUDA when available), "cpu" or "cuda". Each rank uses cuda:LOCAL_RANK.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device} was given but no CUDA device is available")
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ValueError(f"--device {device!r}: use auto, cpu, cuda or cuda:N")
    if use_cuda and world == 1 and ":" in device:
        local = int(device.split(":")[1])
    dev = torch.device(f"cuda:{local}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistContext(rank, world, local, dev)


def teardown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_gradients(module: torch.nn.Module, ctx: DistContext) -> None:
    """Average gradients over ranks (used for the critic: its gradient penalty needs a double
    backward, which DistributedDataParallel's hooks do not support)."""
    if not ctx.enabled:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= ctx.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_module(module: torch.nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if not ctx.enabled:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


def broadcast_buffers(module: torch.nn.Module, ctx: DistContext) -> None:
    """Rank 0's buffers (BatchNorm running statistics) everywhere: DistributedDataParallel treats
    them as authoritative at every forward pass, but each rank's last pass updates its own copy."""
    if ctx.enabled:
        for t in module.buffers():
            dist.broadcast(t.data, src=0)


def broadcast_float(value: float, ctx: DistContext) -> float:
    """Rank 0's value on every rank."""
    if not ctx.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.broadcast(t, src=0)
    return float(t)


def mean_scalars(values: dict[str, float], ctx: DistContext) -> dict[str, float]:
    if not ctx.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return {k: float(v) / ctx.world_size for k, v in zip(keys, t)}


def hardware_description(device: torch.device | str, world_size: int = 1) -> str:
    """What trained a model, for its card: the GPU's name, or the CPU's model and core count."""
    device = torch.device(device)
    per = f"{world_size} x " if world_size > 1 else ""
    if device.type == "cuda":
        return f"{per}{torch.cuda.get_device_name(device)} (CUDA)"
    name = "CPU"
    try:
        with open("/proc/cpuinfo") as f:
            name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
    except OSError:
        import platform

        name = platform.processor() or name
    threads = torch.get_num_threads()
    return f"{per}{name}, {os.cpu_count()} cores, {threads} thread{'s' if threads != 1 else ''}"
