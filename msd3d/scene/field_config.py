"""The ``field`` section of a run's configuration: which scene representation, and its settings.

Its own module so that :mod:`msd3d.config` (which holds it) and :mod:`msd3d.scene_builder` (which builds
from a whole ``RunConfig``) do not import each other.
"""

from __future__ import annotations

from dataclasses import dataclass

from msd3d.registry import FIELDS, choice_config
from msd3d.validation import check_choice, join


@dataclass
class _FieldChoice:
    name: str = "nerf"
    """The scene representation that is optimised: a name in msd3d/registry.py FIELDS; its settings are the
    section of that name ("nerf": grid-encoded NeRF)."""

    def validate(self, path: str = "field") -> None:
        check_choice(join(path, "name"), self.name, FIELDS.names())


#: ``name`` plus one settings section per registered field type (``field.nerf``, ...).
FieldConfig = choice_config(FIELDS, "FieldConfig", _FieldChoice, __name__)
