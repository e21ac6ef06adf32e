"""Weight files: SHA-256 verification, safetensors + JSON model cards, bundled model lookup."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import WeightsError
from .files import default_file_mode, sha256_of  # noqa: F401 - sha256_of re-exported
from .model_folders import models_dir, user_models_dir  # noqa: F401 - re-exported

CARD_SUFFIX = ".json"


def verify_sha256(path: str | Path, expected: str | None) -> str:
    """Return the file's SHA-256; raise WeightsError naming the file when it differs from expected."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError("weight file not found", path)
    actual = sha256_of(path)
    if expected is not None and actual.lower() != expected.lower().strip():
        raise WeightsError(
            f"SHA-256 mismatch: expected {expected}, file has {actual} (corrupt, truncated or a "
            "different model); re-download or re-train it",
            path,
        )
    return actual


def read_card(weights_path: str | Path) -> dict:
    card_path = Path(weights_path).with_suffix(CARD_SUFFIX)
    if not card_path.is_file():
        raise WeightsError(f"model card {card_path.name} is missing next to the weights", weights_path)
    try:
        return json.loads(card_path.read_text())
    except json.JSONDecodeError as exc:
        raise WeightsError(f"model card is not valid JSON ({exc})", card_path) from None


def set_card_metric(card_path: str | Path, key: str, value) -> None:
    """Store ``value`` as ``metrics[key]`` of the model card ``card_path`` (.json), written whole
    or not at all (the card's other fields are kept)."""
    card_path = Path(card_path)
    card = json.loads(card_path.read_text())
    card.setdefault("metrics", {})[key] = value
    tmp = card_path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(card, indent=2) + "\n")
    os.replace(tmp, card_path)


def save_weights_with_card(state_dict: dict[str, torch.Tensor], path: str | Path, card: dict) -> Path:
    """Write ``path`` (.safetensors) and its card (.json) atomically; the card records the hash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".partial-", suffix=".safetensors", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, tmp)
        os.chmod(tmp, default_file_mode())
        card = dict(card, sha256=sha256_of(tmp), file=path.name)
        card_tmp = Path(tmp).with_suffix(".json.partial")
        card_tmp.write_text(json.dumps(card, indent=2) + "\n")
        os.replace(tmp, path)
        os.replace(card_tmp, path.with_suffix(CARD_SUFFIX))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_safetensors_checked(path: str | Path, expected_sha256: str | None = None):
    """Load a safetensors file after checking it against its card's (or the given) SHA-256."""
    path = Path(path)
    card = read_card(path)
    expected = expected_sha256 or card.get("sha256")
    if expected is None:
        raise WeightsError("model card has no sha256 field", path.with_suffix(CARD_SUFFIX))
    verify_sha256(path, expected)
    try:
        return load_file(str(path)), card
    except Exception as exc:
        raise WeightsError(f"not a readable safetensors file ({exc})", path) from None
