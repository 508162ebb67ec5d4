"""Build the renderable scene (field + background + renderer) of a run from its configuration.

The field type is ``field.name`` (a name in :data:`msd3d.registry.FIELDS`); its settings are the
``field.<name>`` section. A field module provides a settings dataclass with ``validate(path)`` and an
``nn.Module`` implementing :class:`~msd3d.scene.base.RadianceField` plus ``param_groups()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from msd3d.registry import BACKGROUNDS, FIELDS, choice_config
from msd3d.render.volume import VolumeRenderer
from msd3d.validation import check_choice, join

if TYPE_CHECKING:
    from msd3d.config import RunConfig


@dataclass
class _FieldChoice:
    name: str = "nerf"
    """The scene representation that is optimised: a name in msd3d/registry.py FIELDS; its settings are the
    section of that name ("nerf": grid-encoded NeRF)."""

    def validate(self, path: str = "field") -> None:
        check_choice(join(path, "name"), self.name, FIELDS.names())


#: ``name`` plus one settings section per registered field type (``field.nerf``, ...).
FieldConfig = choice_config(FIELDS, "FieldConfig", _FieldChoice, __name__)


def build_field(config: FieldConfig) -> nn.Module:  # type: ignore[valid-type]
    """A fresh field of the configured type."""
    return FIELDS.factory(config.name)(getattr(config, config.name))


def build_renderer(config: RunConfig) -> VolumeRenderer:
    """A fresh (untrained) renderer: the configured field, background, shading and ray-marching settings."""
    background = BACKGROUNDS.factory(config.background.type)(config.background)
    return VolumeRenderer(build_field(config.field), background, config.render, config.shading)
