"""``MeshExportConfig``: the ``mesh`` settings (how a field becomes a mesh file) and their checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["MESH_FORMATS", "MeshExportConfig"]

MESH_FORMATS = ("obj", "glb", "ply")


@dataclass
class MeshExportConfig:
    """How a field becomes a mesh file."""

    resolution: int = 256
    """Grid points per axis over ``[-bound, bound]`` (marching-cubes cell = 2*bound/(resolution-1)); 8 to 1024
    (1024^3 densities take 4 GB)."""
    threshold: Any = "auto"
    """Density iso-level: a positive number, or "auto" = the level whose silhouettes over a ring of
    views best match where the field renders at least half opaque (``surface_level``), so the mesh
    is the surface the renders show whatever the field's density scale; lowered (at most to half)
    where that level splits the object into sizeable pieces (``connecting_level``). "auto" also
    carves away the see-through fringe (``fringe_transmittance``)."""
    fringe_transmittance: float = 0.8
    """With ``threshold="auto"``: grid points that light from outside the box reaches along an axis
    with at least this transmittance are empty space, whatever their density (``surface_field``).
    This removes the soft density that pads faces no training view sees edge-on (tops and bottoms);
    1 turns it off."""
    fringe_skin: float = 0.0
    """With ``threshold="auto"``: also carve, as fringe, grid points whose optical depth from outside
    (along the clearest axis) is less than this many world units of their own density, i.e. within
    this density-weighted distance of empty space (``surface_field``). A trained field blurs each
    face into a density ramp about a training pixel wide, and where the solid behind it is denser
    (a column ending on a plate) the transmittance rule alone leaves a bump; this rule does not
    depend on the density scale. On a linear ramp the surface lies 2 x this in from the ramp's
    outer end. The oracle recipes use 0.02 (about a third of a 32-pixel training pixel at the
    object); it would erode a sharp field by up to this much, so 0 (off) by default."""
    keep_components: int = 0
    """Keep at most this many connected components, largest first (by face count); 0 = no limit."""
    min_component_fraction: float = 0.02
    """Drop components with fewer than this fraction of all faces (floaters). The largest is always kept."""
    decimate_faces: int = 0
    """Face budget for quadric decimation (fast-simplification); 0 = keep marching-cubes resolution."""
    texture: bool = False
    """UV-unwrap (xatlas) and bake the albedo into a texture image instead of vertex colours."""
    texture_size: int = 1024
    """Texture width = height in pixels (when ``texture``); 16 to 8192."""
    texture_max_faces: int = 50000
    """With ``texture``, decimate to at most this many faces before unwrapping (xatlas's time grows
    faster than linearly with the face count)."""
    formats: tuple[str, ...] = ("glb", "obj")
    """File types ``export_mesh_files`` writes: any of "obj", "glb", "ply"."""
    chunk_size: int = 262144
    """Points per field query (memory bound on the field's device)."""

    def validate(self) -> None:
        """Raise ``ValueError`` naming the ``mesh.*`` setting whose value is out of range."""
        if self.resolution < 8:
            raise ValueError("mesh.resolution must be at least 8")
        if self.resolution > 1024:
            raise ValueError(
                f"mesh.resolution must be at most 1024 (1024^3 densities take 4 GB), got {self.resolution}"
            )
        if isinstance(self.threshold, str):
            if self.threshold != "auto":
                try:
                    float(self.threshold)
                except ValueError:
                    message = f'mesh.threshold must be "auto" or a positive number, got {self.threshold!r}'
                    raise ValueError(message) from None
        if self.threshold != "auto" and not float(self.threshold) > 0:
            raise ValueError(f"mesh.threshold must be positive (densities are >= 0), got {self.threshold}")
        if not 0.0 < self.fringe_transmittance <= 1.0:
            raise ValueError(
                f"mesh.fringe_transmittance must lie in (0, 1] (1 turns it off), got {self.fringe_transmittance}"
            )
        if not 0.0 <= self.fringe_skin < float("inf"):
            raise ValueError(f"mesh.fringe_skin must be >= 0 world units (0 turns it off), got {self.fringe_skin}")
        if self.keep_components < 0:
            raise ValueError("mesh.keep_components must be >= 0 (0 keeps all)")
        if not 0.0 <= self.min_component_fraction < 1.0:
            raise ValueError("mesh.min_component_fraction must lie in [0, 1)")
        if self.decimate_faces < 0 or 0 < self.decimate_faces < 4:
            raise ValueError("mesh.decimate_faces must be 0 (off) or at least 4")
        if self.texture_size < 16:
            raise ValueError("mesh.texture_size must be at least 16")
        if self.texture_size > 8192:
            raise ValueError(f"mesh.texture_size must be at most 8192, got {self.texture_size}")
        if self.texture_max_faces < 4:
            raise ValueError("mesh.texture_max_faces must be at least 4")
        unknown = [f for f in self.formats if f.lower().lstrip(".") not in MESH_FORMATS]
        if unknown or not self.formats:
            raise ValueError(
                f"mesh.formats must be a non-empty subset of {list(MESH_FORMATS)}, got {list(self.formats)}"
            )
        if self.chunk_size < 1:
            raise ValueError("mesh.chunk_size must be at least 1")
