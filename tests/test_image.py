"""``msd3d image``: text to image with every guidance method on the learned, oracle and (tiny random) SD priors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from msd3d.catalogue.image_scores import image_scorer, image_statistics, score_images
from msd3d.cli import app
from msd3d.registry import GUIDANCE
from msd3d.workflows.text_to_2d import ImageConfig, generate_images, grid_shape, load_image_run_config

ROOT = Path(__file__).resolve().parent.parent


def _config(prior: str = "learned", guidance: str = "msd", prompt: str = "a red mushroom"):
    return load_image_run_config(None, prior, guidance, [], {"prompt": prompt, "prior.name": prior,
                                                             "guidance.name": guidance})


@pytest.fixture(scope="module")
def learned():
    from msd3d.catalogue.learned_prior import build_learned_prior
    from msd3d.catalogue.learned_prior_config import LearnedPriorConfig

    return build_learned_prior(LearnedPriorConfig(), device="cpu")


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_learned_run_writes_pngs_grid_summary_and_report(learned, tmp_path):
    out = tmp_path / "run"
    summary = generate_images(_config(), ImageConfig(steps=3, n=3), out, prior=learned, show_progress=False,
                              log=lambda m: None)
    names = [f"image_{i:02d}.png" for i in range(3)]
    assert _files(out) == sorted([*names, "grid.png", "report.html", "summary.json"])
    for name in names:
        with Image.open(out / name) as im:
            assert im.size == (32, 32) and im.mode == "RGB"
    with Image.open(out / "grid.png") as im:
        h, w = grid_shape(3, 32)
        assert im.size == (w, h)
    saved = json.loads((out / "summary.json").read_text())
    for key in ("prompt", "prior", "guidance", "seed", "steps", "seconds", "it_per_s", "scores"):
        assert key in saved, key
    assert saved["prompt"] == summary["prompt"] == "a red mushroom"
    got = (saved["prior"], saved["guidance"], saved["steps"], saved["n"], saved["size"])
    assert got == ("learned", "msd", 3, 3, 32)
    assert saved["conditioned_prompt"].endswith(", front view")
    assert len(saved["scores"]["images"]) == 3 and saved["it_per_s"] > 0
    page = (out / "report.html").read_text()
    for name in [*names, "grid.png"]:
        assert f"src='{name}'" in page
    assert "<script" not in page.lower()


def test_cli_run_exits_zero_and_a_bad_prompt_exits_non_zero_with_one_line(tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["image", "a mug", "--prior", "learned", "--steps", "2", "--n", "1", "--seed", "3", "-q", "--out", str(out),
            "--set", "image.lr=0.05"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["seed"], summary["lr"], summary["n"]) == (3, 0.05, 1)

    bad = tmp_path / "bad"
    result = runner.invoke(app, ["image", "a hamburger", "--prior", "learned", "--steps", "2", "-q", "--out", str(bad)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "hamburger" in lines[0]
    assert not bad.exists()  # nothing half-written

    for option in (["--n", "0"], ["--set", "image.space=voxels"], ["--set", "image.nope=1"], ["--set", "nope"]):
        result = runner.invoke(app, ["image", "a mug", "--prior", "learned", "-q", "--out", str(bad), *option])
        assert result.exit_code == 2, option
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert not bad.exists()

    result = runner.invoke(app, ["image", "a mug", "--prior", "learned", "-q", "--out", str(out)])
    assert result.exit_code == 2 and "not empty" in result.output  # earlier images are never overwritten


@pytest.mark.parametrize("method", GUIDANCE.names())
def test_every_guidance_method_runs_on_the_learned_prior(method, learned, tmp_path):
    summary = generate_images(_config(guidance=method), ImageConfig(steps=3, n=2), tmp_path / method,
                              prior=learned, show_progress=False, log=lambda m: None)
    assert summary["guidance"] == method and summary["nonfinite_steps"] == 0
    assert math.isfinite(summary["final_loss"]) and summary["denoiser_calls"] >= 3
    assert all(math.isfinite(s["mode_psnr"]) for s in summary["scores"]["images"])


def test_the_learned_prior_takes_the_stable_diffusion_recipes_guidance():
    assert _config(guidance="sds").guidance.sds.guidance_scale == 101.0  # configs/sds-sd.yaml
    assert _config(guidance="sdi").guidance.sdi.inversion_guidance_scale == -6.5  # configs/sdi-sd.yaml
    assert _config(guidance="msd").guidance.msd.lambda_end == 2.0  # configs/msd-learned.yaml
    assert _config("oracle", "sds").guidance.sds.guidance_scale == load_image_run_config(
        "sds-oracle", None, None, [], {}).guidance.sds.guidance_scale  # a shipped <guidance>-<prior>.yaml wins


def test_latent_space_on_the_learned_prior(learned, tmp_path):
    summary = generate_images(_config(), ImageConfig(steps=2, n=1, space="latent"), tmp_path / "z", prior=learned,
                              show_progress=False, log=lambda m: None)
    assert summary["space"] == "latent" and summary["size"] == 32


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    """The tiny random SD pipeline of tests/test_stable_diffusion.py (64x64 images, 4x8x8 latents)."""
    from msd3d.priors.sd_architectures import save_random_pipeline
    from msd3d.priors.stable_diffusion import StableDiffusionConfig, StableDiffusionPrior

    folder = save_random_pipeline("tiny", tmp_path_factory.mktemp("sd") / "tiny-eps", seed=0)
    return StableDiffusionPrior(StableDiffusionConfig(model=str(folder), render_size=64), device="cpu")


@pytest.mark.parametrize("space", ["latent", "pixels"])
def test_stable_diffusion_path_on_a_tiny_random_pipeline(space, tiny_sd, tmp_path):
    out = tmp_path / space
    settings = ImageConfig(steps=2, n=2, space="pixels" if space == "pixels" else "auto")
    summary = generate_images(_config("sd", "sds", "a hamburger"), settings, out, prior=tiny_sd,
                              show_progress=False, log=lambda m: None)
    assert summary["space"] == space and summary["size"] == 64
    with Image.open(out / "image_01.png") as im:
        assert im.size == (64, 64)
    scores = summary["scores"]["images"][0]
    assert set(scores) == {"saturation", "contrast"}  # SD has no known modes: image statistics only


def test_the_oracle_is_conditioned_at_one_front_camera(tmp_path):
    summary = generate_images(_config("oracle", "msd"), ImageConfig(steps=100, n=1), tmp_path / "o",
                              show_progress=False, log=lambda m: None)
    assert summary["scores"]["scoring"]["cameras"] == 1 and summary["size"] == 32
    assert summary["scores"]["images"][0]["mode_psnr"] > 25  # the exact prior: the image lands on a variant


def test_msd_on_a_red_mushroom_scores_consistently(learned, tmp_path):
    cfg = _config()
    summary = generate_images(cfg, ImageConfig(steps=150, n=1), tmp_path / "m", prior=learned,
                              show_progress=False, log=lambda m: None)
    score = summary["scores"]["images"][0]
    assert math.isfinite(score["mode_psnr"]) and math.isfinite(score["blend_psnr"])
    assert score["mode_psnr"] == max(score["variant_psnr"].values())
    # mode >= the PSNR to any single variant's render in the scoring set (here: the front camera, albedo)
    from msd3d.render.cameras import turntable_cameras

    camera = turntable_cameras(1, 32, elevation=cfg.camera.eval_elevation, distance=cfg.camera.eval_distance,
                               fovy=cfg.camera.eval_fovy)
    with Image.open(tmp_path / "m" / "image_00.png") as im:
        image = torch.tensor(list(im.getdata()), dtype=torch.float32).view(1, 32, 32, 3).permute(0, 3, 1, 2) / 255
    single = score_images(image, "mushroom", camera)[0]
    scorer = image_scorer(learned, "a red mushroom", camera, "front")
    assert scorer is not None and scorer.cameras.elevation.numel() > 1
    assert score["mode_psnr"] >= max(single["variant_psnr"].values()) - 0.05  # (the PNG is 8-bit)
    # and it drew the red one: the fly agaric is nearer than the family's other variants
    assert score["nearest_variant"] == "fly_agaric", score
    others = [v for k, v in score["variant_psnr"].items() if k != "fly_agaric"]
    assert score["variant_psnr"]["fly_agaric"] > max(others) + 1, score["variant_psnr"]
    assert score["saturation"] > 0.03  # not blank: a white image has saturation 0
    assert math.isfinite(summary["scores"]["scoring"]["blank_mode_psnr"])


def test_image_statistics():
    gray = torch.full((1, 3, 4, 4), 0.5)
    red = torch.zeros(1, 3, 4, 4)
    red[:, 0] = 1.0
    checker = torch.zeros(1, 3, 4, 4)
    checker[..., ::2, ::2] = checker[..., 1::2, 1::2] = 1.0
    stats = image_statistics(torch.cat([gray, red, checker]))
    assert stats["saturation"] == pytest.approx([0.0, 1.0, 0.0])
    assert stats["contrast"] == pytest.approx([0.0, 0.0, 0.5])


def test_an_interrupted_run_writes_nothing(learned, tmp_path, monkeypatch):
    import msd3d.guidance.msd as msd_module

    calls = {"n": 0}
    original = msd_module.MSD.__call__

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(msd_module.MSD, "__call__", interrupted)
    with pytest.raises(KeyboardInterrupt):
        generate_images(_config(), ImageConfig(steps=5, n=1), tmp_path / "i", prior=learned, show_progress=False)
    assert not (tmp_path / "i").exists()


def test_usage_documents_every_image_setting():
    import dataclasses

    usage = (ROOT / "docs" / "usage.md").read_text()
    missing = [f.name for f in dataclasses.fields(ImageConfig) if f"image.{f.name}" not in usage]
    assert not missing, f"docs/usage.md does not mention image.{missing}"
