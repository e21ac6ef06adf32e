"""Saving, finding and loading cVAE / cINN weights (safetensors + card, SHA-256 checked), and
importing the published ldct-invariances checkpoints."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..denoisers.loading import Denoiser
from ..errors import WeightsError
from ..weights import load_safetensors_checked, models_dir, save_weights_with_card, verify_sha256
from .cinn import CINNConfig, ConditionalINN
from .cvae import ConditionalVAE, CVAEConfig
from .spatial import SpatialCINN, SpatialCINNConfig, SpatialCVAE, SpatialCVAEConfig, is_spatial

NORMALIZATION = "ldct-benchmark meanstd: (HU + 1024 - 481.454) / 502.185"

# SHA-256 of the published files (ldct-invariances ldctinv/pretrained/checkpoints.json)
PUBLISHED_SHA256 = {
    "cnn10-vae": "3c53d7d06fa0f09afe421e2fdf188fb9e26ea3988ad7f12c7108ea96c256afa8",
    "cnn10-cinn": "360a88d0b1d088b6bd00c3018c1c0e8ad39fcfb9c8ee95963a44e605e2f64b22",
    "redcnn-vae": "479e0591eccabbb276be13ef786162c366e83761a9ba41870413f6a69a7e4093",
    "redcnn-cinn": "4c7f31ceeb634d1db3f1f56c4de8c30f5c0f5ce9d7e9c734ad4f7856d715b972",
    "wganvgg-vae": "606e5b6e5022eb9c28e3e6a5e8a31274f0804d429bbe784fb1626c2d72cccd1d",
    "wganvgg-cinn": "7b08656cca960177ee2a84e046b074ff8562616b5344ddbcfcf7fb468d8d31c6",
    "dugan-vae": "ac168121eb23dd25e222ba48e69a2125a7c338e0be43e4bdfb7435206aa7ecd5",
    "dugan-cinn": "7bc5c99cb99f4c13bb5c2971f0b8691a03a082b6d90c5866b942f52d42e504f2",
}
PUBLISHED_URL = "https://downloads.eeulig.com/ldct-invariances/{name}.pt"


def bundled_dir() -> Path:
    return models_dir() / "invariance"


def cinn_config_for(cvae_cfg: CVAEConfig | SpatialCVAEConfig) -> CINNConfig | SpatialCINNConfig:
    """The cINN that goes with a cVAE: the paper's for the paper's, a convolutional one for a
    spatial latent, else the compact layout."""
    if isinstance(cvae_cfg, SpatialCVAEConfig):
        return SpatialCINNConfig(latent_ch=cvae_cfg.latent_ch, down=cvae_cfg.down)
    if cvae_cfg == CVAEConfig.paper():
        return CINNConfig.paper()
    n_down = min(4, max(1, (cvae_cfg.patch // 4).bit_length() - 1))
    return dataclasses.replace(
        CINNConfig.compact(), z_dim=cvae_cfg.z_dim, cond_size=cvae_cfg.patch, n_down=n_down, name="compact"
    )


def _num_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def build_cvae(cfg: CVAEConfig | SpatialCVAEConfig) -> ConditionalVAE | SpatialCVAE:
    return SpatialCVAE(cfg) if isinstance(cfg, SpatialCVAEConfig) else ConditionalVAE(cfg)


def build_cinn(cfg: CINNConfig | SpatialCINNConfig, seed: int | None = 0) -> ConditionalINN | SpatialCINN:
    return SpatialCINN(cfg, seed) if isinstance(cfg, SpatialCINNConfig) else ConditionalINN(cfg, seed)


def cinn_fits(cinn_cfg, cvae) -> bool:
    """Whether a cINN layout fits a cVAE (latent shape and condition size)."""
    if isinstance(cvae, SpatialCVAE):
        return isinstance(cinn_cfg, SpatialCINNConfig) and (cinn_cfg.latent_ch, cinn_cfg.down) == (
            cvae.cfg.latent_ch,
            cvae.cfg.down,
        )
    return (
        isinstance(cinn_cfg, CINNConfig) and cinn_cfg.z_dim == cvae.z_dim and cinn_cfg.cond_size == cvae.patch
    )


def save_cvae(
    model: ConditionalVAE | SpatialCVAE, path: str | Path, training: dict, extra: dict | None = None
) -> Path:
    card = {
        "kind": "cvae",
        "size": model.cfg.name,
        "config": model.cfg.to_dict(),
        "num_parameters": _num_params(model),
        "normalization": NORMALIZATION,
        "training": training,
        **(extra or {}),
    }
    return save_weights_with_card(model.state_dict(), path, card)


def save_cinn(
    model: ConditionalINN | SpatialCINN,
    path: str | Path,
    denoiser: Denoiser | dict,
    cvae_card: dict,
    training: dict,
    extra: dict | None = None,
) -> Path:
    card = {
        "kind": "cinn",
        "size": model.cfg.name,
        "config": model.cfg.to_dict(),
        "num_parameters": _num_params(model),
        "denoiser": denoiser.describe(portable=True) if isinstance(denoiser, Denoiser) else denoiser,
        "cvae": {"file": cvae_card.get("file"), "sha256": cvae_card.get("sha256")},
        "normalization": NORMALIZATION,
        "log_det": "exact"
        if isinstance(model, SpatialCINN)
        else "exact (includes the invertible leaky ReLU)",
        "training": training,
        **(extra or {}),
    }
    return save_weights_with_card(model.state_dict(), path, card)


def resolve_cvae_path(spec: str | Path | None) -> Path:
    """A cVAE file, a folder holding cvae.safetensors, None (or ``bundled``, ``spatial``) for the
    bundled spatial-latent engine, the default since its cINNs draw samples with the power and the
    local spread of x's noise; ``tiled`` (or ``compact``) for the bundled tiled engine."""
    if spec is None or str(spec) in ("", "bundled", "spatial"):
        return bundled_dir() / "spatial" / "cvae.safetensors"
    if str(spec) in ("tiled", "compact"):
        return bundled_dir() / "cvae.safetensors"
    p = Path(spec)
    if p.is_dir():
        return p / "cvae.safetensors"
    return p


