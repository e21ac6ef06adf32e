"""The engine's commands as a user runs them: sample, models import-published / list, train errors."""

from __future__ import annotations

import json
from pathlib import Path

import nrrd
import pytest
import torch
from engine_fixtures import TINY_CINN, TINY_CVAE
from test_cli import assert_one_line_error, run

from CTInvariancesLib.invariance.cinn import ConditionalINN
from CTInvariancesLib.invariance.cvae import ConditionalVAE
from CTInvariancesLib.invariance.models import save_cinn, save_cvae


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-engine")
    torch.manual_seed(0)
    vae, inn = ConditionalVAE(TINY_CVAE), ConditionalINN(TINY_CINN)
    vae.train()
    inn.train()
    with torch.no_grad():
        x = torch.randn(16, 1, 32, 32)
        vae(x, x)
        inn(torch.randn(16, 32), x)
    vpath = save_cvae(vae.eval(), folder / "cvae.safetensors", {"steps": 0})
    save_cinn(
        inn.eval(),
        folder / "cinn-cnn10.safetensors",
        {"name": "cnn10"},
        json.loads(vpath.with_suffix(".json").read_text()),
        {"steps": 0},
    )
    return folder


def _sample(ct_small, models, out, *extra):
    return run(
        "sample",
        str(ct_small),
        "--denoiser",
        "cnn10",
        "--cvae",
        str(models),
        "--samples",
        "3",
        "--seed",
        "4",
        "--out",
        str(out),
        "--device",
        "cpu",
        *extra,
    )


def test_sample_writes_the_run_folder(tiny_models, ct_small, tmp_path):
    out = tmp_path / "run"
    proc = _sample(ct_small, tiny_models, out)
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and "ratio" in proc.stdout
    data, header = nrrd.read(str(out / "samples.seq.nrrd"))
    assert data.shape == (128, 128, 1, 3)
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["seed"] == 4 and run_json["cinn"]["sha256"]
    assert json.loads((out / "metrics.json").read_text())["n_slices"] == 1
    again = _sample(ct_small, tiny_models, tmp_path / "run2")
    assert again.returncode == 0
    assert (out / "samples.seq.nrrd").read_bytes() == (tmp_path / "run2" / "samples.seq.nrrd").read_bytes()


def test_sample_from_the_prior_needs_no_cinn(tiny_models, ct_small, tmp_path):
    proc = _sample(ct_small, tiny_models, tmp_path / "p", "--prior", "--denoiser", "redcnn", "--no-check")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "p" / "run.json").read_text())["cinn"] is None


def test_sample_errors_are_one_line_and_write_nothing(tiny_models, ct_small, tmp_path):
    out = tmp_path / "e"
    proc = _sample(ct_small, tiny_models, out, "--denoiser", "redcnn")
    assert_one_line_error(proc, "cinn-redcnn.safetensors", "not found")
    assert not out.exists()
    assert_one_line_error(
        _sample(ct_small, tiny_models, out, "--samples", "0"), "--samples", "0 is out of range"
    )
    assert_one_line_error(_sample(ct_small, tmp_path / "nope", out), "cVAE weights not found")
    ok = _sample(ct_small, tiny_models, out, "--samples", "1", "--no-check")
    assert ok.returncode == 0, ok.stderr
    assert_one_line_error(_sample(ct_small, tiny_models, out), "already holds")


def test_noise_sampler_with_consistency_keeps_raw_samples_on_request(ct_small, tmp_path):
    out = tmp_path / "n"
    proc = run(
        "sample",
        str(ct_small),
        "--denoiser",
        "cnn10",
        "--sampler",
        "noise",
        "--samples",
        "4",
        "--consistency",
        "3",
        "--keep-raw",
        "--out",
        str(out),
        "--device",
        "cpu",
    )
    assert proc.returncode == 0, proc.stderr
    assert "fresh-noise reference" in proc.stdout and "raw:" in proc.stdout
    raw, _ = nrrd.read(str(out / "samples_raw.seq.nrrd"))
    final, _ = nrrd.read(str(out / "samples.seq.nrrd"))
    assert raw.shape == final.shape == (128, 128, 1, 4) and not (raw == final).all()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["fidelity"]["median_rmse_output_hu"] < metrics["fidelity_raw"]["median_rmse_output_hu"]
    assert metrics["diversity"]["std_map_median_hu"] > 0 and 0 < metrics["fresh_noise_ratio"]["median"] < 2
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["sampler"] == "noise" and run_json["consistency"] == {"steps": 3, "method": "ncg"}
    plain = tmp_path / "p"
    proc = run(
        "sample",
        str(ct_small),
        "--denoiser",
        "cnn10",
        "--sampler",
        "noise",
        "--samples",
        "2",
        "--consistency",
        "0",
        "--keep-raw",
        "--out",
        str(plain),
        "--device",
        "cpu",
    )
    assert proc.returncode == 0, proc.stderr
    assert not (plain / "samples_raw.seq.nrrd").exists()  # raw samples are the samples
    assert "fidelity_raw" not in json.loads((plain / "metrics.json").read_text())
    bad = run(
        "sample", str(ct_small), "--denoiser", "cnn10", "--consistency", "-1", "--out", str(tmp_path / "b")
    )
    assert_one_line_error(bad, "--consistency", "-1 is out of range")


