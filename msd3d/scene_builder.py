"""Build the renderable scene (field + background + renderer) of a run from its configuration."""

from __future__ import annotations

from typing import TYPE_CHECKING

from msd3d.render.volume import VolumeRenderer
from msd3d.scene.background import Background
from msd3d.scene.nerf import NeRFField

if TYPE_CHECKING:
    from msd3d.config import RunConfig


def build_renderer(config: RunConfig) -> VolumeRenderer:
    """A fresh (untrained) renderer: NeRF field, background, shading and ray-marching settings."""
    return VolumeRenderer(
        NeRFField(config.field),
        Background(config.background),
        config.render,
        config.shading,
    )
