"""Load a denoiser from a bundled name, a published ldct-benchmark .pt, our safetensors + card,
a TorchScript file, or a Python ``module:callable``; wrap it so that it takes and returns HU."""

from __future__ import annotations

import argparse
import importlib
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import CTInvariancesError, WeightsError
from ..normalization import hu_to_normalized, normalized_to_hu
from ..precision import full_fp32
from ..weights import load_safetensors_checked, models_dir, verify_sha256
from . import DENOISER_NAMES, build_denoiser

INPUT_CONVENTIONS = ("normalized", "hu")

# SHA-256 of the published ldct-benchmark checkpoints (ldctbench hub checkpoints.json).
PUBLISHED_SHA256 = {
    "cnn10": "ee96e494c8eda02e946464df29cf43c14163e63bc4b1df6d8907ee33a1a18c3e",
    "redcnn": "058ae58264a00116e5620ed88047e687c7e93c8b732bfd6d7796e76bae0c74f3",
    "wganvgg": "1ad87d16aefea99a9eeb474c33127971131cc21a07e129bf464c764cf9ca6003",
    "dugan": "c6faad8376994fe22eadc0a723f81705fda6f435f40ef0f999666e871216ac5e",
}
PUBLISHED_URL = "https://downloads.eeulig.com/ldct-benchmark/{name}.pt"


