"""Speed of text-to-3D training: one full training step and the guidance alone, per method.

What is timed (docs/design.md §5), for each guidance method (SDS, MSD, SDI) on one prior:

* **full step**: :meth:`msd3d.train.Trainer.train_step` — occupancy-grid refresh when due, camera
  sampling, render (nerfacc), VAE encode, guidance, loss, backward, the non-finite guard, Adam;
* **guidance alone**: the method's call on a fixed encoded render (the product sampler for MSD, the
  inversion for SDI), i.e. the denoiser work of one step.

Each timed call is bracketed by device synchronisation (``torch.cuda.synchronize``) and measured with
``time.perf_counter``, so the numbers are wall time per step as training sees it. ``warmup`` untimed
steps come first; their excess over the steady-state median is reported as ``compile_s`` when
``torch.compile`` is on (compilation, CUDA-graph capture and cuDNN autotuning all happen there).
Peak GPU memory is ``torch.cuda.max_memory_allocated`` over the method's steps (weights included).

The prior is Stable Diffusion with random weights (``random_weights="tiny"`` for CPU checks,
``"sd21"`` for the real SD-2.1-base architecture at its true speed), a model folder or hub id
(``model``), or whatever the recipe names (e.g. the oracle, for CPU speed). It is built once and
shared by every method; each method gets a fresh :class:`~msd3d.train.Trainer` (``prior=``).

    from msd3d.workflows.benchmark import BenchConfig, run_bench
    report = run_bench(BenchConfig(random_weights="tiny", steps=2, warmup=1, device="cpu"))
    print(report.rows[0].ms_step, report.rows[0].calls_per_step)
"""

from __future__ import annotations

import gc
import math
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from msd3d.config import RunConfig, load_config, resolve_recipe
from msd3d.device import resolve_device
from msd3d.errors import ConfigError, Msd3dError, UnsupportedByPrior
from msd3d.priors.base import DiffusionPrior
from msd3d.registry import GUIDANCE
from msd3d.render.cameras import VIEW_NAMES, sample_cameras, view_prompts
from msd3d.train import Trainer
from msd3d.workflows.benchmark_report import (  # noqa: F401 - re-exported
    TABLE_HEADER,
    BenchReport,
    MethodTiming,
    print_report,
    table_rows,
    table_title,
)

METHODS = GUIDANCE.names()
RANDOM_ARCHITECTURES = ("tiny", "sd21")
DTYPE_NAMES = ("auto", "fp16", "bf16", "fp32")
#: VAE input size of the tiny random architecture unless overridden (its VAE is for tests, not 512 px).
TINY_RENDER_SIZE = 64
SD_PROMPT = "a DSLR photo of a delicious hamburger"
#: A catalogue prompt, so ``msd3d bench -c msd-oracle`` works without --prompt.
ORACLE_PROMPT = "a red mushroom"


