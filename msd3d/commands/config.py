"""``msd3d config [RECIPE]``: print the resolved configuration a recipe would run."""

from __future__ import annotations

from typing import List, Optional

import typer

from msd3d.commands import user_errors
from msd3d.registry import GUIDANCE, PRIORS


def show_config(
    recipe: Optional[str] = typer.Argument(None, help="Recipe name or YAML path (default msd-sd)."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides to apply."),
    prior: Optional[str] = typer.Option(None, help=f"{PRIORS.help()} (picks the recipe when none is named)."),
    guidance: Optional[str] = typer.Option(None, help=f"{GUIDANCE.help()} (picks the recipe when none is named)."),
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
