"""``msd3d generate PROMPT``: optimise a 3-D asset (the work is :mod:`msd3d.workflows.text_to_3d`)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from msd3d.commands import user_errors
from msd3d.registry import GUIDANCE, PRIORS


def _split_prompt_and_overrides(
    prompt: Optional[str], overrides: Optional[List[str]]
) -> tuple[Optional[str], list[str]]:
    overrides = list(overrides or [])
    if prompt is not None and "=" in prompt and " " not in prompt and "." in prompt.split("=", 1)[0]:
        # `msd3d generate --resume DIR train.steps=200`: no prompt, only overrides
        return None, [prompt, *overrides]
    return prompt, overrides


def generate(
    prompt: Optional[str] = typer.Argument(None, help='What to make, e.g. "a hamburger". Not needed with --resume.'),
    overrides: Optional[List[str]] = typer.Argument(None, help="Config overrides as key=value, e.g. train.steps=2000."),
    config: Optional[str] = typer.Option(
        None, "--config", "-c", help="Recipe YAML path or shipped name (msd-sd, msd-oracle, ...)."
    ),
    prior: Optional[str] = typer.Option(None, help=f"The prior: {PRIORS.help()} (prior.name)."),
    guidance: Optional[str] = typer.Option(None, help=f"The guidance method: {GUIDANCE.help()}."),
    steps: Optional[int] = typer.Option(None, help="Optimisation steps (train.steps)."),
    seed: Optional[int] = typer.Option(None, help="Random seed."),
    out: Optional[Path] = typer.Option(
        None, help="Run directory (default outputs/<prompt-slug>-<guidance>-<prior>-<seed>)."
    ),
    resume: Optional[Path] = typer.Option(None, help="Continue the run in this directory from its last checkpoint."),
    device: Optional[str] = typer.Option(None, help="auto (CUDA when present), cpu, cuda or cuda:N."),
    model: Optional[str] = typer.Option(
        None, help="Stable Diffusion hub id, local diffusers folder or .safetensors/.ckpt file (prior.sd.model)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Optimise a 3-D asset for PROMPT; writes checkpoints, metrics, mesh and turntable to a run directory."""
    with user_errors():
        from msd3d.config import load_config, resolve_recipe
        from msd3d.errors import Msd3dError
        from msd3d.run_dir import RunDir
        from msd3d.workflows.text_to_3d import default_run_dir
        from msd3d.workflows.text_to_3d import generate as run_generate

        prompt, overrides = _split_prompt_and_overrides(prompt, overrides)
        values = {
            "prompt": prompt,
            "seed": seed,
            "train.steps": steps,
            "guidance.name": guidance,
            "prior.name": prior,
            "device": device,
            "prior.sd.model": model,
        }
        if resume is not None:
            run = RunDir(resume)
            if not run.config.is_file():
                raise Msd3dError(
                    f"cannot resume {str(resume)!r}: no config.yaml there; "
                    "pass a run directory written by msd3d generate"
                )
            if config is not None:
                raise Msd3dError("--config cannot be combined with --resume; the run keeps its own config.yaml")
            if out is not None:
                raise Msd3dError(f"--out cannot be combined with --resume; the run stays in {str(resume)!r}")
            _check_same_run(load_config(run.config), values, resume)
            cfg = load_config(run.config, overrides, values)
            run_generate(cfg, resume, resume=True, show_progress=not quiet, log=_log)
            return
        if not prompt or not prompt.strip():
            raise Msd3dError('missing PROMPT; e.g. msd3d generate "a hamburger" (or --resume RUN_DIR)')
        cfg = load_config(resolve_recipe(config, prior, guidance), overrides, values)
        if out is not None:
            cfg.out = str(out)
        run_generate(cfg, default_run_dir(cfg), show_progress=not quiet, log=_log)


def _check_same_run(saved: object, values: dict, run_dir: Path) -> None:
    """--resume continues the run it names: a PROMPT, --prior, --guidance or --seed that differs from the
    run's own would silently turn it into another job (in a folder named after the old one)."""
    from omegaconf import OmegaConf

    from msd3d.errors import Msd3dError

    flags = {"prompt": "PROMPT", "prior.name": "--prior", "guidance.name": "--guidance", "seed": "--seed"}
    for key, flag in flags.items():
        given, own = values.get(key), OmegaConf.select(OmegaConf.structured(saved), key)
        if given is not None and given != own:
            raise Msd3dError(
                f"{flag} {given!r} differs from the run's own {own!r} in {str(run_dir)!r}; --resume continues that "
                f"run as it is: drop {flag} (or start a new run without --resume)"
            )


def _log(message: str) -> None:
    typer.echo(message, err=True)
