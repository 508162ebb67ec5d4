"""The ``msd3d`` command line. Commands parse options and delegate; none knows how guidance works.

Heavy modules (torch models, diffusers) are imported inside commands so that ``--help`` is instant
and commands that do not need Stable Diffusion never load it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from msd3d.commands import user_errors
from msd3d.commands.batch import batch
from msd3d.commands.bench import bench
from msd3d.commands.export import export
from msd3d.commands.render import render
from msd3d.commands.report import report
from msd3d.commands.toy2d import toy2d

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Text-to-3D with mean-shift distillation (MSD) on Stable Diffusion.",
)


def _split_prompt_and_overrides(prompt: Optional[str], overrides: Optional[List[str]]) -> tuple[Optional[str], list[str]]:
    overrides = list(overrides or [])
    if prompt is not None and "=" in prompt and " " not in prompt and "." in prompt.split("=", 1)[0]:
        # `msd3d generate --resume DIR train.steps=200`: no prompt, only overrides
        return None, [prompt, *overrides]
    return prompt, overrides


@app.command()
def generate(
    prompt: Optional[str] = typer.Argument(None, help='What to make, e.g. "a hamburger". Not needed with --resume.'),
    overrides: Optional[List[str]] = typer.Argument(None, help="Config overrides as key=value, e.g. train.steps=2000."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="Recipe YAML path or shipped name (msd-sd, msd-oracle, ...)."),
    prior: Optional[str] = typer.Option(None, help="sd (Stable Diffusion) or oracle (offline catalogue)."),
    guidance: Optional[str] = typer.Option(None, help="msd, sds or sdi."),
    steps: Optional[int] = typer.Option(None, help="Optimisation steps (train.steps)."),
    seed: Optional[int] = typer.Option(None, help="Random seed."),
    out: Optional[Path] = typer.Option(None, help="Run directory (default outputs/<prompt-slug>-<seed>)."),
    resume: Optional[Path] = typer.Option(None, help="Continue the run in this directory from its last checkpoint."),
    device: Optional[str] = typer.Option(None, help="auto (CUDA when present), cpu, cuda or cuda:N."),
    model: Optional[str] = typer.Option(None, help="Stable Diffusion hub id or local folder (prior.sd.model)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Optimise a 3-D asset for PROMPT; writes checkpoints, metrics, mesh and turntable to a run directory."""
    with user_errors():
        from msd3d.config import load_config, resolve_recipe
        from msd3d.errors import Msd3dError
        from msd3d.generate import default_run_dir, generate as run_generate
        from msd3d.run_dir import RunDir

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
                raise Msd3dError(f"cannot resume {str(resume)!r}: no config.yaml there; pass a run directory written by msd3d generate")
            if config is not None:
                raise Msd3dError("--config cannot be combined with --resume; the run keeps its own config.yaml")
            cfg = load_config(run.config, overrides, values)
            run_generate(cfg, resume, resume=True, show_progress=not quiet, log=_log)
            return
        if not prompt or not prompt.strip():
            raise Msd3dError('missing PROMPT; e.g. msd3d generate "a hamburger" (or --resume RUN_DIR)')
        cfg = load_config(resolve_recipe(config, prior, guidance), overrides, values)
        if out is not None:
            cfg.out = str(out)
        run_generate(cfg, default_run_dir(cfg), show_progress=not quiet, log=_log)


def _log(message: str) -> None:
    typer.echo(message, err=True)


@app.command("config")
def show_config(
    recipe: Optional[str] = typer.Argument(None, help="Recipe name or YAML path (default msd-sd)."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides to apply."),
    prior: Optional[str] = typer.Option(None, help="sd or oracle (picks the recipe when none is named)."),
    guidance: Optional[str] = typer.Option(None, help="msd, sds or sdi (picks the recipe when none is named)."),
    list_all: bool = typer.Option(False, "--list", help="List the shipped recipes instead."),
) -> None:
    """Print the fully resolved configuration of a recipe (what `generate` would run) as YAML."""
    with user_errors():
        from msd3d.config import list_recipes, load_config, resolve_recipe, to_yaml

        if list_all:
            for name in list_recipes():
                typer.echo(name)
            return
        if recipe is not None and "=" in recipe:
            recipe, overrides = None, [recipe, *(overrides or [])]
        values = {"guidance.name": guidance, "prior.name": prior}
        typer.echo(to_yaml(load_config(resolve_recipe(recipe, prior, guidance), overrides or [], values)), nl=False)


@app.command()
def catalogue() -> None:
    """List the oracle prior's shape families and variants (prompts for --prior oracle)."""
    with user_errors():
        from msd3d.priors.oracle import list_catalogue

        for family in list_catalogue():
            typer.echo(f"{family['name']}: {family.get('description', '')}")
            if family.get("synonyms"):
                typer.echo(f"  also: {', '.join(family['synonyms'])}")
            for variant in family["variants"]:
                typer.echo(f"  - {variant['name']}: {variant.get('description', '')}")



app.command("export")(export)
app.command("render")(render)
app.command("batch")(batch)
app.command("toy2d")(toy2d)
app.command("bench")(bench)
app.command("report")(report)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
