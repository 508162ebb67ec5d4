"""``msd3d toy2d``: the synthetic 2-D experiments (particles distilled from an exact mixture).

Registered by the CLI as ``app.command("toy2d")(toy2d)``. Every input problem exits with status 2
and one line on stderr starting with ``error:``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from msd3d.commands import fail, user_errors
from msd3d.registry import DATASETS_2D, GUIDANCE, MSD_KERNELS

# Names for the help texts come from the registry, which imports nothing heavy (`msd3d --help` stays fast).
DATASET_NAMES = DATASETS_2D.names()
KERNEL_NAMES = MSD_KERNELS
METHOD_NAMES = GUIDANCE.names()


def toy2d(
    overrides: Annotated[
        Optional[List[str]],
        typer.Argument(help="Settings as key=value, applied after the options: any key of Toy2DConfig, e.g. "
                       "guidance.msd.eta=0.5 optim.lr_schedule=cosine metrics.knn_k=5."),
    ] = None,
    dataset: Annotated[
        str,
        typer.Option(help=f"Built-in dataset(s), comma-separated: {', '.join(DATASET_NAMES)}, or 'all'. "
                     "With --gmm, just the name shown in the outputs."),
    ] = "fractal",
    methods: Annotated[
        str,
        typer.Option(help=f"Comma-separated methods: {', '.join(METHOD_NAMES)}, or "
                     f"{' / '.join('msd-' + k for k in KERNEL_NAMES)} (MSD with that kernel); append -iv for the "
                     "kernel on --kernel-interval only and @N for N sampler steps (e.g. msd-exp-iv@16)."),
    ] = ",".join(METHOD_NAMES),
    steps: Annotated[int, typer.Option(help="Optimisation steps per method.")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed (noise, reference samples, efficiency points).")] = 0,
    out: Annotated[Path, typer.Option(help="Output folder for results.json, table.md and the PNG plots.")] = Path(
        "runs/toy2d"
    ),
    gmm: Annotated[
        Path | None,
        typer.Option(help='JSON mixture {"means": [[..]], "covs": [[[..]]], "weights": [..]} '
                     '(optional "labels", "class_names") to use instead of a built-in dataset.'),
    ] = None,
    grid: Annotated[int, typer.Option(help="Particles start on a GRID x GRID lattice over the canvas.")] = 20,
    lambda_start: Annotated[
        float | None,
        typer.Option(help="MSD bandwidth at the first step (data units); default: the median component length."),
    ] = None,
    lambda_end: Annotated[
        float | None,
        typer.Option(help="MSD bandwidth at the last step; default: half the thinnest component's width."),
    ] = None,
    kernel: Annotated[
        str, typer.Option(help=f"How 'msd' applies its kernel: {', '.join(KERNEL_NAMES)}.")
    ] = "posterior",
    sampler_steps: Annotated[int, typer.Option(help="MSD product-sampler steps per estimate.")] = 4,
    samples: Annotated[int, typer.Option(help="MSD product samples averaged per estimate.")] = 1,
    guidance_scale: Annotated[
        float, typer.Option(help="Classifier-free guidance scale of every method (1 = off).")
    ] = 1.0,
    prompt: Annotated[
        str | None,
        typer.Option(help="Class prompt (fractal: 'orange' or 'gray'; '' = whole mixture); default per dataset."),
    ] = None,
    lr: Annotated[
        float | None, typer.Option(help="Adam's initial learning rate; default 3 % of the canvas width.")
    ] = None,
    efficiency: Annotated[
        bool, typer.Option(help="Also measure gradient estimation efficiency (error vs denoiser evaluations).")
    ] = True,
    denoiser: Annotated[
        str,
        typer.Option(help="What the methods distil from: 'exact' (the mixture's exact denoiser) or 'learned' "
                     "(a small MLP trained on its samples, saved to OUT[/DATASET]/denoiser.safetensors and reused)."),
    ] = "exact",
    denoiser_steps: Annotated[
        int, typer.Option(help="Training steps of the learned denoiser (stops early after --denoiser-seconds).")
    ] = 4000,
    denoiser_seconds: Annotated[float, typer.Option(help="Training time limit per dataset (s).")] = 120.0,
    kernel_interval: Annotated[
        str, typer.Option(help="Diffusion-time interval 'T_MIN,T_MAX' of the -iv MSD kernels.")
    ] = "0.0,0.5",
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Distil particles from an exact 2-D Gaussian mixture with SDS, MSD and SDI and score them
    (NLL, precision/recall, MMD, on-mode fraction), plus each estimator's error per denoiser call."""
    from msd3d.experiments.datasets2d import DATASETS
    from msd3d.experiments.toy2d import (
        EfficiencyConfig,
        OptimConfig,
        Toy2DConfig,
        parse_method,
        run_toy2d,
        run_toy2d_suite,
        summary_table,
    )
    from msd3d.guidance.msd import KERNELS
    from msd3d.priors.learned2d import Denoiser2DConfig

    if denoiser not in ("exact", "learned"):
        fail(f"unknown --denoiser {denoiser!r}; choose exact or learned")
    if denoiser_steps < 1 or not denoiser_seconds > 0:
        fail("--denoiser-steps must be at least 1 and --denoiser-seconds positive")
    try:
        interval = tuple(float(t) for t in kernel_interval.split(","))
    except ValueError:
        interval = ()
    if len(interval) != 2 or not 0 <= interval[0] <= interval[1] <= 1:
        fail(f"--kernel-interval must be 'T_MIN,T_MAX' with 0 <= T_MIN <= T_MAX <= 1, got {kernel_interval!r}")
    if steps < 1:
        fail(f"--steps must be at least 1, got {steps}")
    if grid < 2:
        fail(f"--grid must be at least 2, got {grid}")
    for flag, value in (("--lambda-start", lambda_start), ("--lambda-end", lambda_end), ("--lr", lr)):
        if value is not None and not value > 0:
            fail(f"{flag} must be positive, got {value}")
    if kernel not in KERNELS:
        fail(f"unknown --kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    if sampler_steps < 1 or samples < 1:
        fail("--sampler-steps and --samples must be at least 1")
    if guidance_scale <= 0:
        fail(f"--guidance-scale must be positive, got {guidance_scale}")
    method_list = tuple(m.strip().lower() for m in methods.split(",") if m.strip())
    if not method_list:
        fail(f"--methods must name at least one method ({', '.join(METHOD_NAMES)})")
    try:
        for m in method_list:
            parse_method(m, interval)
    except ValueError as err:
        fail(str(err))
    if len(set(method_list)) != len(method_list):
        fail(f"--methods repeats a method: {methods!r}")

    if gmm is not None:
        names = [dataset if dataset not in DATASETS and dataset != "all" else gmm.stem]
    elif dataset.strip().lower() == "all":
        names = list(DATASETS)
    else:
        names = [d.strip().lower() for d in dataset.split(",") if d.strip()]
        unknown = [d for d in names if d not in DATASETS]
        if not names or unknown:
            fail(f"unknown --dataset {', '.join(unknown) or dataset!r}; choose from {', '.join(DATASETS)}, "
                  "'all', or pass --gmm FILE")

    base = Toy2DConfig(
        dataset=names[0],
        gmm=None if gmm is None else str(gmm),
        prompt=prompt,
        methods=method_list,
        steps=steps,
        grid=grid,
        seed=seed,
        lambda_start=lambda_start,
        lambda_end=lambda_end,
        optim=OptimConfig(lr=lr),
        efficiency=EfficiencyConfig(enabled=efficiency),
        denoiser=denoiser,
        denoiser_train=Denoiser2DConfig(steps=denoiser_steps, max_seconds=denoiser_seconds),
        kernel_interval=interval,
    )
    g = base.guidance
    base.guidance = replace(
        g,
        sds=replace(g.sds, guidance_scale=guidance_scale),
        msd=replace(g.msd, kernel=kernel, sampler_steps=sampler_steps, samples=samples, guidance_scale=guidance_scale),
        sdi=replace(g.sdi, guidance_scale=guidance_scale),
    )
    with user_errors():
        from msd3d.config import apply_overrides

        base = apply_overrides(base, overrides or [])
        if len(names) == 1:
            results = {names[0]: run_toy2d(base, out, show_progress=progress)}
        else:
            results = run_toy2d_suite(base, names, out, show_progress=progress)
    typer.echo(summary_table(results))
    typer.echo(f"wrote {out / 'results.json'}, {out / 'table.md'} and plots")
