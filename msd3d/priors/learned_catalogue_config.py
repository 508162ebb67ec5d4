"""``prior.learned`` settings, kept apart from :mod:`msd3d.priors.learned_catalogue` so that reading
a config never imports diffusers."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LearnedPriorConfig:
    """Which trained catalogue UNet ``prior.name: learned`` loads."""

    weights: str = ""
    """Path of a safetensors file written by ``scripts/train_learned_prior.py``. None ships with the
    package yet (none has been trained to a usable quality), so train one and point here."""
    timestep_mapping: str = "interp"
    """sigma -> UNet timestep, as ``prior.sd.timestep_mapping``."""

    def validate(self) -> None:
        if self.timestep_mapping not in ("interp", "nearest"):
            raise ValueError("prior.learned.timestep_mapping must be interp or nearest")