def load_cvae(
    spec: str | Path | None = None, device: str | torch.device = "cpu"
) -> tuple[ConditionalVAE, dict]:
    return _load_engine_model(resolve_cvae_path(spec), "cvae", device)


def resolve_cinn_path(spec: str | Path | None, denoiser_name: str, cvae_path: Path) -> Path:
    """A cINN file, a folder holding cinn-<denoiser>.safetensors, or None: beside the cVAE."""
    if spec is None or str(spec) == "":
        return cvae_path.parent / f"cinn-{denoiser_name}.safetensors"
    p = Path(spec)
    return p / f"cinn-{denoiser_name}.safetensors" if p.is_dir() else p


def load_cinn(path: str | Path, device: str | torch.device = "cpu") -> tuple[ConditionalINN, dict]:
    return _load_engine_model(Path(path), "cinn", device)


def _load_engine_model(path: Path, kind: str, device):
    label = {"cvae": "cVAE", "cinn": "cINN"}[kind]
    if not path.is_file():
        raise WeightsError(f"{label} weights not found (train one with `ctinvariances train {kind}`)", path)
    state, card = load_safetensors_checked(path)
    if card.get("kind") != kind:
        raise WeightsError(f"not a {label} model card (kind = {card.get('kind')!r})", path)
    cfg = card.get("config") or {}
    try:
        if kind == "cvae":
            model = build_cvae(
                SpatialCVAEConfig.from_dict(cfg) if is_spatial(cfg) else CVAEConfig.from_dict(cfg)
            )
        else:
            model = build_cinn(
                SpatialCINNConfig.from_dict(cfg) if is_spatial(cfg) else CINNConfig.from_dict(cfg), seed=None
            )
    except (TypeError, ValueError, KeyError) as exc:
        raise WeightsError(f"the card's {label} configuration is not valid ({exc})", path) from None
    _load_strict(model, state, path)
    return model.to(device).eval(), card