class Denoiser:
    """A denoising network with its input convention: call it on HU tensors, get HU back.

    ``input_convention`` is "normalized" (ldct-benchmark: (HU + 1024 - mean) / std, as the
    published and bundled models) or "hu" (the network takes and returns HU).
    """

    def __init__(
        self,
        module: nn.Module | Callable,
        name: str,
        input_convention: str = "normalized",
        sha256: str | None = None,
        source: str = "",
        card: dict | None = None,
    ) -> None:
        if input_convention not in INPUT_CONVENTIONS:
            raise ValueError(f"input convention must be one of {INPUT_CONVENTIONS}")
        self.module = module
        self.name = name
        self.input_convention = input_convention
        self.sha256 = sha256
        self.source = source
        self.card = card or {}
        if isinstance(module, nn.Module):
            try:
                module.eval()
            except NotImplementedError:  # torch.export programs are already inference graphs
                pass
            for p in module.parameters():
                p.requires_grad_(False)
            try:  # 1.4-2x faster convolutions on CPU (measured: benchmarks/bench_consistency.py)
                module.to(memory_format=torch.channels_last)
            except Exception:  # noqa: BLE001 - some scripted modules refuse; they keep their layout
                pass

    @property
    def device(self) -> torch.device:
        if isinstance(self.module, nn.Module):
            for p in self.module.parameters():
                return p.device
        return torch.device("cpu")

    def to(self, device: str | torch.device) -> Denoiser:
        if isinstance(self.module, nn.Module):
            self.module.to(device)
        return self

    def __call__(self, x_hu: torch.Tensor) -> torch.Tensor:
        """Denoise a batch [B, 1, H, W] in HU; returns HU. A network that raises, or returns anything
        but one image per input of the input's size, is a one-line error naming it."""
        from ..errors import CTInvariancesError

        normalized = self.input_convention == "normalized"
        try:
            with full_fp32(x_hu.device):  # f itself, not TF32's approximation (precision.py)
                y = self.module(hu_to_normalized(x_hu) if normalized else x_hu)
        except (torch.OutOfMemoryError, MemoryError, CTInvariancesError):
            raise  # the sampler answers running out of memory with smaller batches
        except Exception as exc:
            text = " ".join(str(exc).split())[:200]
            raise CTInvariancesError(
                f"the denoiser raised {type(exc).__name__}: {text}", self.source or self.name
            ) from None
        if not isinstance(y, torch.Tensor) or tuple(y.shape) != tuple(x_hu.shape):
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise CTInvariancesError(
                f"the denoiser returned {got} for an input of shape {tuple(x_hu.shape)}: it must "
                "return one single-channel image of the same size per input",
                self.source or self.name,
            )
        return normalized_to_hu(y) if normalized else y

    def on_normalized(self, x: torch.Tensor) -> torch.Tensor:
        """f on a batch in the project's normalised units (the engine's and its trainers')."""
        return hu_to_normalized(self(normalized_to_hu(x)))

    def denoise_slices(
        self,
        slices_hu: np.ndarray,
        batch_size: int = 4,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Denoise [K, H, W] HU slices in batches on the denoiser's device; returns float32 HU."""
        out = np.empty_like(slices_hu, dtype=np.float32)
        device = self.device
        with torch.inference_mode():
            for start in range(0, len(slices_hu), batch_size):
                batch = torch.from_numpy(
                    np.ascontiguousarray(slices_hu[start : start + batch_size], dtype=np.float32)
                )[:, None].to(device)
                out[start : start + len(batch)] = self(batch)[:, 0].float().cpu().numpy()
                if not np.isfinite(out[start : start + len(batch)]).all():
                    from ..errors import CTInvariancesError

                    raise CTInvariancesError(
                        f"the denoiser returned NaN or infinite values "
                        f"(slices {start}-{start + len(batch) - 1} "
                        "of this call); no output is written",
                        self.source or self.name,
                    )
                if progress:
                    progress(len(batch))
        return out

    def describe(self, portable: bool = False) -> dict:
        """Name, source, hash, convention. ``portable``: for model cards, the source is given relative
        to the models folder (bundled) or as a bare file name, never as a path of this machine."""
        return {
            "name": self.name,
            "source": portable_source(self.source) if portable else self.source,
            "sha256": self.sha256,
            "input_convention": self.input_convention,
        }


def portable_source(source: str) -> str:
    """``source`` without this machine's folders: relative to the models folder, else the file name."""
    if not source or ":" in source and not Path(source).exists():
        return source  # a module:callable spec, or empty
    path = Path(source)
    try:
        return path.resolve().relative_to(models_dir().resolve()).as_posix()
    except ValueError:
        return path.name


def _allow_namespace():
    return torch.serialization.safe_globals([argparse.Namespace])


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def load_published_checkpoint(path: str | Path, arch: str, expected_sha256: str | None = None):
    """State dict from an ldct-benchmark ``{args, iteration, model_state_dict}`` file, hash-checked."""
    path = Path(path)
    expected = expected_sha256 or PUBLISHED_SHA256.get(arch)
    try:
        sha = verify_sha256(path, expected)
    except WeightsError as exc:
        if expected_sha256 is None and arch in PUBLISHED_SHA256:
            hint = f"; the published file is {PUBLISHED_URL.format(name=arch)}, or give --sha256"
            raise WeightsError(exc.problem + hint, path) from None
        raise
    try:
        with _allow_namespace():
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "weights_only" in str(exc) or "Weights only load failed" in first:
            # torch's own text advises weights_only=False, i.e. running the file's code: never
            first = (
                "it holds Python objects besides tensors, and loading those could run code; refused. "
                "A whole pickled model: save its state_dict instead, or export it with torch.jit.script "
                "or torch.export and pass that file"
            )
        raise WeightsError(f"not a loadable torch checkpoint ({first})", path) from None
    state = obj.get("model_state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise WeightsError("has no model_state_dict", path)
    return state, sha


def _infer_arch(state: dict, path: Path) -> str:
    keys = set(state)
    if "layers.0.weight" in keys:
        return "cnn10"
    if "net.0.weight" in keys:
        return "wganvgg"
    if "conv1.weight" in keys and "tconv5.weight" in keys:
        return "redcnn"
    raise WeightsError("cannot tell the architecture from the weights: give --arch", path)


def _module_from_state(arch: str, state: dict, path: Path) -> nn.Module:
    width = int(state[next(iter(state))].shape[0])  # first layer's output channels
    module = build_denoiser(arch, width=width)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"weights do not fit {arch}: {str(exc).splitlines()[0]} ...", path) from None
    return module


def load_denoiser(
    spec: str,
    device: str | torch.device = "cpu",
    arch: str | None = None,
    input_convention: str | None = None,
    sha256: str | None = None,
) -> Denoiser:
    """Resolve ``spec`` to a :class:`Denoiser`.

    ``spec``: a bundled name (cnn10, redcnn, wganvgg, dugan); a published ``<name>.pt``; a
    ``.safetensors`` file with its ``.json`` card; a TorchScript file; a ``torch.export`` ``.pt2``
    program (exported with a dynamic batch/height/width); or ``module:callable``
    returning an ``nn.Module`` (``input_convention`` then defaults to "normalized").
    """
    denoiser = _resolve(spec, arch, input_convention, sha256)
    return denoiser.to(device)


def _resolve(spec, arch, input_convention, sha256) -> Denoiser:
    if spec in DENOISER_NAMES:
        path = models_dir() / "denoisers" / f"{spec}.safetensors"
        if not path.exists():
            raise WeightsError(
                f"bundled weights for {spec} are missing (run scripts/train_demo_denoisers.sh)", path
            )
        return _from_safetensors(path, sha256)
    path = Path(spec)
    if not path.exists():
        from ..model_folders import user_denoiser

        path = user_denoiser(spec) or path  # a denoiser the user imported or trained, by name
    if path.exists():
        if path.suffix == ".safetensors":
            return _from_safetensors(path, sha256)
        if path.suffix == ".pt2":  # torch.export ExportedProgram, TorchScript's successor
            digest = verify_sha256(path, sha256)
            try:
                module = torch.export.load(str(path)).module()
            except Exception as exc:
                raise WeightsError(f"not a loadable torch.export program ({exc})", path) from None
            return Denoiser(module, path.stem, input_convention or "normalized", digest, str(path))
        if _is_torchscript(path):
            digest = verify_sha256(path, sha256)
            try:
                module = torch.jit.load(str(path), map_location="cpu")
            except Exception as exc:
                raise WeightsError(f"not a loadable TorchScript file ({exc})", path) from None
            return Denoiser(module, path.stem, input_convention or "normalized", digest, str(path))
        name = arch or (path.stem if path.stem in PUBLISHED_SHA256 else None)
        state, digest = load_published_checkpoint(path, name or "", sha256)
        name = name or _infer_arch(state, path)
        module = _module_from_state(name, state, path)
        return Denoiser(module, name, input_convention or "normalized", digest, str(path))
    if ":" in spec and not spec.startswith((".", "/")):
        return _from_callable(spec, input_convention)
    raise CTInvariancesError(
        "no such denoiser: give one of "
        + ", ".join(DENOISER_NAMES)
        + ", a weight file (.pt, .safetensors, TorchScript) or module:callable",
        spec,
    )


def _from_safetensors(path: Path, sha256: str | None) -> Denoiser:
    state, card = load_safetensors_checked(path, sha256)
    arch = card.get("arch") or _infer_arch(state, path)
    module = _module_from_state(arch, state, path)
    return Denoiser(
        module,
        card.get("name", arch),
        card.get("input_convention", "normalized"),
        card.get("sha256"),
        str(path),
        card,
    )


def _from_callable(spec: str, input_convention: str | None) -> Denoiser:
    mod_name, _, attr = spec.partition(":")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, ".")  # let users point at a module in the working directory
    try:
        module = importlib.import_module(mod_name)
        factory = getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise CTInvariancesError(f"cannot import the denoiser factory ({exc})", spec) from None
    net = factory()
    if not isinstance(net, nn.Module) and not callable(net):
        raise CTInvariancesError("the factory did not return a torch module", spec)
    source = getattr(module, "__file__", mod_name)
    return Denoiser(net, attr, input_convention or "normalized", None, f"{spec} ({source})")
