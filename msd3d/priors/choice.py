"""``prior.name`` and one settings section per registered prior, and :func:`build_prior`.

Kept out of ``msd3d/priors/__init__.py``: building :data:`PriorConfig` imports every prior's settings
class through the registry, including the catalogue priors, which themselves import
:mod:`msd3d.priors.base`; in the package's ``__init__`` that would be an import circle.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from msd3d.priors.base import DiffusionPrior
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
