"""``msd3d report RUN_DIR|BATCH_ROOT``: (re)write a run's report.html or a batch root's index.html."""

from __future__ import annotations

from pathlib import Path

import typer


def report(
    path: Path = typer.Argument(..., help="A run directory (msd3d generate) or a batch root (msd3d batch)."),
) -> None:
    """Write the HTML report of a run (RUN_DIR/report.html) or of a batch (BATCH_ROOT/index.html).

    The pages work offline, straight from the file system (open them in any browser).
    """
    from msd3d.commands import user_errors

    with user_errors():
        from msd3d.report import write_report

        page = write_report(path)
        typer.echo(f"wrote {page}")
