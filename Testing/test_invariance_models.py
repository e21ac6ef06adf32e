"""The cVAE and cINN: published layouts, the shared interface, exact invertibility and log-det."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from engine_fixtures import TINY_CINN, TINY_CVAE

from CTInvariancesLib.errors import CTInvariancesError, WeightsError
from CTInvariancesLib.invariance.cinn import CINNConfig, ConditionalINN
from CTInvariancesLib.invariance.cvae import ConditionalVAE, CVAEConfig, upsample2
from CTInvariancesLib.invariance.models import (
    PUBLISHED_SHA256,
    import_published,
    load_cinn,
    load_cvae,
    save_cinn,
    save_cvae,
)

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"

def _reference(name: str) -> dict:
    import os

    root = Path(os.environ.get("CTINVARIANCES_DATA", REFERENCE.parent / "data")).parent / "reference"
    path = root / name if (root / name).exists() else REFERENCE / name
    if not path.exists():
        pytest.skip(f"reference manifest {name} not found in {REFERENCE}")
    return json.loads(path.read_text())


def _layout(model: torch.nn.Module) -> list:
    return [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]


@pytest.mark.parametrize(
    "cls,cfg,manifest",
    [
        (ConditionalVAE, CVAEConfig.paper(), "ldct_invariances_cvae_BigAE.json"),
        (ConditionalINN, CINNConfig.paper(), "ldct_invariances_cinn_ConditionalTransformer.json"),
    ],
)
def test_paper_size_state_dict_equals_published_layout(cls, cfg, manifest):
    ref = _reference(manifest)
    model = cls(cfg)
    assert _layout(model) == [list(e) for e in ref["state_dict"]]
    assert sum(p.numel() for p in model.parameters()) == ref["num_parameters"]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == ref["num_trainable_parameters"]


def test_compact_models_are_small_and_share_the_interface():
    vae, inn = ConditionalVAE(CVAEConfig.compact()), ConditionalINN(CINNConfig.compact())
    n_vae = sum(p.numel() for p in vae.parameters())
    n_inn = sum(p.numel() for p in inn.parameters())
    assert 5e5 < n_vae < 5e6 and 5e5 < n_inn < 5e6
    x, fx = torch.randn(3, 1, 64, 64), torch.randn(3, 1, 64, 64)
    vae.train()
    inn.train()
    q = vae.encode(x, fx)
    assert q.mean.shape == (3, 64) and q.kl().shape == (3,)
    z = q.sample()
    assert vae.decode(z, fx).shape == (3, 1, 64, 64)
    v, logdet = inn(z, fx)
    assert v.shape == (3, 64) and logdet.shape == (3,)
    assert inn.reverse(v, fx).shape == (3, 64)


def test_upsample_equals_nearest_interpolation():
    x = torch.randn(2, 3, 5, 7)
    assert torch.equal(upsample2(x), torch.nn.functional.interpolate(x, scale_factor=2))


def test_cinn_reverse_inverts_forward_and_logdet_is_exact():
    torch.manual_seed(0)
    inn = ConditionalINN(TINY_CINN).double()
    fx = torch.randn(4, 1, 32, 32, dtype=torch.float64)
    inn.train()
    inn(torch.randn(64, 32, dtype=torch.float64), fx.repeat(16, 1, 1, 1))  # ActNorm data init
    inn.eval()
    z = torch.randn(4, 32, dtype=torch.float64) * 2
    v, logdet = inn(z, fx)
    assert (inn.reverse(v, fx) - z).abs().max() < 1e-10
    for i in range(2):  # log|det J| from autograd equals the flow's log-det
        jac = torch.autograd.functional.jacobian(lambda t, i=i: inn(t[None], fx[i : i + 1])[0][0], z[i])
        assert torch.allclose(torch.linalg.slogdet(jac)[1], logdet[i], atol=1e-8)


def test_actnorm_is_not_reinitialised_in_eval_mode():
    inn = ConditionalINN(TINY_CINN).eval()
    before = inn.flow.sub_layers[0].norm_layer.scale.clone()
    v, _ = inn(torch.randn(1, 32) * 5, torch.randn(1, 1, 32, 32))  # a single sample: no NaN
    assert torch.isfinite(v).all()
    assert torch.equal(inn.flow.sub_layers[0].norm_layer.scale, before)


def test_save_and_load_roundtrip_and_hash_check(tmp_path):
    vae, inn = ConditionalVAE(TINY_CVAE).eval(), ConditionalINN(TINY_CINN).eval()
    vpath = save_cvae(vae, tmp_path / "cvae.safetensors", {"steps": 0})
    ipath = save_cinn(
        inn,
        tmp_path / "cinn-x.safetensors",
        {"name": "x"},
        json.loads(vpath.with_suffix(".json").read_text()),
        {"steps": 0},
    )
    vae2, card = load_cvae(tmp_path)
    inn2, _ = load_cinn(ipath)
    z, fx = torch.randn(2, 32), torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(vae.decode(z, fx), vae2.decode(z, fx))
        assert torch.equal(inn(z, fx)[0], inn2(z, fx)[0])
    assert card["config"]["patch"] == 32
    with pytest.raises(WeightsError, match="not a cVAE"):
        load_cvae(ipath)
    data = bytearray(ipath.read_bytes())
    data[-1] ^= 1
    ipath.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="SHA-256 mismatch"):
        load_cinn(ipath)


def test_import_published_checks_hash_and_names_the_file(tmp_path):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    torch.save({"epoch": 1, "model_state_dict": {}}, downloads / "cnn10-vae.pt")
    torch.save({"epoch": 1, "model_state_dict": {}}, downloads / "cnn10-cinn.pt")
    with pytest.raises(WeightsError, match="SHA-256 mismatch") as err:
        import_published(downloads, tmp_path / "out")
    assert "cnn10-vae.pt" in str(err.value)
    assert not (tmp_path / "out").exists()
    (downloads / "cnn10-cinn.pt").unlink()
    with pytest.raises(WeightsError, match="incomplete"):
        import_published(downloads, tmp_path / "out")
    with pytest.raises(WeightsError, match="no published"):
        import_published(tmp_path / "out" if (tmp_path / "out").exists() else tmp_path, tmp_path / "o2")
    assert set(PUBLISHED_SHA256) == {
        f"{n}-{k}" for n in ("cnn10", "redcnn", "wganvgg", "dugan") for k in ("vae", "cinn")
    }


def test_import_published_converts_a_file_in_the_published_layout(tmp_path, monkeypatch):
    """A file in the published {epoch, model_state_dict} layout, at paper size, converts and
    samples identically (the real downloads cannot be fetched here; their hashes are checked by
    import_published, so this test substitutes its own files' hashes)."""
    from CTInvariancesLib.invariance import models

    downloads = tmp_path / "dl"
    downloads.mkdir()
    torch.manual_seed(0)
    vae, inn = ConditionalVAE(CVAEConfig.paper()), ConditionalINN(CINNConfig.paper(), seed=3)
    torch.save({"epoch": 5, "model_state_dict": vae.state_dict()}, downloads / "cnn10-vae.pt")
    torch.save({"epoch": 5, "model_state_dict": inn.state_dict()}, downloads / "cnn10-cinn.pt")
    from CTInvariancesLib.weights import sha256_of

    monkeypatch.setitem(models.PUBLISHED_SHA256, "cnn10-vae", sha256_of(downloads / "cnn10-vae.pt"))
    monkeypatch.setitem(models.PUBLISHED_SHA256, "cnn10-cinn", sha256_of(downloads / "cnn10-cinn.pt"))
    written = import_published(downloads, tmp_path / "models")
    assert [p.name for p in written] == ["cvae.safetensors", "cinn-cnn10.safetensors"]
    with pytest.raises(WeightsError, match="--overwrite"):  # imported before: kept
        import_published(downloads, tmp_path / "models")
    vae2, _ = load_cvae(written[0])
    inn2, _ = load_cinn(written[1])
    vae.eval()
    inn.eval()
    fx, v = torch.randn(2, 1, 128, 128), torch.randn(2, 256)
    with torch.no_grad():
        assert torch.equal(inn.reverse(v, fx), inn2.reverse(v, fx))
        z = inn.reverse(v, fx)
        assert torch.equal(vae.decode(z, fx), vae2.decode(z, fx))


def test_import_published_copies_the_published_denoisers_where_the_panel_lists_them(tmp_path, monkeypatch):
    """ldct-benchmark's <name>.pt, hash-checked, lands in the user's denoisers folder: `models list`
    and the Slicer panel (both model_folders.denoiser_entries) offer it as user/<name>."""
    import argparse

    from CTInvariancesLib.denoisers import build_denoiser, load_denoiser, loading
    from CTInvariancesLib.model_folders import denoiser_entries
    from CTInvariancesLib.weights import sha256_of

    downloads = tmp_path / "dl"
    downloads.mkdir()
    torch.manual_seed(0)
    net = build_denoiser("cnn10")
    ckpt = {"args": argparse.Namespace(lr=1e-4), "iteration": 7, "model_state_dict": net.state_dict()}
    torch.save(ckpt, downloads / "cnn10.pt")
    user = tmp_path / "user-models"
    monkeypatch.setenv("CTINVARIANCES_USER_MODELS", str(user))
    with pytest.raises(WeightsError, match="SHA-256 mismatch") as err:  # not the published file
        import_published(downloads)
    assert "cnn10.pt" in str(err.value) and not (user / "denoisers" / "cnn10.pt").exists()
    monkeypatch.setitem(loading.PUBLISHED_SHA256, "cnn10", sha256_of(downloads / "cnn10.pt"))
    written = import_published(downloads)
    assert written == [user / "denoisers" / "cnn10.pt"]
    with pytest.raises(CTInvariancesError, match="--overwrite"):  # imported before: kept
        import_published(downloads)
    assert import_published(downloads, overwrite=True) == written
    assert not list((user / "denoisers").glob("*.partial"))
    entry = next(e for e in denoiser_entries() if e["where"] == "user")
    assert entry["name"] == "user/cnn10" and entry["path"] == str(written[0])
    den = load_denoiser("user/cnn10")
    x = torch.randn(1, 1, 32, 32) * 100
    net.eval()
    with torch.no_grad():
        expected = loading.normalized_to_hu(net(loading.hu_to_normalized(x)))
        assert torch.allclose(den(x), expected)
