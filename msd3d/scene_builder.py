"""Build the renderable scene (field + background + renderer) of a run from its configuration.

The field type is ``field.name`` (a name in :data:`msd3d.registry.FIELDS`); its settings are the
``field.<name>`` section. A field module provides a settings dataclass with ``validate(path)`` and an
``nn.Module`` implementing :class:`~msd3d.scene.base.RadianceField` plus ``param_groups()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from msd3d.registry import BACKGROUNDS, FIELDS
from msd3d.render.volume import VolumeRenderer
from msd3d.scene.field_config import FieldConfig

if TYPE_CHECKING:
    from msd3d.config import RunConfig

__all__ = ["FieldConfig", "build_field", "build_renderer"]


def build_field(config: FieldConfig) -> nn.Module:  # type: ignore[valid-type]
    """A fresh field of the configured type."""
    return FIELDS.factory(config.name)(getattr(config, config.name))


def build_renderer(config: RunConfig) -> VolumeRenderer:
    """A fresh (untrained) renderer: the configured field, background, shading and ray-marching settings."""
    background = BACKGROUNDS.factory(config.background.type)(config.background)
    return VolumeRenderer(build_field(config.field), background, config.render, config.shading)
