"""Diffusion priors in VE-denoiser coordinates (docs/design.md §2).

* :class:`~msd3d.priors.stable_diffusion.StableDiffusionPrior` — any SD 1.x/2.x checkpoint;
* :class:`~msd3d.priors.oracle.OraclePrior` — the exact, weight-free prior over a catalogue of shapes;
* :class:`~msd3d.priors.gmm.GaussianMixturePrior` — exact mixtures for the 2-D experiments and tests.

Which priors a run can use is :data:`msd3d.registry.PRIORS`. Nothing here imports diffusers: Stable
Diffusion is loaded only by :func:`build_prior` when asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from msd3d.priors.base import Condition, DenoiserCounter, DiffusionPrior
from msd3d.priors.gmm import GaussianMixturePrior
from msd3d.registry import PRIORS, choice_config
from msd3d.validation import check_choice, join


@dataclass
class _PriorChoice:
    name: str = "sd"
    """The prior a run distils from: a name in msd3d/registry.py PRIORS ("sd": Stable Diffusion, "oracle":
    offline shape catalogue, "learned": a UNet trained on the catalogue); its settings are the section of that name."""

    def validate(self, path: str = "prior") -> None:
        check_choice(join(path, "name"), self.name, PRIORS.names())


#: ``name`` plus one settings section per registered prior (``prior.sd``, ``prior.oracle``).
PriorConfig = choice_config(PRIORS, "PriorConfig", _PriorChoice, __name__)


def build_prior(config: PriorConfig, device: torch.device | str = "cpu") -> DiffusionPrior:
    """Instantiate the configured prior on ``device`` (loads SD weights only for ``name="sd"``)."""
    config.validate()
    return PRIORS.factory(config.name)(getattr(config, config.name), device=device)


__all__ = [
    "Condition",
    "DenoiserCounter",
    "DiffusionPrior",
    "GaussianMixturePrior",
    "PriorConfig",
    "build_prior",
]