@dataclass
class BenchConfig:
    """What ``msd3d bench`` measures, and on what."""

    methods: tuple[str, ...] | None = None
    """Methods to time; None = every registered method the prior can run (VSD needs a network)."""
    random_weights: str | None = None
    """"tiny" or "sd21": Stable Diffusion with random weights, built in memory on the device."""
    model: str | None = None
    """SD hub id or local diffusers folder (instead of random weights). Neither: the recipe's prior."""
    steps: int = 10
    """Timed steps per method (full step and guidance alone each)."""
    warmup: int = 3
    """Untimed steps first (compilation, cuDNN autotuning, the first occupancy-grid fill)."""
    resolution: int | None = None
    """Training render size (render.resolution); None = the recipe's (64 for msd-sd, 32 for msd-oracle)."""
    batch: int = 1
    """Views per step (camera.batch_size)."""
    device: str = "auto"
    dtype: str = "auto"
    """Model dtype (prior.sd.dtype): auto (fp16 on CUDA, fp32 on CPU), fp16, bf16 or fp32."""
    compile: bool = False
    """torch.compile the UNet (prior.sd.compile_unet; CUDA only)."""
    compile_mode: str = "default"
    """prior.sd.compile_mode: default, reduce-overhead (CUDA graphs), max-autotune, ..."""
    compile_vae: bool = False
    """torch.compile the differentiable VAE encode too (prior.sd.compile_vae; CUDA only)."""
    channels_last: bool = False
    recipe: str | None = None
    """Recipe name or YAML path (default: the default recipe, msd-sd)."""
    overrides: tuple[str, ...] = ()
    """key=value config overrides, applied last (they win over every option above)."""
    prompt: str | None = None
    """None = a prompt the prior takes: :data:`SD_PROMPT`, or :data:`ORACLE_PROMPT` on the oracle and the
    learned prior (they know only catalogue prompts)."""
    seed: int = 0
    start_step: int = 0
    """Training step index of the first (warm-up) step; schedules (lambda, t, shading) follow it."""

    def validate(self) -> None:
        if self.methods is not None and not self.methods:
            raise ValueError("bench.methods must name at least one method")
        for m in self.methods or ():
            if m not in METHODS:
                raise ValueError(f"bench.methods: unknown method {m!r}; choose from {', '.join(METHODS)}")
        if self.random_weights is not None and self.random_weights not in RANDOM_ARCHITECTURES:
            raise ValueError(f"bench.random_weights must be one of {', '.join(RANDOM_ARCHITECTURES)}")
        if self.random_weights is not None and self.model is not None:
            raise ValueError("bench.random_weights and bench.model are alternatives; pass one of them")
        if self.steps < 1:
            raise ValueError("bench.steps must be at least 1")
        if self.warmup < 0:
            raise ValueError("bench.warmup must be non-negative")
        if (self.compile or self.compile_vae) and self.warmup < 1:
            raise ValueError("bench.warmup must be at least 1 with compilation (the first steps compile)")
        if (self.resolution is not None and self.resolution < 8) or self.batch < 1:
            raise ValueError("bench.resolution must be at least 8 and bench.batch at least 1")
        if self.start_step < 0:
            raise ValueError("bench.start_step must be non-negative")
        if self.dtype not in DTYPE_NAMES:
            raise ValueError(f"bench.dtype must be one of {', '.join(DTYPE_NAMES)}, got {self.dtype!r}")
        if self.start_step < 0:
            raise ValueError("bench.start_step must be non-negative")




# ------------------------------------------------------------------------------------------------
# configuration and prior


def run_config(config: BenchConfig, method: str | None = None) -> RunConfig:
    """The training configuration one method is benchmarked with (recipe + bench options + overrides)."""
    values: dict[str, Any] = {
        "seed": config.seed,
        "device": config.device,
        "camera.batch_size": config.batch,
        "guidance.name": method or (config.methods or METHODS)[0],
    }
    if config.random_weights is not None or config.model is not None:
        values["prior.name"] = "sd"
        values["prior.sd.model"] = config.model or f"<random {config.random_weights}>"
    if config.random_weights == "tiny":
        values["prior.sd.render_size"] = TINY_RENDER_SIZE
    values.update(
        {
            "prior.sd.dtype": config.dtype,
            "prior.sd.compile_unet": config.compile,
            "prior.sd.compile_mode": config.compile_mode,
            "prior.sd.compile_vae": config.compile_vae,
            "prior.sd.channels_last": config.channels_last,
        }
    )
    if config.resolution is not None:
        values["render.resolution"] = config.resolution
    cfg = load_config(resolve_recipe(config.recipe), list(config.overrides), values)
    if config.prompt is not None:
        cfg.prompt = config.prompt
    elif not cfg.prompt:
        cfg.prompt = ORACLE_PROMPT if cfg.prior.name in ("oracle", "learned") else SD_PROMPT
    return cfg


