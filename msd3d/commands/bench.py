"""``msd3d bench``: how fast one training step and the guidance alone run, per method.

Registered by the CLI as ``app.command("bench")(bench)``. Heavy modules (torch, diffusers, nerfacc)
are imported inside the command, so ``msd3d --help`` stays instant. Every input or environment
problem exits with status 2 and one line on stderr starting with ``error:``.

    msd3d bench --random-weights tiny --device cpu                    # CPU smoke check
    msd3d bench -c msd-oracle --device cpu                            # the offline oracle recipe
    msd3d bench --random-weights sd21 --compile --json bench.json     # the real architecture on a GPU
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from msd3d.commands import user_errors
from msd3d.registry import GUIDANCE


def bench(
    overrides: Annotated[
        Optional[List[str]],
        typer.Argument(help="Overrides as key=value: run-config keys (guidance.msd.sampler_steps=8) or bench.* "
                       "settings (bench.start_step=500); they win over options."),
    ] = None,
    random_weights: Annotated[
        Optional[str],
        typer.Option(help="Stable Diffusion with random weights: tiny (tests, CPU) or sd21 (SD-2.1-base "
                     "architecture, ~866 M-parameter UNet: the true speed without the weights)."),
    ] = None,
    model: Annotated[
        Optional[str],
        typer.Option(help="SD hub id or local diffusers folder, instead of --random-weights. "
                     "Neither: the recipe's prior (e.g. --config msd-oracle for the CPU oracle)."),
    ] = None,
    methods: Annotated[
        str, typer.Option(help=f"Comma-separated guidance methods ({', '.join(GUIDANCE)}) or 'all' "
                          "(every method the prior can run).")
    ] = "all",
    steps: Annotated[int, typer.Option(help="Timed steps per method (full step and guidance alone each).")] = 10,
    warmup: Annotated[int, typer.Option(help="Untimed steps first (compilation, autotuning, grid fill).")] = 3,
    resolution: Annotated[
        Optional[int], typer.Option(help="Training render size, H = W (default: the recipe's render.resolution).")
    ] = None,
    batch: Annotated[int, typer.Option(help="Views per step (camera.batch_size).")] = 1,
    device: Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda or cuda:N.")] = "auto",
    dtype: Annotated[
        str, typer.Option(help="Model dtype: auto (fp16 on CUDA, fp32 on CPU), fp16, bf16, fp32.")
    ] = "auto",
    compile: Annotated[
        bool, typer.Option("--compile/--no-compile", help="torch.compile the UNet (CUDA; compile time reported apart).")
    ] = False,
    compile_mode: Annotated[
        str, typer.Option(help="torch.compile mode: default, reduce-overhead (CUDA graphs), max-autotune, "
                          "max-autotune-no-cudagraphs.")
    ] = "default",
    compile_vae: Annotated[
        bool, typer.Option("--compile-vae/--no-compile-vae", help="Also torch.compile the VAE encode (CUDA).")
    ] = False,
    channels_last: Annotated[
        bool, typer.Option("--channels-last/--no-channels-last", help="UNet and VAE in channels-last memory format.")
    ] = False,
    config: Annotated[
        Optional[str], typer.Option("--config", "-c", help="Recipe YAML path or shipped name (default msd-sd).")
    ] = None,
    prompt: Annotated[
        Optional[str],
        typer.Option(
            help="Prompt of the benchmarked run (not timed; default: a hamburger, on the oracle a red mushroom)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    start_step: Annotated[int, typer.Option(help="Training step of the first warm-up step (schedules follow it).")] = 0,
    threads: Annotated[int, typer.Option(help="CPU threads for torch (0 = torch's default).")] = 0,
    json_path: Annotated[
        Optional[Path], typer.Option("--json", help="Also write the numbers to this JSON file.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines on stderr.")] = False,
) -> None:
    """Time one full training step (render, VAE encode, guidance, backward, Adam) and the guidance
    alone for SDS, MSD and SDI; print ms/step, it/s, denoiser calls/step and peak GPU memory."""
    from msd3d.errors import Msd3dError

    with user_errors():
        from rich.console import Console

        from msd3d.workflows.benchmark import BenchConfig, parse_methods, print_report, run_bench

        if random_weights is not None and random_weights not in ("tiny", "sd21"):
            raise Msd3dError(f"unknown --random-weights {random_weights!r}; choose tiny or sd21")
        if threads < 0:
            raise Msd3dError(f"--threads must be 0 (default) or positive, got {threads}")
        overrides = list(overrides or [])
        for item in overrides:
            if "=" not in item or item.startswith("="):
                raise Msd3dError(f"override {item!r} is not key=value (e.g. guidance.msd.sampler_steps=8)")
        # bench.* keys set BenchConfig fields; the rest are the benchmarked run's config
        bench_overrides = [item for item in overrides if item.startswith("bench.")]
        overrides = [item for item in overrides if not item.startswith("bench.")]
        settings = BenchConfig(
            methods=parse_methods(methods),
            random_weights=random_weights,
            model=model,
            steps=steps,
            warmup=warmup,
            resolution=resolution,
            batch=batch,
            device=device,
            dtype=dtype,
            compile=compile,
            compile_mode=compile_mode,
            compile_vae=compile_vae,
            channels_last=channels_last,
            recipe=config,
            overrides=tuple(overrides),
            prompt=prompt,
            seed=seed,
            start_step=start_step,
        )
        # BenchConfig checks every setting once (options and bench.* overrides alike)
        from msd3d.config import apply_overrides
        from msd3d.errors import ConfigError

        settings = apply_overrides(settings, bench_overrides, section="bench")
        try:
            settings.validate()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if threads:
            import torch

            torch.set_num_threads(threads)
        log = (lambda message: None) if quiet else (lambda message: typer.echo(message, err=True))
        report = run_bench(settings, log=log)

    console = Console(width=max(132, Console().width))
    print_report(report, console)
    if json_path is not None:
        report.write_json(json_path)
        typer.echo(f"wrote {json_path}")
