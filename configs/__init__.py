"""Shipped recipes (installed as ``msd3d.configs``); see docs/config.md."""
