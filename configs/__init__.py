"""Shipped recipes (installed as ``msd3d.configs``); see README.md "Configuration"."""
