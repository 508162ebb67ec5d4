"""``python -m msd3d``: the same command line as the ``msd3d`` script."""

from msd3d.cli import app

if __name__ == "__main__":  # pragma: no cover - exercised through a subprocess in tests
    app(prog_name="msd3d")
