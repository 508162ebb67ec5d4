"""``python -m msd3d``: the same command line as the ``msd3d`` script."""

from msd3d.cli import main

if __name__ == "__main__":  # pragma: no cover - exercised through a subprocess in tests
    main()