def build_components(arch: str, device: torch.device, dtype_name: str = "auto") -> dict[str, Any]:
    """Random-weight SD components built directly on ``device`` in the model dtype."""
    from msd3d.priors.sd_architectures import build_random_components
    from msd3d.priors.stable_diffusion import resolve_dtype

    return build_random_components(arch, device, resolve_dtype(dtype_name, device))


def build_bench_prior(
    config: BenchConfig, device: torch.device, components: dict[str, Any] | None = None
) -> DiffusionPrior:
    """The prior every method of ``config`` shares.

    components: prebuilt random-weight components (reused across variants, e.g. eager and compiled);
    built here for ``random_weights`` when not given.
    """
    from msd3d.priors.choice import build_prior

    cfg = run_config(config)
    if config.random_weights is None and config.model is None:
        return build_prior(cfg.prior, device)
    from msd3d.priors.stable_diffusion import StableDiffusionPrior

    if config.model is not None:
        return StableDiffusionPrior(cfg.prior.sd, device=device)
    if components is None:
        components = build_components(config.random_weights, device, cfg.prior.sd.dtype)  # type: ignore[arg-type]
    return StableDiffusionPrior.from_components(**components, config=cfg.prior.sd, device=device)


def describe_prior(prior: DiffusionPrior, config: BenchConfig) -> dict[str, Any]:
    info: dict[str, Any] = {"class": type(prior).__name__}
    if config.random_weights is not None:
        info["weights"] = f"random {config.random_weights}"
    elif config.model is not None:
        info["weights"] = config.model
    if hasattr(prior, "model_dtype"):
        info["model_dtype"] = str(prior.model_dtype).removeprefix("torch.")
    if hasattr(prior, "latent_size"):
        info["latent_size"] = int(prior.latent_size)
    sd_config = getattr(prior, "config", None)
    if sd_config is not None and hasattr(sd_config, "render_size"):
        info["render_size"] = sd_config.render_size
    unet = getattr(prior, "unet", None)
    if isinstance(unet, torch.nn.Module):
        info["unet_parameters"] = sum(p.numel() for p in unet.parameters())
    return info


def prepare_nerfacc(device: torch.device) -> float:
    """Build or load nerfacc's CUDA kernels now (JIT, about a minute the first time); returns seconds.

    Raises :class:`Msd3dError` when they cannot be built (no CUDA toolkit), naming the fallback.
    """
    if device.type != "cuda":
        return 0.0
    start = time.perf_counter()
    try:
        from nerfacc.cuda._backend import _C
    except Exception as err:  # the JIT build raises many kinds
        raise Msd3dError(
            f"nerfacc's CUDA kernels failed to build ({str(err).splitlines()[0] if str(err) else type(err).__name__}); "
            "install the CUDA toolkit (nvcc) or pass render.use_occupancy_grid=false"
        ) from err
    if _C is None:
        raise Msd3dError(
            "nerfacc's CUDA kernels are unavailable (no nvcc found to build them); install the CUDA toolkit "
            "or pass render.use_occupancy_grid=false (batched sampling without the grid)"
        )
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------------
# timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """(wall seconds, result) of ``fn()``, with the device drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def _warm_text_cache(prior: DiffusionPrior, cfg: RunConfig) -> None:
    """Encode every view-dependent prompt once, so no timed step runs the text encoder."""
    encode = getattr(prior, "text_embeddings", None)
    if callable(encode):
        prompts = [f"{cfg.prompt}, {v} view" for v in VIEW_NAMES] + [cfg.prompt, cfg.negative_prompt]
        encode(prompts)


