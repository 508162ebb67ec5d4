"""``prior.learned`` settings, kept apart from :mod:`msd3d.catalogue.learned_prior` so that reading
a config never imports diffusers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from msd3d.validation import check_choice, join

#: The prior trained by ``scripts/train_learned_prior.py`` that ships with the package (model card beside it).
SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "weights" / "learned_prior.safetensors"


@dataclass
class LearnedPriorConfig:
    """Which trained catalogue UNet ``prior.name: learned`` loads."""

    weights: str = ""
    """Path of a safetensors file written by ``scripts/train_learned_prior.py``; empty = the one that
    ships with the package (``msd3d/catalogue/weights/learned_prior.safetensors``, see its MODEL_CARD.md)."""
    timestep_mapping: str = "interp"
    """sigma -> UNet timestep, as ``prior.sd.timestep_mapping``."""

    def weights_path(self) -> Path:
        """The weights file to load: ``weights``, or the shipped one when it is empty."""
        return Path(self.weights).expanduser() if self.weights else SHIPPED_WEIGHTS

    def validate(self, path: str = "prior.learned") -> None:
        check_choice(join(path, "timestep_mapping"), self.timestep_mapping, ("interp", "nearest"))