def test_import_published_errors_name_the_folder(tmp_path):
    proc = run("models", "import-published", "--dir", str(tmp_path))
    assert_one_line_error(proc, str(tmp_path), "no published")
    (tmp_path / "dugan-vae.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "dugan-cinn.pt").write_bytes(b"not a checkpoint")
    proc = run("models", "import-published", "--dir", str(tmp_path), "--out", str(tmp_path / "o"))
    assert_one_line_error(proc, "dugan-vae.pt", "SHA-256 mismatch")


def test_models_list_shows_bundled_models():
    proc = run("models", "list")
    assert proc.returncode == 0, proc.stderr
    assert "denoisers/cnn10.safetensors" in proc.stdout


def test_train_cinn_refuses_a_missing_cvae(tmp_path):
    proc = run(
        "train",
        "cinn",
        "--denoiser",
        "cnn10",
        "--cvae",
        str(tmp_path / "none"),
        "--out",
        str(tmp_path / "o"),
        "--device",
        "cpu",
    )
    assert_one_line_error(proc, "cVAE weights not found")


def test_models_install_puts_a_denoiser_where_list_and_the_panel_find_it(tmp_path, monkeypatch, capsys):
    from CTInvariancesLib.cli.main import main
    from CTInvariancesLib.model_folders import denoiser_entries, models_dir

    user = tmp_path / "user-models"
    monkeypatch.setenv("CTINVARIANCES_USER_MODELS", str(user))
    bundled = models_dir() / "denoisers" / "cnn10.safetensors"
    assert main(["models", "install", str(bundled), "--name", "mine"]) == 0
    assert "--denoiser mine" in capsys.readouterr().out
    assert {
        "name": "mine",
        "path": str(user / "denoisers" / "mine.safetensors"),
        "where": "user",
    } in denoiser_entries()
    assert (user / "denoisers" / "mine.json").exists() and not list((user / "denoisers").glob(".*partial"))
    assert main(["models", "list"]) == 0 and "mine" in capsys.readouterr().out
    assert main(["models", "install", str(bundled), "--name", "mine"]) == 2  # kept unless --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(["models", "install", str(bundled), "--name", "../evil"]) == 2
    assert "model name" in capsys.readouterr().err and not (user / "evil.safetensors").exists()
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(bundled.read_bytes()[:-10] + b"0123456789")
    (tmp_path / "broken.json").write_bytes(bundled.with_suffix(".json").read_bytes())
    assert main(["models", "install", str(broken)]) == 2  # does not load: not offered
    assert "SHA-256" in capsys.readouterr().err and not (user / "denoisers" / "broken.safetensors").exists()


def test_train_install_name_is_checked_before_any_training(tmp_path, monkeypatch, capsys):
    from CTInvariancesLib.cli.main import main

    monkeypatch.setenv("CTINVARIANCES_USER_MODELS", str(tmp_path / "user"))
    (tmp_path / "user" / "denoisers").mkdir(parents=True)
    (tmp_path / "user" / "denoisers" / "taken.pt").write_bytes(b"x")
    for name, why in (("a/b", "model name"), ("taken", "exists")):
        args = ["train", "denoiser", "--arch", "cnn10", "--out", str(tmp_path / "run"), "--install", name]
        assert main(args + ["--steps", "1", "--device", "cpu"]) == 2
        assert why in capsys.readouterr().err and not (tmp_path / "run").exists()