def _guidance_inputs(trainer: Trainer, step: int, generator: torch.Generator):
    """A fixed encoded render ``x`` and its condition, as one training step would produce them."""
    cfg = trainer.config
    cameras = sample_cameras(cfg.camera, cfg.render.resolution, generator=generator)
    prompts = (
        view_prompts(cfg.prompt, cameras, cfg.camera) if cfg.view_dependent_prompts else [cfg.prompt] * len(cameras)
    )
    cameras = cameras.to(trainer.device)
    # with gradients, as in training: a compiled VAE encode would otherwise compile a second graph
    out = trainer.renderer(cameras, shading="albedo", generator=generator)
    x = trainer.prior.encode(out.image()).detach()
    cond = trainer.prior.condition(prompts, negative_prompt=cfg.negative_prompt, cameras=cameras)
    return x, cond


def _method_settings(cfg: RunConfig, method: str) -> dict[str, Any]:
    g = getattr(cfg.guidance, method)
    keys = {
        "sds": ("guidance_scale",),
        "msd": ("sampler_steps", "samples", "guidance_scale", "kernel", "eta"),
        "sdi": ("inversion_steps", "inversion_guidance_scale", "guidance_scale"),
        "vsd": ("guidance_scale", "lora_rank", "lora_lr"),
    }.get(method, ())
    return {k: getattr(g, k) for k in keys if hasattr(g, k)}


def bench_method(
    prior: DiffusionPrior,
    config: BenchConfig,
    method: str,
    log: Callable[[str], None] | None = None,
) -> MethodTiming:
    """Time ``config.steps`` full training steps and guidance calls of ``method`` on ``prior``."""
    log = log or (lambda message: None)
    cfg = run_config(config, method)
    device = resolve_device(cfg.device)
    total = cfg.train.steps
    with tempfile.TemporaryDirectory(prefix="msd3d-bench-") as tmp:
        trainer = Trainer(cfg, Path(tmp) / "run", prior=prior, show_progress=False)
        _warm_text_cache(prior, cfg)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        step = config.start_step
        warmup_s = []
        for _ in range(config.warmup):
            seconds, _ = timed(lambda: trainer.train_step(step), device)
            warmup_s.append(seconds)
            log(f"{method}: warm-up step {step} {seconds * 1000:.1f} ms")
            step += 1

        prior.counter.reset()
        step_s, nonfinite = [], 0
        for _ in range(config.steps):
            seconds, result = timed(lambda: trainer.train_step(step), device)
            step_s.append(seconds)
            nonfinite += 0 if result.finite else 1
            step += 1
        calls = prior.counter.calls / config.steps
        evaluations = prior.counter.evaluations / config.steps
        log(f"{method}: {config.steps} steps, median {statistics.median(step_s) * 1000:.1f} ms")

        generator = torch.Generator().manual_seed(config.seed + 1)
        x, cond = _guidance_inputs(trainer, step, generator)
        guide = lambda: trainer.guidance(x, cond, step, total, generator=generator)  # noqa: E731
        timed(guide, device)  # shapes are compiled already; this settles allocator and caches
        guidance_s = [timed(guide, device)[0] for _ in range(config.steps)]

        peak = reserved = None
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device) / 2**20
            reserved = torch.cuda.max_memory_reserved(device) / 2**20
        trainer = x = cond = None  # release device memory before the next method

    median = statistics.median(step_s)
    mean = statistics.fmean(step_s)
    overhead = sum(max(0.0, w - median) for w in warmup_s)
    compiling = bool(getattr(getattr(prior, "config", None), "compile_unet", False) or
                     getattr(getattr(prior, "config", None), "compile_vae", False)) and device.type == "cuda"
    return MethodTiming(
        method=method,
        ms_step=1000 * median,
        ms_step_mean=1000 * mean,
        ms_step_min=1000 * min(step_s),
        it_per_s=1.0 / median if median > 0 else math.inf,
        ms_guidance=1000 * statistics.median(guidance_s),
        ms_guidance_min=1000 * min(guidance_s),
        calls_per_step=calls,
        evaluations_per_step=evaluations,
        peak_memory_mb=peak,
        peak_reserved_mb=reserved,
        warmup_s=warmup_s,
        warmup_overhead_s=overhead,
        compile_s=overhead if compiling else None,
        steps=config.steps,
        nonfinite_steps=nonfinite,
        settings=_method_settings(cfg, method),
    )


