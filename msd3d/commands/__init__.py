"""The CLI's commands, and the one way they report user errors.

Command modules import only typer at module level (heavy imports happen inside the functions), so
``msd3d --help`` stays fast.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, NoReturn

import typer


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: <message>`` (one line) on stderr and exit with ``code``."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn msd3d's user-facing errors into one line on stderr and a non-zero exit
    (130 after an interrupt, 3 after a diverged run, 2 otherwise)."""
    from msd3d.errors import Msd3dError

    try:
        yield
    except Msd3dError as exc:
        from msd3d.train import TrainingDiverged, TrainingInterrupted

        code = 130 if isinstance(exc, TrainingInterrupted) else 3 if isinstance(exc, TrainingDiverged) else 2
        fail(str(exc), code)
    except KeyboardInterrupt:
        fail("interrupted", 130)
