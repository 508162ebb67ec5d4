"""Distillation methods, written once against the prior interface: SDS, MSD, SDI."""

from __future__ import annotations

from dataclasses import dataclass, field

from msd3d.guidance.base import Guidance, GuidanceOutput, interpolate
from msd3d.guidance.msd import MSD, MSDConfig, mean_shift_target
from msd3d.guidance.sdi import SDI, SDIConfig
from msd3d.guidance.sds import SDS, SDSConfig
from msd3d.priors.base import DiffusionPrior

GUIDANCE_METHODS = {"sds": SDS, "msd": MSD, "sdi": SDI}


@dataclass
class GuidanceConfig:
    """Which method runs (``name``) and the settings of each."""

    name: str = "msd"
    """The method that runs: "msd", "sds" or "sdi" (each reads its own section below)."""
    sds: SDSConfig = field(default_factory=SDSConfig)
    msd: MSDConfig = field(default_factory=MSDConfig)
    sdi: SDIConfig = field(default_factory=SDIConfig)


def build_guidance(name: str, prior: DiffusionPrior, config: GuidanceConfig | None = None) -> Guidance:
    """The guidance method called ``name`` on ``prior``, with its section of ``config``."""
    if name not in GUIDANCE_METHODS:
        raise ValueError(f"unknown guidance {name!r}; choose one of {', '.join(GUIDANCE_METHODS)}")
    config = config or GuidanceConfig()
    return GUIDANCE_METHODS[name](prior, getattr(config, name))


__all__ = [
    "GUIDANCE_METHODS",
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
    "interpolate",
    "mean_shift_target",
]
