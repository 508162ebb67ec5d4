"""The ``msd3d`` command line: the Typer app and its command list. Each command lives in
``msd3d/commands/<name>.py`` and delegates to the library (orchestration in :mod:`msd3d.workflows`);
none knows how guidance works.

Heavy modules (torch models, diffusers) are imported inside commands so that ``--help`` is instant
and commands that do not need Stable Diffusion never load it.
"""

from __future__ import annotations

import typer

from msd3d.commands.batch import batch
from msd3d.commands.bench import bench
from msd3d.commands.catalogue import catalogue
from msd3d.commands.config import show_config
from msd3d.commands.download import download
from msd3d.commands.export import export
from msd3d.commands.generate import generate
from msd3d.commands.image import image
from msd3d.commands.render import render
from msd3d.commands.report import report
from msd3d.commands.toy2d import toy2d

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Text-to-3D with mean-shift distillation (MSD) on Stable Diffusion.",
)



def _version(value: bool) -> None:
    if value:
        from msd3d import __version__

        typer.echo(f"msd3d {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Text-to-3D with mean-shift distillation (MSD) on Stable Diffusion."""


app.command("generate")(generate)
app.command("image")(image)
app.command("config")(show_config)
app.command("catalogue")(catalogue)
app.command("export")(export)
app.command("render")(render)
app.command("batch")(batch)
app.command("toy2d")(toy2d)
app.command("bench")(bench)
app.command("report")(report)
app.command("download")(download)

if __name__ == "__main__":  # pragma: no cover
    app()
