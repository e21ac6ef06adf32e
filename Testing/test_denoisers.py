"""The four denoisers: published layouts, every loading route, hash checks, slice-wise denoising."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from CTInvariancesLib.denoisers import DENOISER_NAMES, Denoiser, build_denoiser, load_denoiser
from CTInvariancesLib.errors import CTInvariancesError, WeightsError
from CTInvariancesLib.training.data import shared_data_dir
from CTInvariancesLib.weights import save_weights_with_card, sha256_of

REFERENCE = shared_data_dir().parent / "reference"  # ../shared/reference beside the data
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", DENOISER_NAMES)
def test_state_dict_equals_published_manifest(name):
    path = REFERENCE / f"ldctbench_{name}.json"
    if not path.exists():
        pytest.skip(f"needs {path}")
    ref = json.loads(path.read_text())
    model = build_denoiser(name)
    ours = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]
    assert ours == ref["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == ref["num_parameters"]


@pytest.mark.parametrize("name", DENOISER_NAMES)
def test_width_argument_and_shape_preserved(name):
    small = build_denoiser(name, width=8)
    x = torch.randn(2, 1, 40, 48)
    assert small(x).shape == x.shape
    n_small = sum(p.numel() for p in small.parameters())
    assert n_small < sum(p.numel() for p in build_denoiser(name).parameters())


def test_redcnn_forward_has_the_published_shortcuts():
    """With every conv weight zero, RED-CNN's output is its input (input->output shortcut)."""
    net = build_denoiser("redcnn", width=4)
    for p in net.parameters():
        torch.nn.init.zeros_(p)
    x = torch.randn(1, 1, 30, 30)
    assert torch.equal(net(x), x)


def _published_file(tmp_path: Path, name: str, seed: int = 0) -> tuple[Path, dict]:
    torch.manual_seed(seed)
    model = build_denoiser(name)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    path = tmp_path / f"{name}.pt"
    torch.save({"args": argparse.Namespace(lr=1e-4), "iteration": 10, "model_state_dict": state}, path)
    return path, state


def test_published_checkpoint_format_loads_with_expected_hash(tmp_path):
    path, state = _published_file(tmp_path, "cnn10")
    den = load_denoiser(str(path), sha256=sha256_of(path))
    assert den.name == "cnn10"
    for k, v in den.module.state_dict().items():
        assert torch.equal(v, state[k])


def test_published_name_checked_against_published_hash(tmp_path):
    """A file called cnn10.pt that is not the published one fails the published SHA-256."""
    path, _ = _published_file(tmp_path, "cnn10")
    expected = "SHA-256 mismatch: expected ee96e494.*cnn10.pt, or give --sha256"
    with pytest.raises(WeightsError, match=expected) as info:
        load_denoiser(str(path))
    assert info.value.path == str(path)


def test_wrong_architecture_is_named(tmp_path):
    path, _ = _published_file(tmp_path, "wganvgg")
    with pytest.raises(WeightsError, match="weights do not fit redcnn"):
        load_denoiser(str(path), arch="redcnn", sha256=sha256_of(path))


def test_safetensors_with_card_and_corruption(tmp_path):
    model = build_denoiser("wganvgg", width=8)
    path = save_weights_with_card(model.state_dict(), tmp_path / "w.safetensors",
                                  {"arch": "wganvgg", "name": "w", "input_convention": "normalized"})
    den = load_denoiser(str(path))
    x = torch.randn(1, 1, 16, 16) * 100
    with torch.no_grad():
        # loaded weights run in channels-last layout: the same sums in another order
        assert torch.allclose(den.module(x), model.eval()(x), atol=1e-5)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="SHA-256 mismatch") as info:
        load_denoiser(str(path))
    assert info.value.path == str(path)


def test_missing_card_is_named(tmp_path):
    path = save_weights_with_card(build_denoiser("cnn10", width=4).state_dict(), tmp_path / "c.safetensors",
                                  {"arch": "cnn10"})
    path.with_suffix(".json").unlink()
    with pytest.raises(WeightsError, match="model card c.json is missing"):
        load_denoiser(str(path))


def test_torchscript_custom_denoiser_in_hu(tmp_path):
    scripted = torch.jit.script(build_denoiser("cnn10", width=4))
    path = tmp_path / "mine.ts"
    scripted.save(str(path))
    den = load_denoiser(str(path), input_convention="hu")
    assert den.input_convention == "hu" and den.sha256 == sha256_of(path)
    x = torch.randn(1, 1, 20, 20)
    with torch.no_grad():
        assert torch.allclose(den(x), scripted(x))
    with pytest.raises(WeightsError, match="SHA-256 mismatch"):
        load_denoiser(str(path), sha256="0" * 64)


def test_module_callable_custom_denoiser():
    den = load_denoiser("custom_denoisers:identity", input_convention="normalized")
    x = np.full((2, 16, 16), 40.0, dtype=np.float32)
    np.testing.assert_allclose(den.denoise_slices(x), x, atol=1e-3)
    smooth = load_denoiser("custom_denoisers:smoother", input_convention="hu")
    noisy = np.random.default_rng(0).normal(0, 20, (1, 32, 32)).astype(np.float32)
    assert smooth.denoise_slices(noisy).std() < 0.5 * noisy.std()


def test_unknown_denoiser_specs():
    with pytest.raises(CTInvariancesError, match="no such denoiser"):
        load_denoiser("nonexistent_net")
    with pytest.raises(CTInvariancesError, match="cannot import the denoiser factory"):
        load_denoiser("no_such_module_xyz:make")
    with pytest.raises(ValueError, match="unknown denoiser"):
        build_denoiser("unet")


