"""Build the renderable scene (field + background + renderer) of a run from its configuration."""

from __future__ import annotations

from typing import TYPE_CHECKING

from msd3d.render.volume import VolumeRenderer
from msd3d.scene.background import Background
from msd3d.scene.nerf import NeRFField
from msd3d.scene.sdf_field import SDFNeRFField

if TYPE_CHECKING:
    from msd3d.config import RunConfig


def build_renderer(config: RunConfig) -> VolumeRenderer:
    """A fresh (untrained) renderer: field (``field.kind``: density NeRF or SDF), background,
    shading and ray-marching settings."""
    field = SDFNeRFField(config.field) if config.field.kind == "sdf" else NeRFField(config.field)
    return VolumeRenderer(
        field,
        Background(config.background),
        config.render,
        config.shading,
    )
