"""What a renderable scene provides: a density and an albedo at world points.

The renderer, the mesh exporter and the video renderer only use this interface, so any field
(the NeRF, an analytic SDF in tests) can be rendered and exported the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor


@dataclass
class FieldSample:
    """Field values at N points (what a field's ``query`` returns); ``normals`` is None unless asked for."""

    density: Tensor  # (N,)
    albedo: Tensor  # (N, 3)
    normals: Tensor | None = None  # (N, 3) unit, outward


@runtime_checkable
class RadianceField(Protocol):
    """A volumetric scene inside ``[-bound, bound]^3`` (world units, +z up)."""

    bound: float

    def density(self, points: Tensor) -> Tensor:
        """Volume density (..., ) >= 0 at points (..., 3)."""

    def albedo(self, points: Tensor) -> Tensor:
        """Base colour (..., 3) in [0, 1] at points (..., 3)."""