def test_denoise_slices_batches_consistently():
    torch.manual_seed(1)
    den = Denoiser(build_denoiser("cnn10", width=8), "cnn10")
    x = np.random.default_rng(1).normal(0, 30, (5, 32, 32)).astype(np.float32)
    one = den.denoise_slices(x, batch_size=1)
    many = den.denoise_slices(x, batch_size=4)
    np.testing.assert_allclose(one, many, atol=1e-3)
    calls = []
    den.denoise_slices(x, batch_size=2, progress=calls.append)
    assert calls == [2, 2, 1]


def test_torch_export_program(tmp_path):
    net = build_denoiser("cnn10", width=4).eval()
    x = torch.randn(2, 1, 24, 24)
    dims = {"x": {0: torch.export.Dim("b", max=64), 2: torch.export.Dim("h", min=8, max=4096),
                  3: torch.export.Dim("w", min=8, max=4096)}}
    path = tmp_path / "mine.pt2"
    torch.export.save(torch.export.export(net, (x,), dynamic_shapes=dims), str(path))
    den = load_denoiser(str(path), input_convention="hu")
    y = torch.randn(1, 1, 40, 32)
    with torch.no_grad():
        assert torch.allclose(den(y), net(y), atol=1e-5)


@pytest.mark.parametrize("kernel, padding", [(9, 4), (5, 0), ((3, 5), (1, 2)), ((4, 2), (3, 0))], ids=str)
def test_fast_single_channel_layers_equal_onednn(kernel, padding):
    """The first layer's input gradient and the last layer's output (a convolution and a transposed
    one to one channel) by matrix products must equal oneDNN's: odd, even, rectangular kernels;
    same, valid and uneven padding; with and without gradients."""
    import copy

    from CTInvariancesLib.denoisers.single_channel import fast_single_channel_layers

    torch.manual_seed(0)
    reference = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, kernel, padding=padding),
        torch.nn.ReLU(),
        torch.nn.ConvTranspose2d(6, 5, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.ConvTranspose2d(5, 1, kernel, padding=padding),
        torch.nn.Conv2d(1, 1, 3, padding=1),  # one channel in and out
        torch.nn.ReLU(),
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.Conv2d(4, 1, kernel, padding=padding, bias=False),
    ).requires_grad_(False)
    fast = copy.deepcopy(reference).to(memory_format=torch.channels_last)
    x = (torch.randn(3, 1, 23, 30) * 20).requires_grad_(True)
    with fast_single_channel_layers(fast) as count:
        got_out = fast(x)
        with torch.no_grad():
            got_no_grad = fast(x)
        taken = []
        node = got_out.grad_fn
        while node is not None:
            taken.append(node.name())
            node = node.next_functions[0][0] if node.next_functions else None
    assert count == 5  # not the transposed 6 -> 5 layer
    assert sum(n.endswith("_LastLayerBackward") for n in taken) == 3, taken
    assert sum(n.endswith("_FirstLayerBackward") for n in taken) == 2, taken
    want_out = reference(x)
    r = torch.randn_like(want_out)
    got = torch.autograd.grad(got_out, x, r)[0]
    want = torch.autograd.grad(want_out, x, r)[0]
    tol = 1e-5 * float(want_out.detach().abs().max())  # channels-last sums in another order
    assert torch.allclose(got_out, want_out, atol=tol) and torch.allclose(got_no_grad, want_out, atol=tol)
    assert torch.allclose(got, want, atol=1e-5 * float(want.abs().max()))


def test_fast_single_channel_layers_only_where_they_apply():
    """Weights that train, strided or multi-channel layers, and inputs without gradient (first
    layers) keep the layer's own code; after the block the module scripts as before (users script
    loaded networks)."""
    from CTInvariancesLib.denoisers.single_channel import fast_single_channel_layers

    strided = torch.nn.Conv2d(1, 4, 3, stride=2)
    multi = torch.nn.Conv2d(2, 4, 3)
    up = torch.nn.ConvTranspose2d(4, 1, 4, stride=2)
    with fast_single_channel_layers(torch.nn.Sequential(strided, multi, up)) as count:
        assert count == 0
    layer = torch.nn.Conv2d(1, 4, 3, padding=1)
    x = torch.randn(1, 1, 8, 8, requires_grad=True)
    with fast_single_channel_layers(layer) as count, fast_single_channel_layers(layer) as inner:
        assert (count, inner) == (1, 0)
        assert "_FirstLayer" not in layer(x).grad_fn.name()  # weights still train
        layer.requires_grad_(False)
        assert "_FirstLayer" in layer(x).grad_fn.name()
        assert layer(x.detach()).grad_fn is None
    assert "_FirstLayer" not in layer(x).grad_fn.name()
    torch.jit.script(layer)


def test_consistency_step_takes_the_fast_single_channel_layers(monkeypatch):
    """The consistency step's speed on the CPU rests on the fast layers: they must be taken there."""
    from CTInvariancesLib.denoisers import single_channel
    from CTInvariancesLib.invariance.consistency import consistency_project

    calls = []
    real = single_channel.sum_of_shifted_taps
    monkeypatch.setattr(single_channel, "sum_of_shifted_taps", lambda *a: calls.append(1) or real(*a))
    den = Denoiser(build_denoiser("cnn10", width=4).requires_grad_(False), "cnn10")
    x = np.full((40, 40), -1000.0, np.float32)
    x[8:32, 8:32] = 40.0
    consistency_project(den, x, x[None] + 5.0, steps=2, tolerance=0)
    assert calls
