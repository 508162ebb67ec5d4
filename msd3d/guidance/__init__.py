"""Distillation methods, written once against the prior interface (SDS, MSD, SDI; see msd3d.registry)."""

from __future__ import annotations

from dataclasses import dataclass

from msd3d.guidance.base import Guidance, GuidanceOutput
from msd3d.guidance.msd import MSD, MSDConfig, mean_shift_target
from msd3d.guidance.sdi import SDI, SDIConfig
from msd3d.guidance.sds import SDS, SDSConfig
from msd3d.priors.base import DiffusionPrior
from msd3d.registry import GUIDANCE, choice_config
from msd3d.validation import check_choice, join


@dataclass
class _GuidanceChoice:
    name: str = "msd"
    """The method that runs: a name registered in msd3d/registry.py GUIDANCE (each reads its own section below)."""

    def validate(self, path: str = "guidance") -> None:
        check_choice(join(path, "name"), self.name, GUIDANCE.names())


#: ``name`` plus one settings section per registered method (``guidance.sds``, ``guidance.msd``, ...).
GuidanceConfig = choice_config(GUIDANCE, "GuidanceConfig", _GuidanceChoice, __name__)


def build_guidance(name: str, prior: DiffusionPrior, config: GuidanceConfig | None = None) -> Guidance:
    """The guidance method called ``name`` on ``prior``, with its section of ``config``."""
    factory = GUIDANCE.factory(name)
    config = config or GuidanceConfig()
    return factory(prior, getattr(config, name))


__all__ = [
    "Guidance",
    "GuidanceConfig",
    "GuidanceOutput",
    "MSD",
    "MSDConfig",
    "SDI",
    "SDIConfig",
    "SDS",
    "SDSConfig",
    "build_guidance",
    "mean_shift_target",
]
