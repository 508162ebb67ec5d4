"""The learned 2-D mixture denoiser: it trains, improves with training, saves/loads through the
prior interface, and toy2d runs every guidance on it unchanged (and reuses the saved weights)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from msd3d.experiments.toy2d import EfficiencyConfig, Toy2DConfig, parse_method, run_toy2d
from msd3d.guidance.msd import MSDConfig, mean_shift_target
from msd3d.priors.base import DiffusionPrior
from msd3d.priors.gmm import GaussianMixturePrior
from msd3d.priors.learned2d import Denoiser2DConfig, LearnedMixturePrior, denoiser_error, train_mixture_denoiser

SIGMAS = (0.05, 0.2, 0.5, 1.0, 3.0)


@pytest.fixture
def two_class_mixture() -> GaussianMixturePrior:
    """Four blobs, two per class, far apart compared with their width."""
    means = [[-1.5, 0.0], [1.5, 0.0], [0.0, 1.5], [0.0, -1.5]]
    covs = [[[0.02, 0.0], [0.0, 0.02]]] * 4
    return GaussianMixturePrior(means, covs, labels=[0, 0, 1, 1], class_names=["left_right", "up_down"])


def _train(prior: GaussianMixturePrior, steps: int) -> LearnedMixturePrior:
    cfg = Denoiser2DConfig(hidden=64, layers=3, steps=steps, batch=256, max_seconds=30.0)
    return train_mixture_denoiser(prior, cfg)


def _mean_rel_error(exact: GaussianMixturePrior, learned: LearnedMixturePrior, prompt: str) -> float:
    rows = denoiser_error(
        exact, learned, SIGMAS, prompt=prompt, samples=512, generator=torch.Generator().manual_seed(1)
    )
    return sum(r["rel_error"] for r in rows) / len(rows)


def test_error_against_exact_denoiser_decreases_with_training(two_class_mixture):
    few = _train(two_class_mixture, 5)
    more = _train(two_class_mixture, 400)
    assert more.metadata["steps_run"] == 400
    err_few = _mean_rel_error(two_class_mixture, few, "up_down")
    err_more = _mean_rel_error(two_class_mixture, more, "up_down")
    # a few steps are still the untrained Gaussian denoiser; 400 steps learn the four blobs
    assert err_more < 0.6 * err_few, (err_few, err_more)
    # the class embedding matters: conditioned on a class, high-noise outputs sit on that class's side
    cond = more.condition(["up_down", "left_right"])
    z = torch.zeros(2, 2)
    d = more.denoise(z + torch.tensor([[0.0, 0.3], [0.3, 0.0]]), 1.0, cond)
    exact = two_class_mixture.denoise(z + torch.tensor([[0.0, 0.3], [0.3, 0.0]]), 1.0,
                                      two_class_mixture.condition(["up_down", "left_right"]))
    assert (d - exact.float()).norm(dim=1).max() < 0.35, (d, exact)


def test_saved_denoiser_loads_through_the_prior_interface(two_class_mixture, tmp_path):
    model = _train(two_class_mixture, 20)
    path = tmp_path / "denoiser.safetensors"
    model.save(path)
    loaded = LearnedMixturePrior.load(path)
    assert isinstance(loaded, DiffusionPrior)
    assert loaded.class_names == ["left_right", "up_down"] and loaded.metadata == model.metadata
    z = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
    cond = loaded.condition(["up_down"] * 6)
    torch.testing.assert_close(loaded.denoise(z, 0.3, cond), model.denoise(z, 0.3, model.condition(["up_down"] * 6)))
    # classifier-free guidance uses the null class: a scale other than 1 changes the output
    assert not torch.allclose(loaded.denoise(z, 0.3, cond, guidance_scale=3.0), loaded.denoise(z, 0.3, cond))
    # MSD runs on it unchanged, counting denoiser evaluations as on any prior
    loaded.counter.reset()
    target, ys = mean_shift_target(
        loaded, z.double(), cond, 0.5, MSDConfig(sampler_steps=3, samples=2, guidance_scale=1.0)
    )
    assert target.shape == (6, 2) and target.dtype == torch.float64 and torch.isfinite(target).all()
    assert loaded.counter.calls == 3 and loaded.counter.evaluations == 3 * 12
    with pytest.raises(ValueError, match="unknown class"):
        loaded.condition(["sideways"])
    (tmp_path / "other.safetensors").write_bytes(path.read_bytes()[:10])
    with pytest.raises(Exception):
        LearnedMixturePrior.load(tmp_path / "other.safetensors")


def test_parse_method_interval_and_steps():
    assert parse_method("msd-exp-iv@16", (0.0, 0.4)) == (
        "msd", {"kernel": "exp", "kernel_t_min": 0.0, "kernel_t_max": 0.4, "sampler_steps": 16})
    assert parse_method("msd-posterior@1") == ("msd", {"kernel": "posterior", "sampler_steps": 1})
    for bad in ("msd-exp@0", "msd-exp@x", "msd-gauss-iv"):
        with pytest.raises(ValueError):
            parse_method(bad)


def test_toy2d_learned_denoiser_trains_once_then_reuses(tmp_path):
    cfg = Toy2DConfig(
        dataset="spiral", steps=3, grid=3, plot_resolution=32, curve_points=2,
        methods=("sds", "msd-posterior@2", "msd-exp-iv@2"),
        denoiser="learned",
        denoiser_train=Denoiser2DConfig(hidden=32, layers=2, steps=10, batch=128),
        denoiser_error_sigmas=(0.1, 1.0),
        efficiency=EfficiencyConfig(points=3, lambda_factors=(1.0,), kernels=("posterior", "exp-iv"),
                                    msd_sampler_steps=(2,), msd_samples=(1,), draws=(1,)),
    )
    out = tmp_path / "run"
    first = run_toy2d(cfg, out, show_progress=False)
    assert (out / "denoiser.safetensors").is_file()
    info = first["denoiser"]
    assert info["kind"] == "learned" and not info["reused"] and info["training"]["steps_run"] == 10
    assert [r["sigma"] for r in info["error_by_sigma"]] == [0.1, 1.0]
    assert all(r["rmse"] > 0 for r in info["error_by_sigma"])
    assert {r["kernel"] for r in first["efficiency"] if r["method"] == "msd"} == {"posterior", "exp-iv"}
    assert "Learned denoiser" in (out / "table.md").read_text()
    cfg = replace(cfg, methods=("msd-posterior@2",), efficiency=EfficiencyConfig(enabled=False))  # faster reruns
    second = run_toy2d(cfg, out, show_progress=False)
    assert second["denoiser"]["reused"]
    assert second["denoiser"]["error_by_sigma"] == info["error_by_sigma"]
    # different training settings do not reuse the file
    third = run_toy2d(replace(cfg, denoiser_train=replace(cfg.denoiser_train, steps=11)), out, show_progress=False)
    assert not third["denoiser"]["reused"] and third["denoiser"]["training"]["steps_run"] == 11
    json.loads((out / "results.json").read_text())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--denoiser", "neural"], "unknown --denoiser"),
        (["--kernel-interval", "0.7,0.2"], "--kernel-interval must be"),
        (["--kernel-interval", "half"], "--kernel-interval must be"),
        (["--denoiser-steps", "0"], "--denoiser-steps must be at least 1"),
        (["--methods", "msd-exp@0"], "sampler steps >= 1"),
    ],
)
def test_cli_rejects_bad_learned_options_with_one_line(args, message):
    import typer
    from typer.testing import CliRunner

    from msd3d.commands.toy2d import toy2d

    app = typer.Typer()
    app.command("toy2d")(toy2d)
    app.command("noop")(lambda: None)
    res = CliRunner().invoke(app, ["toy2d", *args, "--no-progress"])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], res.stderr
