"""``prior.learned`` settings, kept apart from :mod:`msd3d.priors.learned_catalogue` so that reading
a config never imports diffusers."""

from __future__ import annotations

from dataclasses import dataclass

from msd3d.validation import check_choice, join


@dataclass
class LearnedPriorConfig:
    """Which trained catalogue UNet ``prior.name: learned`` loads."""

    weights: str = ""
    """Path of a safetensors file written by ``scripts/train_learned_prior.py``. None ships with the
    package yet (none has been trained to a usable quality), so train one and point here."""
    timestep_mapping: str = "interp"
    """sigma -> UNet timestep, as ``prior.sd.timestep_mapping``."""

    def validate(self, path: str = "prior.learned") -> None:
        check_choice(join(path, "timestep_mapping"), self.timestep_mapping, ("interp", "nearest"))
