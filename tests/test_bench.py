"""``msd3d bench`` and the sync-free pieces of the CUDA path, on the tiny random SD architecture.

The CPU tests run the real benchmark (Trainer.train_step and the guidance on a random-weight SD
prior) for two steps per method and check its bookkeeping against the configured sampler lengths;
the CUDA tests (skipped without a GPU) check peak memory and that the guidance never waits on the GPU.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import typer
from typer.testing import CliRunner

from msd3d.commands.bench import bench
from msd3d.errors import ConfigError
from msd3d.guidance.base import stat
from msd3d.priors.schedule import VPSchedule
from msd3d.rng import to_device
from msd3d.train import read_scalars
from msd3d.workflows.benchmark import BenchConfig, MethodTiming, parse_methods, run_bench, run_config

#: Small scene and short samplers: a step takes well under a second on one CPU thread.
TINY_SCENE = [
    "background.type=solid",
    "render.samples_per_ray=12",
    "field.nerf.resolutions=[16,32]",
    "field.nerf.hidden_dim=16",
]
MSD_STEPS, SDI_STEPS = 3, 2
SAMPLERS = [f"guidance.msd.sampler_steps={MSD_STEPS}", f"guidance.sdi.inversion_steps={SDI_STEPS}"]


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("bench")(bench)
    app.command("noop")(lambda: None)  # two commands: typer then dispatches on the name, as in msd3d's CLI
    return app


def _expected_counts(method: str, batch: int) -> tuple[int, int]:
    """(batched calls, per-sample evaluations) per step from the recipe + overrides of these tests."""
    cfg = run_config(BenchConfig(random_weights="tiny", overrides=tuple(TINY_SCENE + SAMPLERS)), method)
    g = cfg.guidance
    if method == "sds":
        return 1, batch * (2 if g.sds.guidance_scale != 1 else 1)
    if method == "msd":
        per_call = batch * g.msd.samples * (2 if g.msd.guidance_scale != 1 else 1)
        return g.msd.sampler_steps, g.msd.sampler_steps * per_call
    if method == "vsd":  # the prior (CFG batched), the LoRA's estimate, the LoRA's training pass
        return 3, batch * (2 if g.vsd.guidance_scale != 1 else 1) + 2 * batch
    inversion = batch * (2 if g.sdi.inversion_guidance_scale != 1 else 1)
    per_step = batch * (2 if g.sdi.guidance_scale != 1 else 1)
    return g.sdi.inversion_steps + 1, g.sdi.inversion_steps * inversion + per_step


def test_cli_bench_on_tiny_random_weights_writes_json_with_denoiser_counts(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        _app(),
        ["bench", "--random-weights", "tiny", "--device", "cpu", "--methods", "sds,msd,sdi,vsd", "--steps", "2",
         "--warmup", "1", "--resolution", "16", "--json", str(out), "--quiet", *TINY_SCENE, *SAMPLERS],
    )
    assert result.exit_code == 0, result.output
    for name in ("sds", "msd", "sdi", "vsd", "ms/step", "denoiser calls/step"):
        assert name in result.output
    data = json.loads(out.read_text())
    assert data["device"] == "cpu" and data["prior"]["weights"] == "random tiny"
    assert data["prior"]["render_size"] == 64  # the tiny architecture's VAE input unless overridden
    rows = {r["method"]: r for r in data["rows"]}
    assert list(rows) == ["sds", "msd", "sdi", "vsd"]
    # the configured sampler lengths really ran: SDS 1 call, MSD sampler_steps, SDI inversion_steps + 1
    assert rows["sds"]["calls_per_step"] == 1
    assert rows["msd"]["calls_per_step"] == MSD_STEPS
    assert rows["sdi"]["calls_per_step"] == SDI_STEPS + 1
    for method, row in rows.items():
        calls, evaluations = _expected_counts(method, batch=1)
        assert (row["calls_per_step"], row["evaluations_per_step"]) == (calls, evaluations), method
        for key in ("ms_step", "ms_step_mean", "ms_step_min", "ms_guidance", "it_per_s"):
            assert math.isfinite(row[key]) and row[key] > 0, (method, key)
        assert row["ms_step_min"] <= row["ms_step"] and row["ms_step_min"] <= row["ms_step_mean"]
        assert row["it_per_s"] == pytest.approx(1000.0 / row["ms_step_mean"])
        assert row["peak_memory_mb"] is None and row["compile_s"] is None  # CPU: no GPU memory, no compile
        assert len(row["warmup_s"]) == 1 and row["steps"] == 2 and row["nonfinite_steps"] == 0
    assert rows["msd"]["settings"]["sampler_steps"] == MSD_STEPS
    assert rows["vsd"]["settings"]["lora_rank"] == 4 and rows["vsd"]["calls_per_step"] == 3
    assert data["targets"]["msd_over_sds"] == pytest.approx(rows["msd"]["ms_step"] / rows["sds"]["ms_step"])
    assert data["targets"]["msd_peak_memory_gb"] is None


def test_bench_library_counts_scale_with_batch():
    report = run_bench(
        BenchConfig(random_weights="tiny", methods=("msd",), steps=1, warmup=0, resolution=8, batch=2,
                    device="cpu", overrides=tuple(TINY_SCENE + SAMPLERS))
    )
    (row,) = report.rows
    assert isinstance(row, MethodTiming)
    assert (row.calls_per_step, row.evaluations_per_step) == _expected_counts("msd", batch=2)
    assert row.evaluations_per_step == 2 * MSD_STEPS * 2  # CFG doubles, batch 2 doubles again


def test_bench_skips_methods_the_prior_cannot_run_unless_named(tiny_run_overrides):
    """"all" on the oracle times sds, msd and sdi and says why vsd was skipped; naming vsd is an error."""
    from msd3d.errors import UnsupportedByPrior

    quick = dict(recipe="msd-oracle", steps=1, warmup=0, device="cpu", overrides=tuple(tiny_run_overrides))
    report = run_bench(BenchConfig(**quick))
    assert [r.method for r in report.rows] == ["sds", "msd", "sdi"]
    assert "no network to fine-tune" in report.settings["skipped_methods"]["vsd"]
    with pytest.raises(UnsupportedByPrior, match="no network to fine-tune"):
        run_bench(BenchConfig(methods=("vsd",), **quick))


def test_bench_options_are_checked_before_any_work():
    with pytest.raises(ConfigError, match="bench.methods"):
        run_bench(BenchConfig(methods=("dds",)))
    with pytest.raises(ConfigError, match="alternatives"):
        run_bench(BenchConfig(random_weights="tiny", model="some/model"))
    with pytest.raises(ConfigError, match="bench.warmup"):
        run_bench(BenchConfig(random_weights="tiny", compile=True, warmup=0))
    with pytest.raises(ConfigError, match="prior.sd.compile_mode"):
        run_config(BenchConfig(random_weights="tiny", compile_mode="fastest"))
    # the catalogue priors get a catalogue prompt by default (the learned one refused the SD prompt)
    assert run_config(BenchConfig(recipe="msd-learned")).prompt == run_config(BenchConfig(recipe="msd-oracle")).prompt
    assert parse_methods("SDS, msd,sds") == ("sds", "msd")
    assert parse_methods("all") is None  # every method the prior can run
    with pytest.raises(ConfigError, match="unknown method"):
        parse_methods("sds,foo")
    result = CliRunner().invoke(_app(), ["bench", "--random-weights", "huge", "--device", "cpu"])
    assert result.exit_code == 2 and "error: unknown --random-weights" in result.output
    # options and bench.* key=value settings are checked once, by BenchConfig, naming the key
    for args, message in (
        (["--steps", "0"], "error: bench.steps must be at least 1"),
        (["bench.start_step=-1"], "error: bench.start_step must be non-negative"),
        (["bench.stepz=3"], "error: unknown config key 'bench.stepz'"),
    ):
        result = CliRunner().invoke(_app(), ["bench", "--device", "cpu", *args])
        assert result.exit_code == 2 and message in result.output, result.output


def test_bench_flags_reach_the_run_config_and_overrides_win():
    cfg = run_config(
        BenchConfig(random_weights="sd21", resolution=32, batch=3, dtype="bf16", compile=True,
                    compile_mode="reduce-overhead", channels_last=True, overrides=("render.resolution=48",)),
        "sdi",
    )
    assert cfg.guidance.name == "sdi" and cfg.camera.batch_size == 3
    assert cfg.render.resolution == 48  # key=value beats --resolution
    sd = cfg.prior.sd
    assert (sd.dtype, sd.compile_unet, sd.compile_mode, sd.channels_last) == ("bf16", True, "reduce-overhead", True)
    assert sd.render_size == 512  # sd21 keeps the recipe's VAE input size; only "tiny" shrinks it


# -- the sync-free helpers -------------------------------------------------------------------------


def test_read_scalars_equals_float_of_each_value():
    values = [torch.tensor(True), torch.tensor(1.5, dtype=torch.float32), 2.25, torch.tensor([3.0]),
              torch.tensor(1 / 3, dtype=torch.float32), torch.tensor(float("nan")),
              torch.tensor(0.1, dtype=torch.float16)]
    out = read_scalars(values)
    expected = [float(v) for v in values]
    assert out[:-2] == expected[:-2] and out[-1] == expected[-1] and math.isnan(out[-2])
    assert read_scalars([]) == []


def test_stat_and_to_device_on_cpu():
    t = torch.tensor(0.25)
    assert stat(t) == 0.25 and isinstance(stat(t, defer=True), float)  # CPU values are always floats
    assert stat(3) == 3.0
    x = torch.arange(4.0)
    assert torch.equal(to_device(x, "cpu"), x)


def test_schedule_conversions_stay_on_the_input_device_and_match_float64():
    schedule = VPSchedule.scaled_linear()
    t = torch.tensor([0.0, 0.4, 17.25, 500.0, 998.5, 999.0])
    sigma = schedule.sigma_from_timestep(t)
    assert sigma.dtype == torch.float32 and sigma.device == t.device
    ref = torch.from_numpy(
        __import__("numpy").interp(sigma.double().log().numpy(), schedule.log_sigmas.numpy(), range(1000))
    ).float()
    torch.testing.assert_close(schedule.timestep_from_sigma(sigma), ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(schedule.timestep_from_sigma(sigma), t, atol=2e-3, rtol=0)
    assert schedule.log_sigma_table("cpu") is schedule.log_sigmas  # CPU uses the float64 table itself


# -- CUDA ------------------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.cuda
@cuda
def test_schedule_on_cuda_matches_cpu_without_host_copies():
    schedule = VPSchedule.scaled_linear()
    sigma = schedule.sigma_from_timestep(torch.linspace(0, 999, 37))
    on_cpu = schedule.timestep_from_sigma(sigma)
    schedule.log_sigma_table("cuda")  # the table is copied once, before the sync check
    torch.cuda.set_sync_debug_mode("error")
    try:
        on_gpu = schedule.timestep_from_sigma(sigma.cuda())
        back = schedule.sigma_from_timestep(on_gpu)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert on_gpu.device.type == "cuda" and back.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=1e-6, rtol=0)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("method", ["sds", "msd"])
def test_guidance_on_cuda_never_waits_for_the_gpu(method):
    from msd3d.guidance import GuidanceConfig, build_guidance
    from msd3d.priors.sd_architectures import build_random_components
    from msd3d.priors.stable_diffusion import StableDiffusionConfig, StableDiffusionPrior

    prior = StableDiffusionPrior.from_components(
        **build_random_components("tiny", "cuda", torch.float16), config=StableDiffusionConfig(render_size=64),
        device="cuda",
    )
    config = GuidanceConfig()
    config.msd.kernel = "posterior"
    guidance = build_guidance(method, prior, config)
    guidance.defer_stats = True
    x = prior.encode(torch.rand(1, 3, 64, 64, device="cuda"))
    cond = prior.condition(["a cat"])
    generator = torch.Generator().manual_seed(0)
    guidance(x, cond, 0, 10, generator=generator)  # first call: tables, pinned buffers, cuDNN plans
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = guidance(x, cond, 1, 10, generator=generator)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(out.target).all()
    assert all(math.isfinite(float(v)) for v in out.stats.values())


@pytest.mark.cuda
@cuda
def test_bench_on_cuda_reports_peak_memory_and_counts():
    from msd3d.errors import Msd3dError
    from msd3d.workflows.benchmark import prepare_nerfacc

    try:
        prepare_nerfacc(torch.device("cuda"))
    except Msd3dError as err:  # the packed renderer's own tests report this
        pytest.skip(str(err))
    report = run_bench(
        BenchConfig(random_weights="tiny", steps=2, warmup=1, device="cuda", overrides=tuple(TINY_SCENE + SAMPLERS))
    )
    rows = {r.method: r for r in report.rows}
    assert rows["msd"].calls_per_step == MSD_STEPS and rows["sdi"].calls_per_step == SDI_STEPS + 1
    for row in rows.values():
        assert row.peak_memory_mb is not None and row.peak_memory_mb > 0
        assert math.isfinite(row.ms_step) and row.ms_step > 0
    assert report.prior["model_dtype"] == "float16"
