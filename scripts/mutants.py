"""Break the engine on purpose and show that the tests notice.

    .venv/bin/python scripts/mutants.py [--only NAME ...] [--list]

Each mutant is one textual change to the library ("a sampler with no variation", "a cINN that
ignores f(x)", ...). For each, the committed files are copied to a scratch folder, the change is
applied there (never in this checkout), and the tests that should catch it are run against the copy.
A mutant is *killed* when at least one of them fails; the script exits 1 if any mutant survives.
The shared data and the simulated-pair cache of this checkout are reused (read only).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIB = "CTInvariances/CTInvariancesLib/"
PLANTED = (
    "Testing/test_engine_training.py::test_planted_region_that_the_denoiser_ignores_is_where_samples_vary"
)


@dataclass(frozen=True)
class Mutant:
    name: str
    what: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


ANALYSIS = "Testing/test_analysis.py::"

MUTANTS = (
    Mutant(
        "slicer-adapter-ignores-slice-offset",
        "results of a --slices run are placed at the volume's first slice",
        "CTInvariances/CTInvariancesSlicer/results.py",
        "        m = _ijk_to_ras(input_volume_node, first)",
        "        m = _ijk_to_ras(input_volume_node, 0)",
        ("Testing/test_slicer_adapter.py::test_results_become_nodes_on_the_input_geometry",),
    ),
    Mutant(
        "job-leaves-partial-output",
        "a failed or cancelled main job keeps its half-written folder",
        LIB + "job.py",
        "    except BaseException:\n        shutil.rmtree(tmp, ignore_errors=True)\n        raise",
        "    except BaseException:\n        raise",
        ("Testing/test_job.py::test_cancelled_job_leaves_nothing",),
    ),
    Mutant(
        "analysis-reference-one-realisation",
        "method A compares x~ - x with one realisation's noise, not a difference's",
        LIB + "analysis/reference.py",
        "level = c * np.sqrt(2.0) * kappa * sd_n",
        "level = c * kappa * sd_n",
        (ANALYSIS + "test_method_a_null_and_power",),
    ),
    Mutant(
        "analysis-probe-erasure-before-step",
        "method C measures the probe before the consistency step",
        LIB + "analysis/probes.py",
        "erasure[i] = float(((cons.samples[gi] - x)[w] * p[w]).sum()) / pp",
        "erasure[i] = float(((inserted[gi] - x)[w] * p[w]).sum()) / pp",
        (ANALYSIS + "test_probe_identity_erases_nothing",),
    ),
    Mutant(
        "analysis-kinds-swapped",
        "method B calls a vanished structure appeared",
        LIB + "analysis/structures.py",
        'if contained(comp_s, b):\n        return "appeared"',
        'if contained(comp_s, b):\n        return "disappeared"',
        (ANALYSIS + "test_method_b_finds_a_planted_nodule",),
    ),
    Mutant(
        "spatial-sampler-no-variation",
        "the spatial sampler decodes the same latent map for every sample",
        LIB + "invariance/sampler.py",
        "v = latent_draws(stop - start, shape, seed, temperature, offset=start).to(self.device)",
        "v = latent_draws(1, shape, seed, temperature, offset=0)"
        ".expand(stop - start, -1, -1, -1).to(self.device)",
        (
            "Testing/test_spatial_engine.py::test_whole_slice_samples_vary_come_from_the_latent_and_do_not_depend_on_k_or_batch",
        ),
    ),
    Mutant(
        "spatial-cinn-ignores-noise-level",
        "the spatial cINN drops the noise-level channel",
        LIB + "invariance/spatial.py",
        "fx = torch.cat([fx, noise_level_map(noise_hu, fx)], 1)",
        "noise_hu = 20.0\n            fx = torch.cat([fx, noise_level_map(noise_hu, fx)], 1)",
        ("Testing/test_spatial_engine.py::test_the_condition_matters_f_of_x_and_noise_level",),
    ),
    Mutant(
        "spatial-cinn-ignores-f-of-x",
        "the spatial cINN's condition features are multiplied by 0 (it models z without f(x))",
        LIB + "invariance/spatial.py",
        "    def forward(self, fx: torch.Tensor) -> torch.Tensor:\n        return self.net(fx)",
        "    def forward(self, fx: torch.Tensor) -> torch.Tensor:\n        return self.net(fx) * 0",
        ("Testing/test_engine_training.py::test_spatial_engine_varies_inside_what_a_clipping_denoiser_loses",),
    ),
    Mutant(
        "noise-scale-not-initialised",
        "the cINN's noise scale skips its data-dependent initialisation (stays the identity)",
        LIB + "invariance/spatial.py",
        "if self.training and int(self.initialized) == 0:\n            self.initialize(z, c)",
        "if False:\n            self.initialize(z, c)",
        (
            "Testing/test_spatial_engine.py::test_noise_scale_initialisation_gives_samples_the_local_spread_of_the_noise_map",
        ),
    ),
    Mutant(
        "sampler-ignores-noise-map",
        "the spatial sampler gives a noise-map cINN one noise level for the whole slice",
        LIB + "invariance/sampler.py",
        'if getattr(self.cinn.cfg, "noise_map", False):',
        "if False:",
        (
            "Testing/test_spatial_engine.py::test_a_noise_map_cinn_is_conditioned_on_the_local_noise_map_of_x",
            "Testing/test_spatial_engine.py::test_bundled_spatial_cinn_samples_have_the_power_of_x_and_follow_its_noise",
        ),
    ),
    Mutant(
        "noise-map-crop-not-flipped",
        "training crops of the noise map are not flipped with their slice crops",
        LIB + "training/data.py",
        "nm = None if nm is None else nm.flip(-1)",
        "nm = nm",
        ("Testing/test_spatial_engine.py::test_patch_sampler_crops_the_noise_maps_with_the_slices",),
    ),
    Mutant(
        "spatial-tiles",
        "the spatial decoder adds a fixed 32-pixel grid pattern",
        LIB + "invariance/spatial.py",
        "return self.out(F.silu(h)).float() + fx.float()",
        "return self.out(F.silu(h)).float() + fx.float()"
        " + 0.05 * (torch.arange(fx.shape[-1], device=fx.device) % 32 == 0)",
        (
            "Testing/test_spatial_engine.py::test_the_engine_is_translation_equivariant_so_it_has_no_tile_grid",
        ),
    ),
    Mutant(
        "noise-sampler-no-variation",
        "the noise sampler returns f(x) for every sample",
        LIB + "invariance/sampler.py",
        "samples = fx[None] + np.float32(temperature) * noise",
        "samples = fx[None] + np.float32(0.0) * noise",
        ("Testing/test_consistency.py::test_noise_sampler_draws_noise_at_the_level_of_x",),
    ),
    Mutant(
        "cinn-sampler-no-variation",
        "the learned sampler decodes the same latent for every sample",
        LIB + "invariance/sampler.py",
        "z = vv if self.cinn is None else self.cinn.reverse(vv, cond)",
        "z = vv * 0 if self.cinn is None else self.cinn.reverse(vv * 0, cond)",
        ("Testing/test_bundled_engine.py::test_samples_really_vary",),
    ),
    Mutant(
        "cinn-ignores-condition",
        "the cINN's embedding of f(x) is multiplied by 0",
        LIB + "invariance/cinn.py",
        "return self.embedder(fx)",
        "return self.embedder(fx) * 0",
        (PLANTED,),
    ),
    Mutant(
        "collapsed-posterior",
        "the encoder's output is ignored: q(z | x, f(x)) = N(0, I)",
        LIB + "invariance/cvae.py",
        "return DiagonalGaussian(self.encoder(torch.cat([x, fx], 1)))",
        "return DiagonalGaussian(self.encoder(torch.cat([x, fx], 1)) * 0)",
        (PLANTED,),
    ),
    Mutant(
        "no-critic-all-reduce",
        "data-parallel training skips the critic's gradient all-reduce",
        LIB + "training/invariance.py",
        "        ddp.all_reduce_gradients(self.critic, self.ctx)\n",
        "        pass  # mutant: no all-reduce of the critic's gradients\n",
        (
            "Testing/test_engine_training.py::test_two_process_data_parallel_training_ends_with_identical_weights",
        ),
    ),
    Mutant(
        "consistency-leaves-range",
        "the consistency step rescales each pixel (sign of the gradient, "
        "Adam-like): corrections leave the range of J^T",
        LIB + "invariance/consistency.py",
        "velocity = momentum * velocity + step * lin.vjp(r)",
        "velocity = momentum * velocity + step * lin.vjp(r).sign()",
        (
            "Testing/test_consistency.py::test_correction_stays_in_the_range_of_the_jacobian_transpose",
            "Testing/test_consistency.py::test_correction_has_no_component_in_a_smooth_null_space",
        ),
    ),
    Mutant(
        "ncg-leaves-range",
        "the nonlinear-CG phase of the consistency step follows the sign of the gradient (Adam-like)",
        LIB + "invariance/consistency.py",
        "grad = lin.vjp(r)  # J^T r",
        "grad = lin.vjp(r).sign()  # J^T r",
        (
            "Testing/test_consistency.py::test_correction_stays_in_the_range_of_the_jacobian_transpose",
            "Testing/test_consistency.py::test_correction_has_no_component_in_a_smooth_null_space",
        ),
    ),
    Mutant(
        "ncg-no-op",
        "the nonlinear-CG phase of the consistency step does not move the samples",
        LIB + "invariance/consistency.py",
        "s = (s + alpha * direction).detach()",
        "s = s.detach()",
        (
            "Testing/test_consistency.py::test_identity_denoiser_samples_are_brought_back_to_x",
            "Testing/test_consistency.py::test_clipping_denoiser_varies_inside_the_clipped_structures_only",
        ),
    ),
    Mutant(
        "cvae-init-ignored",
        "train cvae --init loads the given cVAE into a model that is then not trained",
        LIB + "training/invariance.py",
        "        self.init_from = _warm_start_cvae(self.model, cfg.init) if cfg.init else None\n",
        "        self.init_from = (_warm_start_cvae(build_cvae(self.model_cfg), cfg.init)\n"
        "                          if cfg.init else None)\n",
        (
            "Testing/test_engine_training.py::"
            "test_cvae_fine_tune_starts_from_the_given_cvae_and_refuses_another_architecture",
        ),
    ),
    Mutant(
        "invariance-term-ignored",
        "train cinn --invariance-weight computes the term but leaves it out of the loss",
        LIB + "training/invariance.py",
        "            loss = loss + self.cfg.invariance_weight * inv + self.cfg.power_weight * realism\n",
        "            loss = loss + 0.0 * inv + self.cfg.power_weight * realism\n",
        (
            "Testing/test_engine_training.py::"
            "test_invariance_term_puts_the_samples_variation_where_the_denoiser_does_not_look",
        ),
    ),
    Mutant(
        "tf32-left-on",
        "full_fp32 leaves the user's TF32 setting on, so a GPU's consistency step works on an approximate f",
        LIB + "precision.py",
        "        setattr(owner, attr, value)\n",
        "        pass  # TF32 stays as the user set it\n",
        ("Testing/test_consistency.py::test_full_fp32_turns_tf32_off_on_cuda_and_restores_the_users_setting",),
    ),
    Mutant(
        "fast-input-gradient-transposed-taps",
        "the single-channel layer's input gradient reads kernel taps row for column",
        LIB + "denoisers/single_channel.py",
        "            dy, dx = divmod(t, kw)\n            out[i,",
        "            dx, dy = divmod(t, kh)\n            out[i,",
        ("Testing/test_denoisers.py::test_fast_single_channel_layers_equal_onednn",),
    ),
    Mutant(
        "fast-input-gradient-ignores-padding",
        "the single-channel layer's input gradient forgets the layer's padding offset",
        LIB + "denoisers/single_channel.py",
        "    return out[:, ph : ph + h, pw : pw + w].unsqueeze(1)",
        "    return out[:, :h, :w].unsqueeze(1)",
        ("Testing/test_denoisers.py::test_fast_single_channel_layers_equal_onednn",),
    ),
    Mutant(
        "fast-last-layer-ignores-padding",
        "the one-channel output layer forgets its zero padding",
        LIB + "denoisers/single_channel.py",
        "        taps = F.pad(taps, (pw, pw, ph, ph))",
        "        taps = F.pad(taps, (0, 2 * pw, 0, 2 * ph))",
        ("Testing/test_denoisers.py::test_fast_single_channel_layers_equal_onednn",),
    ),
    Mutant(
        "decoder-drops-a-prepared-condition-term",
        "the sampler's per-slice decoder terms leave out f(x)'s share of the merge convolution",
        LIB + "invariance/spatial.py",
        "slice(0, h.shape[1]), bias=False) + cond.merge[j])",
        "slice(0, h.shape[1]), bias=False))",
        ("Testing/test_spatial_engine.py::test_per_slice_condition_terms_give_the_same_latents_and_samples",),
    ),
    Mutant(
        "flow-condition-terms-in-the-wrong-order",
        "the inverse flow pairs each coupling with another coupling's per-slice term",
        LIB + "invariance/spatial.py",
        "zip(reversed(self.steps), reversed(condition.couplings))",
        "zip(reversed(self.steps), condition.couplings)",
        ("Testing/test_spatial_engine.py::test_per_slice_condition_terms_give_the_same_latents_and_samples",),
    ),
    Mutant(
        "calibration-reverse-ignores-the-scale",
        "the output calibration's inverse shifts v back but does not scale it",
        LIB + "invariance/spatial.py",
        "        return v * s.exp() + m\n",
        "        return v + m\n",
        ("Testing/test_spatial_engine.py::test_cinn_is_exactly_invertible_with_a_log_det_that_matches_autograd",),
    ),
    Mutant(
        "calibration-fit-ignores-the-body-covariate",
        "the output calibration's body indicator is a constant, so air and body share one spread",
        LIB + "invariance/spatial.py",
        "        body = torch.sigmoid((normalized_to_hu(fx) - self.BODY_HU) / 100.0)\n",
        "        body = torch.ones_like(fx)\n",
        ("Testing/test_spatial_engine.py::test_output_calibration_fit_finds_the_spread_of_air_and_body_per_noise_level",),
    ),
    Mutant(
        "consistency-without-fast-single-channel-layers",
        "the consistency step goes back to oneDNN's slow single-channel layers",
        LIB + "invariance/consistency.py",
        '    with fast_single_channel_layers(getattr(denoiser, "module", None)):',
        "    with contextlib.nullcontext():",
        ("Testing/test_denoisers.py::test_consistency_step_takes_the_fast_single_channel_layers",),
    ),
    Mutant(
        "consistency-crop-not-checked",
        "the consistency step trusts the measured receptive radius and skips the check of its crop",
        LIB + "invariance/consistency.py",
        "        if margin >= max(x.shape):\n            return rs, cs, target",
        "        if True:\n            return rs, cs, target",
        ("Testing/test_consistency.py::test_the_crop_covers_what_f_reaches_even_where_impulses_do_not_show_it",),
    ),
    Mutant(
        "consistency-no-op",
        "the consistency step does not move the samples",
        LIB + "invariance/consistency.py",
        "s = (s + velocity).detach()",
        "s = s.detach()",
        (
            "Testing/test_consistency.py::test_identity_denoiser_samples_are_brought_back_to_x",
            "Testing/test_consistency.py::test_clipping_denoiser_varies_inside_the_clipped_structures_only",
        ),
    ),
    Mutant(
        "fixed-tile-grid",
        "every sample uses the same tile grid (the seams come back)",
        LIB + "invariance/sampler.py",
        "            if self.jitter else (0, 0)",
        "            if False else (0, 0)",
        ("Testing/test_bundled_engine.py::test_std_map_has_no_seams_and_follows_a_shifted_input[True]",),
    ),
    Mutant(
        "padding-denoised",
        "denoise writes the network's output over the padding (outside the field of view)",
        LIB + "cli/main.py",
        "        restore_padding(result, vol.array, padding)\n",
        "",
        ("Testing/test_adversarial.py::test_case[ok-padding-denoise]",),
    ),
    Mutant(
        "padding-shown-to-the-sampler",
        "the sampler and the denoiser see the padding value (-3024 HU) as attenuation",
        LIB + "invariance/pipeline.py",
        "            x = without_padding(volume.array[k], padding)",
        "            x = volume.array[k]",
        ("Testing/test_adversarial.py::test_case[ok-sample-keeps-padding]",),
    ),
    Mutant(
        "raw-data-length-unchecked",
        "a truncated uncompressed image reads with zeros where its data is missing",
        LIB + "io/readers.py",
        "    if available < expected:",
        "    if False:",
        (
            "Testing/test_adversarial.py::test_case[input-truncated-mha]",
            "Testing/test_adversarial.py::test_case[input-mhd-short-data]",
        ),
    ),
    Mutant(
        "user-network-exception-escapes",
        "a user network that raises reaches the user as a traceback",
        LIB + "denoisers/loading.py",
        "        except Exception as exc:\n            text = ",
        "        except ZeroDivisionError as exc:\n            text = ",
        ("Testing/test_adversarial.py::test_case[denoiser-network-raises]",),
    ),
    Mutant(
        "sigterm-not-handled",
        "SIGTERM kills the command without its clean-up (partial files stay)",
        LIB + "cli/main.py",
        "    previous = _interrupt_on_sigterm()",
        "    previous = None",
        ("Testing/test_adversarial.py::test_case[signal-sigterm-sample]",),
    ),
    Mutant(
        "failed-sample-keeps-folder",
        "a failed sample run leaves its half-written folder",
        LIB + "invariance/pipeline.py",
        "        if created is not None:\n            shutil.rmtree(created, ignore_errors=True)",
        "        if False:\n            shutil.rmtree(created, ignore_errors=True)",
        ("Testing/test_adversarial.py::test_case[denoiser-network-nan-in-sample]",),
    ),
    Mutant(
        "image-file-padding-ignored",
        "an image file's -3024 HU outside the field of view is handed to the denoiser as attenuation",
        LIB + "io/readers.py",
        "    padding = arr <= PADDING_BELOW_HU if lo <= PADDING_BELOW_HU else None",
        "    padding = None",
        ("Testing/test_adversarial.py::test_case[ok-padding-in-an-image-file]",),
    ),
    Mutant(
        "sigkill-leftovers-kept-sample",
        "a sample run killed outright leaves partial files that the next run keeps",
        LIB + "invariance/pipeline.py",
        "    remove_stale_partials(out)  #",
        "    (out)  #",
        ("Testing/test_adversarial.py::test_case[signal-sigkill-then-rerun-sample]",),
    ),
    Mutant(
        "sigkill-leftovers-kept-run",
        "a main job killed outright leaves its partial folder beside the output",
        LIB + "job.py",
        "    remove_stale_partials(out.parent)  #",
        "    (out.parent)  #",
        ("Testing/test_adversarial.py::test_case[signal-sigkill-then-rerun-run]",),
    ),
    Mutant(
        "regular-grid-positions",
        "an irregularly spaced series places findings and --at points on the regular grid",
        LIB + "io/volume.py",
        "        origins = self.slice_origins\n        d = self.direction_matrix\n"
        "        if origins is None:\n            ijk",
        "        origins = None\n        d = self.direction_matrix\n"
        "        if origins is None:\n            ijk",
        ("Testing/test_io_errors.py::test_irregular_series_locates_points_on_the_real_slice_positions",),
    ),
    Mutant(
        "batched-simulation-shares-one-i0",
        "make_pairs' batched simulation gives every slice of a batch the first slice's I0",
        LIB + "lowdose.py",
        "                batch_i0 = [self._i0_from_reference(sl, ref) for sl, ref in zip(batch, refs)]",
        "                batch_i0 = [self._i0_from_reference(batch[0], refs[0])] * len(batch)",
        ("Testing/test_lowdose.py::test_simulate_slices_gives_each_slice_its_own_i0_and_seeds",),
    ),
    Mutant(
        "batched-simulation-repeats-a-seed",
        "every realisation of a slice in the batched simulation uses the first seed",
        LIB + "lowdose.py",
        "for p, i0, row in zip(ps, batch_i0, rows) for seed in row]",
        "for p, i0, row in zip(ps, batch_i0, rows) for seed in row[:1] * len(row)]",
        ("Testing/test_lowdose.py::test_simulate_slices_gives_each_slice_its_own_i0_and_seeds",),
    ),
    Mutant(
        "simulation-batch-ignored",
        "simulate_slices batches FBP_BATCH slices whatever fbp_batch the simulator was given",
        LIB + "lowdose.py",
        "            batch = slices[at : at + self.fbp_batch]",
        "            batch = slices[at : at + FBP_BATCH]",
        ("Testing/test_lowdose.py::test_simulate_slices_gives_each_slice_its_own_i0_and_seeds",),
    ),
    Mutant(
        "simulation-batch-not-fitted-to-memory",
        "simulate-low-dose and training on user volumes keep the full FBP batch under a memory limit "
        "(and refuse the job)",
        LIB + "lowdose.py",
        "    while batch > 1 and limit_bytes is not None and need(batch) > limit_bytes:",
        "    while False:",
        (
            "Testing/test_cli.py::test_simulate_slices_keep_their_noise",
            "Testing/test_cli_validation.py::test_training_volumes_are_simulated_within_the_memory_limit",
        ),
    ),
    Mutant(
        "training-data-memory-unchecked",
        "training on user volumes simulates whatever their memory need (the machine runs out instead)",
        LIB + "training/invariance.py",
        "        max(simulating, low_dose * (1 + companions)),",
        "        0.0,",
        ("Testing/test_cli_validation.py::test_training_volumes_are_simulated_within_the_memory_limit",),
    ),
    Mutant(
        "training-data-check-forgets-f-of-x",
        "the memory check of user training data counts the low-dose slices but not their f(x)",
        LIB + "training/invariance.py",
        "        max(simulating, low_dose * (1 + companions)),",
        "        simulating,",
        ("Testing/test_cli_validation.py::test_training_volumes_are_simulated_within_the_memory_limit",),
    ),
    Mutant(
        "training-slices-ignore-the-patch",
        "user training volumes narrower than the training patch are simulated and denoised first",
        LIB + "training/invariance.py",
        "        smallest = max(64, patch)",
        "        smallest = 64",
        ("Testing/test_cli_validation.py::test_training_data_that_cannot_give_patches_is_refused",),
    ),
    Mutant(
        "train-max-memory-not-passed-on",
        "train cvae / cinn accept --max-memory but do not hand it to the data simulation",
        LIB + "training/invariance.py",
        "        max_memory_gb=cfg.max_memory_gb,",
        "        max_memory_gb=None,",
        ("Testing/test_cli_validation.py::test_training_volumes_are_simulated_within_the_memory_limit",),
    ),
    Mutant(
        "spectrum-term-left-out-of-the-loss",
        "the trainer computes and logs the spectrum term but does not add it to the loss",
        LIB + "training/invariance.py",
        "            loss = loss + self.cfg.spectrum_weight * shape",
        "            loss = loss + 0.0 * shape",
        ("Testing/test_engine_training.py::test_spectrum_and_moment_terms_enter_the_fine_tunes_gradient",),
    ),
    Mutant(
        "moment-term-left-out-of-the-loss",
        "the trainer computes and logs the latent moment term but does not add it to the loss",
        LIB + "training/invariance.py",
        "            loss = loss + self.cfg.moment_weight * moments",
        "            loss = loss + 0.0 * moments",
        ("Testing/test_engine_training.py::test_spectrum_and_moment_terms_enter_the_fine_tunes_gradient",),
    ),
    Mutant(
        "moment-term-ignores-the-spread",
        "the latent moment term holds the channel means only",
        LIB + "training/invariance.py",
        "    return (flat.mean(1) ** 2 + flat.std(1).log() ** 2).sum()",
        "    return (flat.mean(1) ** 2).sum()",
        (
            "Testing/test_spatial_engine.py::"
            "test_latent_moment_term_is_zero_at_the_standard_normal_and_pulls_the_moments_there",
        ),
    ),
    Mutant(
        "calibration-fit-mode-ignored",
        "train cinn --calibration-fit mean refits the trained scale too",
        LIB + "training/invariance.py",
        'scale=self.cfg.calibration_fit == "all")',
        "scale=True)",
        ("Testing/test_engine_training.py::test_calibration_refit_is_run_and_fits_what_calibration_fit_says",),
    ),
    Mutant(
        "calibration-refit-skipped",
        "train cinn --calibration-crops N trains but never refits the output calibration",
        LIB + "training/invariance.py",
        "        if layer is None or self.cfg.calibration_crops <= 0:",
        "        if True:",
        ("Testing/test_engine_training.py::test_calibration_refit_is_run_and_fits_what_calibration_fit_says",),
    ),
    Mutant(
        "spectrum-term-sees-scale",
        "the spectrum term penalises a louder copy of x's texture (power has its own term)",
        LIB + "training/invariance.py",
        "    return ((log_ratio - log_ratio.mean()) ** 2).mean()",
        "    return (log_ratio**2).mean()",
        (
            "Testing/test_spatial_engine.py::"
            "test_spectrum_shape_term_is_blind_to_scale_and_pulls_the_texture_to_the_reference",
        ),
    ),
    Mutant(
        "slicer-bad-node-unchecked",
        "a volume node without usable data is written and handed to the CLI",
        "CTInvariances/CTInvariancesSlicer/logic.py",
        "        check_input_node(input_node)\n        work =",
        "        work =",
        ("Testing/test_slicer_adapter.py::test_a_bad_volume_node_gives_a_message_and_starts_nothing",),
    ),
)


def _copy_checkout(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    for rel in files.stdout.splitlines():
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def run_mutant(m: Mutant) -> tuple[bool, float, str]:
    with tempfile.TemporaryDirectory(prefix=f"mutant-{m.name}-") as tmp:
        work = Path(tmp)
        _copy_checkout(work)
        target = work / m.file
        text = target.read_text()
        if text.count(m.old) != 1:
            raise SystemExit(f"mutant {m.name}: the text to change is not (exactly once) in {m.file}")
        target.write_text(text.replace(m.old, m.new))
        from CTInvariancesLib.datasets import shared_data_dir

        env = dict(
            os.environ,
            CTINVARIANCES_DATA=str(shared_data_dir()),
            CTINVARIANCES_CACHE=str(ROOT / ".cache"),
            PYTHONPATH=str(work / "CTInvariances"),
        )
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *m.tests],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
        )
        lines = proc.stdout.strip().splitlines() or [""]
        why = next((ln[1:].strip() for ln in lines if ln.startswith("E ")), "")
        summary = lines[-1] + (f": {why[:90]}" if why else "")
        # 1 = tests ran and failed; anything else (collection error, usage) is not a catch
        return proc.returncode == 1 and "error" not in lines[-1], time.perf_counter() - t0, summary


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", help="mutant names")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "CTInvariances"))
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.what}")
        return 0
    print("| mutant | what | caught | test result | s |\n| --- | --- | --- | --- | --- |", flush=True)
    survived = 0
    for m in chosen:
        killed, secs, summary = run_mutant(m)
        survived += not killed
        caught = "yes" if killed else "**no**"
        print(f"| {m.name} | {m.what} | {caught} | {summary} | {secs:.0f} |", flush=True)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
