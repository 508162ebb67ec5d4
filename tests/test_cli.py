"""The command line: generate through Stable Diffusion (tiny random pipeline) and the oracle, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from msd3d.cli import app
from msd3d.config import list_recipes, load_config, resolve_recipe
from msd3d.priors.sd_architectures import save_random_pipeline

runner = CliRunner()


def _run(args):
    result = runner.invoke(app, args)
    return result.exit_code, result.stdout, result.stderr


def _tiny_sd_overrides(tiny_run_overrides):
    """The tiny run, but on Stable Diffusion: CFG on, renders VAE-encoded at 64x64."""
    dropped = ("prior.", "guidance.msd.guidance_scale", "guidance.msd.lambda")
    keep = [o for o in tiny_run_overrides if not o.startswith(dropped)]
    return keep + ["prior.sd.render_size=64", "guidance.msd.guidance_scale=3.0", "guidance.msd.lambda_start=1.0",
                   "guidance.msd.lambda_end=0.2"]


@pytest.fixture(scope="module")
def tiny_sd_folder(tmp_path_factory):
    return save_random_pipeline("tiny", tmp_path_factory.mktemp("sd") / "tiny", seed=0)


def test_generate_runs_end_to_end_on_stable_diffusion(tmp_path, tiny_sd_folder, tiny_run_overrides):
    out = tmp_path / "hamburger"
    code, _, err = _run(
        ["generate", "a hamburger", "--prior", "sd", "--model", str(tiny_sd_folder), "--steps", "2",
         "--device", "cpu", "--out", str(out), "-q", *_tiny_sd_overrides(tiny_run_overrides)]
    )
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["prior"] == "sd" and summary["guidance"] == "msd" and summary["steps"] == 2
    assert "scores" not in summary  # SD cannot score a run
    # every step ran the real UNet: 2 sampler steps per training step, CFG batched in each call
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1] and all(r["finite"] for r in records)
    assert records[-1]["denoiser_calls"] == 4
    assert (out / "mesh.obj").is_file() and (out / "turntable.mp4").is_file()
    config = load_config(out / "config.yaml")
    assert config.prior.sd.model == str(tiny_sd_folder)


@pytest.mark.parametrize("guidance", ["sds", "sdi"])
def test_generate_baselines_on_stable_diffusion(tmp_path, tiny_sd_folder, tiny_run_overrides, guidance):
    out = tmp_path / guidance
    code, _, err = _run(
        ["generate", "a hamburger", "--prior", "sd", "--guidance", guidance, "--model", str(tiny_sd_folder),
         "--steps", "1", "--device", "cpu", "--out", str(out), "-q", "export.mesh=false", "export.video=false",
         "prior.sd.render_size=64", "guidance.sdi.inversion_steps=2",
         *[o for o in tiny_run_overrides if not o.startswith("prior.")]]
    )
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["guidance"] == guidance


def test_generate_oracle_and_resume(tmp_path, tiny_run_overrides):
    out = tmp_path / "run"
    code, _, err = _run(["generate", "a donut", "--prior", "oracle", "--steps", "2", "--out", str(out), "-q",
                         *tiny_run_overrides])
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scores"]["family"] == "donut"
    # starting again over the same folder would lose work: refused
    code, _, err = _run(["generate", "a donut", "--prior", "oracle", "--steps", "2", "--out", str(out), "-q",
                         *tiny_run_overrides])
    assert code == 2 and "already holds this run" in err and "--resume" in err
    # resume with more steps continues from step 2
    code, _, err = _run(["generate", "--resume", str(out), "train.steps=3", "-q"])
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["steps"] == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "a donut", "train.stpes=3"], "unknown config key 'train.stpes'"),
        (["generate", "a donut", "train.steps=many"], "bad value for config key 'train.steps'"),
        (["generate", "a donut", "--steps", "0"], "train.steps must be at least 1"),
        (["generate", "a donut", "--guidance", "csd"], "guidance.name must be one of sds, msd, sdi, vsd, got 'csd'"),
        (["generate", "a donut", "--prior", "dalle"], "prior.name must be one of sd, oracle"),
        (["generate", "a donut", "guidance.msd.lambda_end=-1"], "guidance.msd.lambda_end must be greater than 0"),
            # messages name the full dotted key of the setting (issue 14)
            (
                ["generate", "a donut", "guidance.msd.kernel=gauss"],
                "guidance.msd.kernel must be one of exp, diffused, posterior",
            ),
            (["generate", "a donut", "guidance.sds.weighting=x"], "guidance.sds.weighting must be one of"),
            (
                ["generate", "a donut", "guidance.sdi.inversion_steps=0"],
                "guidance.sdi.inversion_steps must be at least 1",
            ),
            (["generate", "a donut", "prior.oracle.supersample=0"], "prior.oracle.supersample must be at least 1"),
            (["generate", "a donut", "prior.sd.dtype=fp8"], "prior.sd.dtype must be one of"),
            (["generate", "a donut", "field.nerf.features=0"], "field.nerf.features must be at least 1"),
            (["generate", "a donut", "field.name=voxels"], "field.name must be one of nerf"),
        (["generate", "a donut", "notakeyvalue"], "is not key=value"),
        (["generate", "a donut", "--config", "nope"], "unknown recipe 'nope'"),
        (["generate", "a donut", "--config", "missing.yaml"], "does not exist"),
        (["generate"], "missing PROMPT"),
        (["generate", "--resume", "/nonexistent/run"], "no config.yaml there"),
        (["generate", "a giraffe", "--prior", "oracle", "--steps", "1"], "donut"),  # unknown family lists them
        (["generate", "a giraffe", "--prior", "learned", "--steps", "1"], "the learned prior has no shape"),
        (["image", "a giraffe", "--prior", "learned", "--steps", "1"], "the learned prior has no shape"),
        (["generate", "a mushroom", "--prior", "oracle", "--guidance", "vsd", "--steps", "1"],
         "no network to fine-tune"),
        (["generate", "a donut", "--device", "cuda:7"], "CUDA is not available"),
    ],
)
def test_bad_input_fails_with_one_line(tmp_path, args, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if torch.cuda.is_available() and "cuda:7" in args:
        pytest.skip("CUDA present")
    code, out, err = _run(args + ["-q"] if args[0] == "generate" and len(args) > 1 else args)
    assert code == 2, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0]
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("last.pt"))


def test_malformed_yaml_is_reported(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {steps: [1,\n")
    code, _, err = _run(["generate", "a donut", "--config", str(bad), "-q"])
    assert code == 2 and "cannot parse config file" in err


def test_recipes_ship_and_resolve():
    assert {"msd-sd", "sds-sd", "sdi-sd", "msd-oracle", "sds-oracle"} <= set(list_recipes())
    assert resolve_recipe(None).name == "msd-sd.yaml"
    assert resolve_recipe(None, prior="oracle", guidance="sds").name == "sds-oracle.yaml"
    for name in list_recipes():
        if name.startswith(("msd-", "sds-", "sdi-")):
            load_config(resolve_recipe(name))  # every shipped recipe validates


def test_catalogue_lists_families():
    code, out, _ = _run(["catalogue"])
    assert code == 0
    for family in ("donut", "mushroom", "snowman", "table", "mug", "lamp", "rocket", "tree"):
        assert f"{family}:" in out


def test_help_is_fast_and_does_not_import_diffusers():
    code = "import sys, msd3d.cli; msd3d.cli.app(['--help'], standalone_mode=False); print('diffusers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("False")


def test_run_configs_from_before_field_types_still_load(tmp_path):
    """A config.yaml written before issue 14 (NeRF keys directly under field:) resumes/exports as before."""
    old = tmp_path / "config.yaml"
    old.write_text("prompt: a donut\nfield:\n  encoding: dense\n  resolutions: [8, 16]\n  hidden_dim: 16\n")
    config = load_config(old)
    assert config.field.name == "nerf"
    assert config.field.nerf.encoding == "dense" and list(config.field.nerf.resolutions) == [8, 16]
    assert config.field.nerf.hidden_dim == 16


def test_resume_refuses_another_prompt_or_method(tmp_path, tiny_run_overrides):
    """`generate "a mug" --resume RUN` on a donut run used to retrain the folder towards a mug."""
    out = tmp_path / "run"
    code, _, err = _run(["generate", "a donut", "--prior", "oracle", "--steps", "1", "--out", str(out), "-q",
                         "export.mesh=false", "export.video=false", *tiny_run_overrides])
    assert code == 0, err
    saved = (out / "config.yaml").read_text()
    for extra in (["a mug"], ["--guidance", "sds"], ["--prior", "sd"], ["--seed", "5"]):
        code, _, err = _run(["generate", *extra, "--resume", str(out), "train.steps=2", "-q"])
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and "--resume continues that run" in lines[0], err
        assert (out / "config.yaml").read_text() == saved
    # the run's own prompt and seed are fine
    code, _, err = _run(["generate", "a donut", "--seed", "0", "--resume", str(out), "train.steps=2", "-q"])
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["steps"] == 2


def test_resume_of_a_finished_run_keeps_a_real_speed(tmp_path, tiny_run_overrides):
    """`--resume` on a finished run re-finishes it without training; summary.json said it_per_s 0.0."""
    out = tmp_path / "run"
    args = ["--prior", "oracle", "--steps", "2", "-q", "export.mesh=false", "export.video=false", *tiny_run_overrides]
    code, _, err = _run(["generate", "a donut", "--out", str(out), *args])
    assert code == 0, err
    first = json.loads((out / "summary.json").read_text())
    code, _, err = _run(["generate", "--resume", str(out), "-q"])
    assert code == 0, err
    again = json.loads((out / "summary.json").read_text())
    assert again["steps"] == 2 and again["steps_this_session"] == 0
    assert again["it_per_s"] == pytest.approx(2 / first["train_seconds"])


def test_resume_refuses_fewer_steps_than_done_and_another_out(tmp_path, tiny_run_overrides):
    """`--resume RUN --steps 1` on a 2-step run rewrote config.yaml to 1 step (the checkpoint stayed at
    2) and `--resume RUN --out OTHER` silently ignored --out."""
    out = tmp_path / "run"
    code, _, err = _run(["generate", "a donut", "--prior", "oracle", "--steps", "2", "--out", str(out), "-q",
                         "export.mesh=false", "export.video=false", *tiny_run_overrides])
    assert code == 0, err
    saved = (out / "config.yaml").read_text()
    for extra, message in ((["--steps", "1"], "train.steps=1 is below the 2 steps"),
                           (["--out", str(tmp_path / "other")], "--out cannot be combined with --resume")):
        code, _, err = _run(["generate", "--resume", str(out), *extra, "-q"])
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert (out / "config.yaml").read_text() == saved and not (tmp_path / "other").exists()


@pytest.mark.parametrize("override, message", [
    ("video.elevation=100", "video.elevation must lie in [-90, 90] degrees"),
    ("camera.elevation_range=[-10,95]", "camera.elevation_range must lie in [-90, 90] degrees"),
    ("camera.eval_elevation=-120", "camera.eval_elevation must lie in [-90, 90] degrees"),
])
def test_elevation_past_the_pole_is_refused(override, message):
    """An elevation past +-90 degrees turned the turntable upside down instead of failing."""
    from msd3d.errors import Msd3dError

    with pytest.raises(Msd3dError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(resolve_recipe("msd-oracle", None, None), [override])
