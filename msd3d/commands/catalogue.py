"""``msd3d catalogue``: list the oracle prior's shape families (the prompts ``--prior oracle`` knows)."""

from __future__ import annotations

import typer

from msd3d.commands import user_errors


def catalogue() -> None:
    """List the oracle prior's shape families and variants (prompts for --prior oracle)."""
    with user_errors():
        from msd3d.catalogue.oracle import list_catalogue

        for family in list_catalogue():
            typer.echo(f"{family['name']}: {family.get('description', '')}")
            if family.get("synonyms"):
                typer.echo(f"  also: {', '.join(family['synonyms'])}")
            for variant in family["variants"]:
                typer.echo(f"  - {variant['name']}: {variant.get('description', '')}")
