"""``msd3d image PROMPT``: text to image with any guidance method (the work is :mod:`msd3d.workflows.text_to_2d`)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from msd3d.commands import user_errors
from msd3d.registry import GUIDANCE, PRIORS


def image(
    prompt: str = typer.Argument(..., help='What to draw, e.g. "a red mushroom".'),
    overrides: Optional[List[str]] = typer.Argument(
        None, help="Config overrides as key=value (as --set), e.g. guidance.msd.guidance_scale=5 image.lr=0.05."
    ),
    config: Optional[str] = typer.Option(
        None, "--config", "-c", help="Recipe YAML path or shipped name (its prior and guidance sections are used)."
    ),
    prior: Optional[str] = typer.Option(None, help=f"The prior: {PRIORS.help()} (prior.name; default sd)."),
    guidance: Optional[str] = typer.Option(None, help=f"The guidance method: {GUIDANCE.help()}."),
    steps: Optional[int] = typer.Option(None, help="Optimisation steps (image.steps, default 500)."),
    size: Optional[int] = typer.Option(
        None, help="Image side in pixels (image.size; default the prior's own: learned 32, sd prior.sd.render_size)."
    ),
    n: Optional[int] = typer.Option(
        None, "--n", "--batch", help="Images made at once, in one batch (image.n, default 4)."
    ),
    seed: Optional[int] = typer.Option(None, help="Random seed."),
    out: Optional[Path] = typer.Option(
        None, help="Output folder, new or empty (default outputs/images/<prompt-slug>-<guidance>-<prior>-<seed>)."
    ),
    set_: Optional[List[str]] = typer.Option(
        None, "--set", help="KEY=VALUE override, repeatable: config keys (docs/config.md) or image.* keys."
    ),
    device: Optional[str] = typer.Option(None, help="auto (CUDA when present), cpu, cuda or cuda:N."),
    model: Optional[str] = typer.Option(None, help="Stable Diffusion hub id, local folder or file (prior.sd.model)."),
    threads: int = typer.Option(0, help="CPU threads for torch (0: torch's default); 1 on a shared machine."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Optimise images for PROMPT directly with a guidance method; writes PNGs, a grid, summary.json and report.html."""
    with user_errors():
        from msd3d.config import apply_overrides
        from msd3d.errors import ConfigError, Msd3dError
        from msd3d.workflows.text_to_2d import ImageConfig, generate_images, load_image_run_config

        items = [*(overrides or []), *(set_ or [])]
        for item in items:
            if "=" not in item or item.startswith("="):
                raise Msd3dError(f"override {item!r} is not key=value (e.g. image.lr=0.05)")
        if threads < 0:
            raise Msd3dError(f"--threads must be 0 (default) or positive, got {threads}")
        image_items = [item for item in items if item.startswith("image.")]
        run_items = [item for item in items if not item.startswith("image.")]
        values = {"prompt": prompt, "seed": seed, "guidance.name": guidance, "prior.name": prior,
                  "device": device, "prior.sd.model": model}
        cfg = load_image_run_config(config, prior, guidance, run_items, values)
        flags = {"steps": steps, "size": size, "n": n}
        settings = ImageConfig(**{k: v for k, v in flags.items() if v is not None})
        settings = apply_overrides(settings, image_items, section="image")
        try:
            settings.validate()
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if out is not None:
            cfg.out = str(out)
        if threads:
            import torch

            torch.set_num_threads(threads)
        generate_images(cfg, settings, show_progress=not quiet, log=lambda message: typer.echo(message, err=True))
