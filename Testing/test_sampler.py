"""InvarianceSampler and the sampling pipeline: tiling, seeding, outputs, streaming, failure safety."""

from __future__ import annotations

import json

import nrrd
import numpy as np
import pytest
import torch
from engine_fixtures import TINY_CINN, TINY_CVAE

from CTInvariancesLib.denoisers.loading import Denoiser
from CTInvariancesLib.invariance.cinn import ConditionalINN
from CTInvariancesLib.invariance.cvae import ConditionalVAE
from CTInvariancesLib.invariance.pipeline import Cancelled, sample_volume
from CTInvariancesLib.invariance.sampler import InvarianceSampler, latent_draws, tile_starts
from CTInvariancesLib.io import CTVolume, read_volume


def _smooth(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


@pytest.fixture(scope="module")
def sampler() -> InvarianceSampler:
    torch.manual_seed(0)
    vae, inn = ConditionalVAE(TINY_CVAE), ConditionalINN(TINY_CINN)
    vae.train()
    inn.train()
    with torch.no_grad():  # data-dependent initialisation, then frozen
        x = torch.randn(16, 1, 32, 32)
        inn(vae.encode(x, x).sample(), x)
        vae(x, x)
    return InvarianceSampler(Denoiser(_smooth, "smooth3"), vae, inn, "cpu")


def _phantom(h=100, w=90, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = np.where((yy - h / 2) ** 2 / (0.4 * h) ** 2 + (xx - w / 2) ** 2 / (0.4 * w) ** 2 < 1, 40.0, -1000.0)
    return (img + 20 * rng.standard_normal((h, w))).astype(np.float32)


def test_tiles_cover_the_slice():
    for length in (32, 33, 90, 512):
        starts = tile_starts(length, 32, 4)
        covered = np.zeros(length, bool)
        for s in starts:
            covered[s : s + 32] = True
        assert covered.all() and starts[-1] + 32 == length and starts[0] == 0


def test_latent_draws_do_not_depend_on_how_many_are_drawn():
    a = latent_draws(5, 32, seed=3)
    b = latent_draws(2, 32, seed=3, offset=3)
    assert torch.equal(a[3:], b)
    assert not torch.equal(latent_draws(1, 32, seed=4), a[:1])


def test_seeded_samples_are_bit_identical_and_shaped(sampler):
    x = _phantom()
    a = sampler.sample(x, 4, seed=11)
    b = sampler.sample(x, 4, seed=11)
    c = sampler.sample(x, 4, seed=12)
    assert a.samples.shape == (4, 100, 90) and a.denoised.shape == (100, 90)
    assert np.array_equal(a.samples, b.samples)
    assert not np.array_equal(a.samples, c.samples)
    # sample k draws the same latent whatever K is; the blend of overlapping tiles uses the K samples'
    # tile means, so only tile interiors (weight 1 in one tile only) are the same for K = 2 and 4
    d = sampler.sample(x, 2, seed=11)
    interior = (slice(4, 28), slice(4, 28))  # patch 32, overlap 4: pixels covered by one tile only
    assert np.allclose(d.samples[:, interior[0], interior[1]], a.samples[:2, interior[0], interior[1]],
                       atol=1e-3)


def test_independent_tile_latents_differ_between_tiles_and_slices(sampler):
    x = np.tile(_phantom(32, 32), (2, 2))  # two identical tiles side by side, no overlap
    shared = InvarianceSampler(sampler.denoiser, sampler.cvae, sampler.cinn, overlap=0, skip_air=False,
                               jitter=False)
    indep = InvarianceSampler(sampler.denoiser, sampler.cvae, sampler.cinn, overlap=0, skip_air=False,
                              tile_latents="independent", jitter=False)
    a = shared.sample(x, 2, seed=1).samples
    b = indep.sample(x, 2, seed=1).samples
    # same v and (up to f's border effects) the same condition: nearly the same tile
    shared_diff = np.abs(a[:, :32, :32] - a[:, :32, 32:]).mean()
    indep_diff = np.abs(b[:, :32, :32] - b[:, :32, 32:]).mean()
    assert indep_diff > 5 * shared_diff, (shared_diff, indep_diff)
    assert np.array_equal(b, indep.sample(x, 2, seed=1).samples)
    assert not np.array_equal(b, indep.sample(x, 2, seed=1, slice_index=1).samples)


def test_air_tiles_are_left_as_they_are(sampler):
    x = np.full((96, 96), -1000.0, np.float32)
    x[40:56, 40:56] = 50.0
    res = sampler.sample(x, 3, seed=0)
    assert res.sampled_mask[48, 48] and not res.sampled_mask[2, 2]
    assert np.array_equal(res.samples[:, 2, 2], np.full(3, x[2, 2]))
    full = InvarianceSampler(sampler.denoiser, sampler.cvae, sampler.cinn, skip_air=False).sample(
        x, 3, seed=0
    )
    assert full.sampled_mask.all()


def test_slices_smaller_than_a_patch_are_padded(sampler):
    res = sampler.sample(_phantom(20, 25), 2, seed=0)
    assert res.samples.shape == (2, 20, 25) and np.isfinite(res.samples).all()


def test_out_of_memory_backs_off_instead_of_failing(sampler, monkeypatch):
    calls = []
    real = sampler._decode_jobs

    def flaky(jobs, fx_t, v):
        calls.append(len(jobs))
        if len(jobs) > 4:
            raise torch.OutOfMemoryError("simulated")
        return real(jobs, fx_t, v)

    monkeypatch.setattr(sampler, "_decode_jobs", flaky)
    x = _phantom()
    res = sampler.sample(x, 4, seed=1, batch_size=32)
    assert sampler.last_batch_size <= 4 and calls[0] == 32
    monkeypatch.undo()
    ref = sampler.sample(x, 4, seed=1, batch_size=32)
    assert np.allclose(res.samples, ref.samples, atol=1e-3)


def _volume(k=3) -> CTVolume:
    arr = np.stack([_phantom(seed=s) for s in range(k)])
    return CTVolume(arr, spacing=(0.7, 0.8, 2.5), origin=(-10.0, 20.0, 30.0), source="phantom")


def test_sample_volume_writes_all_outputs_with_geometry(sampler, tmp_path):
    vol = _volume()
    metrics = sample_volume(vol, sampler, tmp_path / "run", n_samples=3, seed=5, parameters={"p": 1},
                            consistency_steps=0)
    out = tmp_path / "run"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["samples.seq.nrrd", "denoised.nrrd", "std_map.nrrd", "metrics.json", "run.json"]
    )
    data, header = nrrd.read(str(out / "samples.seq.nrrd"))
    assert data.shape == (90, 100, 3, 3)  # I J K samples, list axis last as Slicer writes it
    assert header["kinds"] == ["domain", "domain", "domain", "list"]
    direct = sampler.sample(vol.array[1], 3, seed=5)
    assert np.array_equal(data[:, :, 1, :].transpose(2, 1, 0), direct.samples)
    std = read_volume(out / "std_map.nrrd")
    assert np.allclose(std.array[1], direct.samples.std(0), atol=1e-3)
    den = read_volume(out / "denoised.nrrd")
    assert den.spacing == pytest.approx(vol.spacing) and den.origin == pytest.approx(vol.origin)
    assert np.allclose(den.array[0], sampler.denoiser.denoise_slices(vol.array[:1])[0], atol=1e-4)
    m = json.loads((out / "metrics.json").read_text())
    assert m == json.loads(json.dumps(metrics)) and m["n_slices"] == 3
    assert 0 <= m["fidelity"]["median_ratio"] < 10
    run = json.loads((out / "run.json").read_text())
    assert run["seed"] == 5 and run["n_samples"] == 3 and run["denoiser"]["name"] == "smooth3"
    assert run["torch_version"] == torch.__version__


def test_cancelled_or_failed_run_leaves_nothing(sampler, tmp_path):
    calls = {"n": 0}

    def stop_after_one():
        calls["n"] += 1
        return calls["n"] > 1

    with pytest.raises(Cancelled):
        sample_volume(_volume(), sampler, tmp_path / "c", n_samples=2, should_stop=stop_after_one)
    assert not (tmp_path / "c").exists()  # the folder it created is gone too
    with pytest.raises(ZeroDivisionError):  # any failure after the first slice
        sample_volume(_volume(), sampler, tmp_path / "f", n_samples=2, progress=lambda n: 1 / 0)
    assert not (tmp_path / "f").exists()
    (tmp_path / "given").mkdir()  # a folder the user made stays, empty
    with pytest.raises(ZeroDivisionError):
        sample_volume(_volume(), sampler, tmp_path / "given", n_samples=2, progress=lambda n: 1 / 0)
    assert list((tmp_path / "given").iterdir()) == []


def test_refuses_to_overwrite_earlier_results(sampler, tmp_path):
    from CTInvariancesLib.errors import InputError

    sample_volume(_volume(1), sampler, tmp_path, n_samples=1, check=False)
    with pytest.raises(InputError, match="already holds"):
        sample_volume(_volume(1), sampler, tmp_path, n_samples=1)


def test_each_sample_has_its_own_tile_grid(sampler):
    x = _phantom(120, 120)
    jittered = InvarianceSampler(sampler.denoiser, sampler.cvae, sampler.cinn, overlap=8, skip_air=False)
    fixed = InvarianceSampler(sampler.denoiser, sampler.cvae, sampler.cinn, overlap=8, skip_air=False,
                              jitter=False)
    a, b = jittered.sample(x, 4, seed=2).samples, fixed.sample(x, 4, seed=2).samples
    assert np.array_equal(a, jittered.sample(x, 4, seed=2).samples)  # reproducible
    assert not np.allclose(a, b)
    assert np.isfinite(a).all() and a.shape == b.shape == (4, 120, 120)
