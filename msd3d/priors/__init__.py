"""Diffusion priors in VE-denoiser coordinates (DESIGN.md §2).

* :class:`~msd3d.priors.stable_diffusion.StableDiffusionPrior` — any SD 1.x/2.x checkpoint;
* :class:`~msd3d.priors.oracle.OraclePrior` — the exact, weight-free prior over a catalogue of shapes;
* :class:`~msd3d.priors.gmm.GaussianMixturePrior` — exact mixtures for the 2-D experiments and tests;
* :class:`~msd3d.priors.learned_catalogue.LearnedCataloguePrior` — a small UNet trained on the catalogue
  (``prior.name: learned``), run through SD's code path;
* :class:`~msd3d.priors.learned2d.LearnedMixturePrior` — a small MLP trained on a 2-D mixture (toy2d).

Nothing here imports diffusers: Stable Diffusion is loaded only by :func:`build_prior` when asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from msd3d.priors.base import Condition, DenoiserCounter, DiffusionPrior
from msd3d.priors.gmm import GaussianMixturePrior
from msd3d.priors.learned_catalogue_config import LearnedPriorConfig
from msd3d.priors.oracle import OracleConfig
from msd3d.priors.stable_diffusion import StableDiffusionConfig

PRIOR_NAMES = ("sd", "oracle", "learned")


@dataclass
class PriorConfig:
    """Which prior a text-to-3D run distils from, and each prior's settings."""

    name: str = "sd"
    """"sd" (Stable Diffusion), "oracle" (offline shape catalogue) or "learned" (a UNet trained on the catalogue)."""
    sd: StableDiffusionConfig = field(default_factory=StableDiffusionConfig)
    oracle: OracleConfig = field(default_factory=OracleConfig)
    learned: LearnedPriorConfig = field(default_factory=LearnedPriorConfig)

    def validate(self) -> None:
        if self.name not in PRIOR_NAMES:
            raise ValueError(f"prior.name must be one of {', '.join(PRIOR_NAMES)}, got {self.name!r}")
        self.learned.validate()


def build_prior(config: PriorConfig, device: torch.device | str = "cpu") -> DiffusionPrior:
    """Instantiate the configured prior on ``device`` (loads SD weights only for ``name="sd"``)."""
    config.validate()
    if config.name == "sd":
        from msd3d.priors.stable_diffusion import StableDiffusionPrior

        return StableDiffusionPrior(config.sd, device=device)
    if config.name == "learned":
        from msd3d.priors.learned_catalogue import load_learned_prior

        return load_learned_prior(config.learned.weights, device=device, config=config.learned)
    from msd3d.priors.oracle import OraclePrior

    return OraclePrior(config.oracle, device=device)


__all__ = [
    "Condition",
    "DenoiserCounter",
    "DiffusionPrior",
    "GaussianMixturePrior",
    "PRIOR_NAMES",
    "PriorConfig",
    "build_prior",
]