def _load_strict(model: torch.nn.Module, state: dict, path: Path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise WeightsError(
            f"weights do not fit the architecture in the card: {' '.join(first)}", path
        ) from None


def import_published(
    folder: str | Path, out: str | Path | None = None, names=None, overwrite: bool = False
) -> list[Path]:
    """Convert the published ``<denoiser>-vae.pt`` / ``<denoiser>-cinn.pt`` found in ``folder``
    (hash-checked against the published SHA-256) to safetensors + cards in ``out``
    (default: <user models>/published/<denoiser>/ as cvae.safetensors and cinn-<denoiser>.safetensors;
    the user models folder: ``weights.user_models_dir``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError("not a folder", folder)
    from ..weights import user_models_dir

    out_root = Path(out) if out else user_models_dir() / "published"
    written: list[Path] = []
    wanted = names or ("cnn10", "redcnn", "wganvgg", "dugan")
    # the published denoisers themselves (ldct-benchmark's <name>.pt): hash-checked and copied to the
    # user's denoisers folder, where the panel and `models list` find them (as user/<name>)
    written += _import_published_denoisers(
        folder, (Path(out) if out else user_models_dir()) / "denoisers", wanted, overwrite
    )
    found_any = bool(written)
    for name in wanted:
        vae_file, cinn_file = folder / f"{name}-vae.pt", folder / f"{name}-cinn.pt"
        if not vae_file.exists() and not cinn_file.exists():
            continue
        found_any = True
        if not (vae_file.exists() and cinn_file.exists()):
            missing = cinn_file if vae_file.exists() else vae_file
            raise WeightsError(f"the pair is incomplete: {missing.name} is missing", missing)
        dest = out_root / name
        existing = [p for p in (dest / "cvae.safetensors", dest / f"cinn-{name}.safetensors") if p.exists()]
        if existing and not overwrite:
            raise WeightsError("exists: imported before; give --overwrite to replace it", existing[0])
        vae = ConditionalVAE(CVAEConfig.paper())
        _load_strict(vae, _published_state(vae_file, f"{name}-vae"), vae_file)
        source = {"url": PUBLISHED_URL.format(name=f"{name}-vae"), "sha256": PUBLISHED_SHA256[f"{name}-vae"]}
        vae_path = save_cvae(
            vae,
            dest / "cvae.safetensors",
            {"published": source, "conditions": [{"name": name}]},
            {"note": "Eulig et al. 2025, trained on the Mayo LDCT chest data (10 % dose)"},
        )
        from ..weights import read_card

        cinn = ConditionalINN(CINNConfig.paper(), seed=None)
        _load_strict(cinn, _published_state(cinn_file, f"{name}-cinn"), cinn_file)
        source = {
            "url": PUBLISHED_URL.format(name=f"{name}-cinn"),
            "sha256": PUBLISHED_SHA256[f"{name}-cinn"],
        }
        cinn_path = save_cinn(
            cinn,
            dest / f"cinn-{name}.safetensors",
            {"name": name},
            read_card(vae_path),
            {"published": source},
            {
                "log_det": "trained with the published code (leaky-ReLU log-det omitted); "
                "sampling is unaffected"
            },
        )
        written += [vae_path, cinn_path]
    if not found_any:
        raise WeightsError(
            "no published <denoiser>.pt, <denoiser>-vae.pt or <denoiser>-cinn.pt files in this folder", folder
        )
    return written


def _import_published_denoisers(folder: Path, dest: Path, names, overwrite: bool = False) -> list[Path]:
    from ..denoisers.loading import PUBLISHED_SHA256 as DENOISER_SHA256
    from ..model_folders import install_denoiser

    written = []
    for name in names:
        src = folder / f"{name}.pt"
        if src.exists() and name in DENOISER_SHA256:
            verify_sha256(src, DENOISER_SHA256[name])
            written.append(install_denoiser(src, name, overwrite=overwrite, folder=dest))
    return written


def _published_state(path: Path, key: str, expected: str | None = None) -> dict:
    verify_sha256(path, expected or PUBLISHED_SHA256[key])
    return read_published_state(path)


def read_published_state(path: Path) -> dict:
    """The ``model_state_dict`` of a published {epoch, model_state_dict} file (weights_only)."""
    import argparse

    torch.serialization.add_safe_globals([argparse.Namespace])
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"not a readable torch checkpoint ({exc.__class__.__name__}: {exc})", path
        ) from None
    if not isinstance(obj, dict) or "model_state_dict" not in obj:
        raise WeightsError("no model_state_dict in this checkpoint", path)
    return obj["model_state_dict"]