def run_bench(
    config: BenchConfig,
    components: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> BenchReport:
    """Build the prior once and time every method of ``config``.

    components: prebuilt random-weight components to reuse (see :func:`build_components`).
    Raises :class:`~msd3d.errors.ConfigError` for invalid settings and :class:`Msd3dError` for
    environment problems (no CUDA, model not found, nerfacc kernels unavailable).
    """
    log = log or (lambda message: None)
    try:
        config.validate()
    except ValueError as err:
        raise ConfigError(str(err)) from None
    base = run_config(config)  # validates recipe and overrides before anything heavy
    device = resolve_device(base.device)
    setup: dict[str, float] = {}

    grid = str(base.render.use_occupancy_grid).strip().lower() not in ("false", "0", "no", "off")
    if grid and device.type == "cuda":
        log("loading nerfacc CUDA kernels (built on first use)...")
        setup["nerfacc_s"] = prepare_nerfacc(device)

    if config.random_weights is not None or config.model is not None or base.prior.name == "sd":
        start = time.perf_counter()
        import diffusers  # noqa: F401  (imported before the build timer: seconds on a cold start)
        import transformers  # noqa: F401

        setup["imports_s"] = time.perf_counter() - start
    log(f"building the prior on {device}...")
    start = time.perf_counter()
    if components is None and config.random_weights is not None:
        components = build_components(config.random_weights, device, base.prior.sd.dtype)
    prior = build_bench_prior(config, device, components)
    synchronize(device)
    setup["prior_build_s"] = time.perf_counter() - start

    rows, skipped = [], {}
    for method in config.methods or METHODS:
        try:
            rows.append(bench_method(prior, config, method, log))
        except UnsupportedByPrior as err:
            if config.methods is not None:  # asked for by name: the user's error, in one line
                raise
            skipped[method] = str(err)
            log(f"{method}: skipped ({err})")
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    settings = {
        "methods": [row.method for row in rows],
        "skipped_methods": skipped,
        "steps": config.steps,
        "warmup": config.warmup,
        "resolution": base.render.resolution,  # after overrides
        "batch": base.camera.batch_size,
        "dtype": config.dtype,
        "compile": config.compile,
        "compile_mode": config.compile_mode if config.compile else None,
        "compile_vae": config.compile_vae,
        "channels_last": config.channels_last,
        "recipe": str(resolve_recipe(config.recipe) or "defaults"),
        "overrides": list(config.overrides),
        "start_step": config.start_step,
        "sampling": ("packed (nerfacc occupancy grid)" if device.type == "cuda" else "batched + occupancy grid")
        if grid else f"batched, {base.render.samples_per_ray} samples/ray, no grid",
        "cpu_threads": torch.get_num_threads(),
    }
    return BenchReport(
        device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        torch_version=torch.__version__,
        prior=describe_prior(prior, config),
        settings=settings,
        rows=rows,
        setup_s=setup,
    )


def parse_methods(text: str) -> tuple[str, ...] | None:
    """``"sds,msd"`` -> ``("sds", "msd")``; ``"all"`` -> None (every method the prior can run)."""
    if text.strip().lower() == "all":
        return None
    methods = tuple(dict.fromkeys(m.strip().lower() for m in text.split(",") if m.strip()))
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"unknown method {m!r} in --methods; choose from {', '.join(METHODS)} (comma-separated)")
    if not methods:
        raise ConfigError(f"--methods is empty; pass e.g. {','.join(METHODS)}")
    return methods


__all__ = [
    "BenchConfig",
    "BenchReport",
    "METHODS",
    "MethodTiming",
    "RANDOM_ARCHITECTURES",
    "bench_method",
    "build_bench_prior",
    "build_components",
    "parse_methods",
    "prepare_nerfacc",
    "print_report",
    "run_bench",
    "run_config",
    "table_rows",
]
