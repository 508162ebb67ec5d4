"""Marching-cubes mesh export of a radiance field: OBJ (+MTL/PNG), GLB and PLY.

Pipeline (``extract_mesh``): sample ``field.density`` on a regular grid over ``[-bound, bound]^3``
→ choose the iso-level (a number, or "auto": the level whose silhouettes match where the field
renders at least half opaque, ``surface_level``, with the see-through fringe carved away,
``surface_field``, lowered where needed to keep thin parts attached, ``connecting_level``) → fill
enclosed low-density pockets (no inner shells) → marching cubes → drop floaters (small connected components) → optional
quadric decimation to a face budget → colour from ``field.albedo`` (per-vertex RGBA, or a baked
texture, see ``msd3d.export.texture``).

This module runs that pipeline and re-exports the names of its parts, which live in
``msd3d.export.mesh_config`` (the settings), ``msd3d.export.iso_level`` (the "auto" level),
``msd3d.export.mesh_cleanup`` (floaters, decimation) and ``msd3d.export.mesh_writers`` (the files).

Conventions of the exported files:

* **Units**: 1 world unit = 1 metre. The mesh stays in the field's world frame, so the object is
  centred at the origin inside ``[-bound, bound]^3`` exactly as it was rendered.
* **Axes**: msd3d's world is right-handed with **+z up** and the object's **front facing +x**
  (the azimuth-0 camera sits on +x, see ``msd3d.render.cameras``). OBJ and PLY keep these axes.
  GLB is converted to glTF's **+y up** by a -90° rotation about x: ``(x, y, z) → (x, z, -y)``;
  the front stays on **+x** (note: glTF viewers often open looking down -z, i.e. at the side).
* **Faces** are wound counter-clockwise seen from outside (outward normals); meshes are closed
  (watertight) because the grid is padded with empty cells before marching cubes.
"""

from __future__ import annotations

import numpy as np
import torch

from msd3d.errors import Msd3dError
from msd3d.export.field_query import field_device, query_field
from msd3d.export.iso_level import (
    CONNECT_LEVEL_FLOOR,  # noqa: F401 (re-exported)
    CONNECT_PIECE_FRACTION,  # noqa: F401 (re-exported)
    NOT_CARVED,  # noqa: F401 (re-exported)
    SURFACE_IOU_TOLERANCE,  # noqa: F401 (re-exported)
    SURFACE_VIEW_RESOLUTION,
    SURFACE_VIEWS,
    connecting_level,
    ray_opacity_and_peak,
    see_through_depth,
    sizeable_pieces,
    surface_field,
    surface_level,
)
from msd3d.export.mesh_cleanup import decimate, keep_largest_components
from msd3d.export.mesh_config import MESH_FORMATS, MeshExportConfig
from msd3d.export.mesh_writers import Y_UP_FROM_Z_UP, export_mesh, export_mesh_files, srgb_to_linear_u8
from msd3d.export.texture import bake_albedo_texture
from msd3d.lazy import lazy_module
from msd3d.scene.base import RadianceField

trimesh = lazy_module("trimesh")  # imported on first use: `render` and `--help` never need it

__all__ = [
    "MESH_FORMATS",
    "MeshExportConfig",
    "SURFACE_VIEWS",
    "SURFACE_VIEW_RESOLUTION",
    "density_grid",
    "ray_opacity_and_peak",
    "surface_level",
    "connecting_level",
    "sizeable_pieces",
    "see_through_depth",
    "surface_field",
    "fill_cavities",
    "marching_cubes",
    "keep_largest_components",
    "decimate",
    "vertex_albedo",
    "extract_mesh",
    "export_mesh",
    "export_mesh_files",
    "field_device",
    "query_field",
    "Y_UP_FROM_Z_UP",
    "srgb_to_linear_u8",
]


# ----------------------------------------------------------------------------------------------
# the density grid


@torch.no_grad()
def density_grid(
    field: RadianceField,
    resolution: int,
    chunk_size: int = 262144,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Density at ``resolution``^3 grid points spanning ``[-bound, bound]^3`` → (R, R, R) float32.

    Index ``[i, j, k]`` is the point ``(x_i, y_j, z_k)`` with ``x_i = -bound + i * 2*bound/(R-1)``.
    NaNs (a diverged field) count as empty space.
    """
    device = field_device(field) if device is None else torch.device(device)
    bound = float(field.bound)
    axis = torch.linspace(-bound, bound, resolution, device=device)
    grid = np.empty((resolution, resolution, resolution), np.float32)
    slabs = max(1, chunk_size // (resolution * resolution))
    for i0 in range(0, resolution, slabs):
        xs = axis[i0 : i0 + slabs]
        points = torch.stack(torch.meshgrid(xs, axis, axis, indexing="ij"), dim=-1)  # (k, R, R, 3)
        sigma = field.density(points.reshape(-1, 3)).reshape(points.shape[:-1])
        grid[i0 : i0 + len(xs)] = sigma.float().cpu().numpy()
    np.nan_to_num(grid, copy=False, nan=0.0, posinf=np.finfo(np.float32).max, neginf=0.0)
    return grid


def fill_cavities(grid: np.ndarray, level: float) -> np.ndarray:
    """Raise closed pockets of low density inside the object above ``level`` (no inner shells).

    A hollow the camera can never see (empty space completely enclosed by density above the
    level) would become an inward-facing shell of the mesh; it is filled instead.
    """
    from scipy import ndimage

    solid = grid > level
    filled = ndimage.binary_fill_holes(solid)
    cavities = filled & ~solid
    if not cavities.any():
        return grid
    out = grid.copy()
    out[cavities] = 2.0 * level
    return out


# ----------------------------------------------------------------------------------------------
# geometry


def marching_cubes(grid: np.ndarray, level: float, bound: float) -> tuple[np.ndarray, np.ndarray]:
    """Iso-surface of a density grid (see ``density_grid``) → vertices (V, 3) world units, faces (F, 3).

    The grid is padded with one layer of empty cells so the surface is closed even where the object
    touches the box; faces point outward (from high to low density).
    """
    from skimage import measure

    resolution = grid.shape[0]
    spacing = 2.0 * bound / (resolution - 1)
    padded = np.pad(grid, 1, mode="constant", constant_values=0.0)
    vertices, faces, _, _ = measure.marching_cubes(
        padded, level=level, spacing=(spacing,) * 3, gradient_direction="ascent", allow_degenerate=False
    )
    vertices = vertices - (bound + spacing)  # undo the padding offset, then centre the box
    return vertices.astype(np.float64), faces.astype(np.int64)


def vertex_albedo(
    field: RadianceField, points: np.ndarray, chunk_size: int = 262144, device: torch.device | str | None = None
) -> np.ndarray:
    """``field.albedo`` at points (P, 3) as uint8 RGBA (P, 4), alpha 255."""
    device = field_device(field) if device is None else device
    rgb = query_field(field.albedo, points, chunk_size, device).reshape(len(points), 3)
    rgb = np.nan_to_num(rgb, nan=0.0)
    rgba = np.empty((len(points), 4), np.uint8)
    rgba[:, :3] = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    rgba[:, 3] = 255
    return rgba


def extract_mesh(
    field: RadianceField, config: MeshExportConfig | None = None, device: torch.device | str | None = None
) -> trimesh.Trimesh:
    """Marching-cubes mesh of ``field`` with albedo colours (vertex RGBA, or a texture if ``config.texture``).

    Vertices are in world units (metres), faces point outward. ``mesh.metadata["msd3d"]`` records the
    resolution, the numeric threshold used and the grid's maximum density.

    Raises ``Msd3dError`` when the density never crosses the threshold.
    """
    config = config or MeshExportConfig()
    config.validate()
    device = field_device(field) if device is None else torch.device(device)
    bound = float(field.bound)

    grid = density_grid(field, config.resolution, config.chunk_size, device)
    max_density = float(grid.max())
    if config.threshold == "auto":
        surface, info = surface_field(grid, bound, config.fringe_transmittance, config.fringe_skin)
        level, iso = info["threshold"], info["level"]
    else:
        level = iso = float(config.threshold)
        surface, info = grid, {}
    if not max_density > level or level <= 0.0:
        raise Msd3dError(
            f"no surface found at threshold {level:.4g} (max density {max_density:.4g}); "
            "lower --threshold (mesh.threshold) or train longer"
        )
    if float(grid.min()) >= level:
        raise Msd3dError(
            f"density exceeds threshold {level:.4g} everywhere in the box (min density {float(grid.min()):.4g}); "
            "raise --threshold (mesh.threshold)"
        )

    surface = fill_cavities(surface, iso)
    vertices, faces = marching_cubes(surface, iso, bound)
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    mesh = keep_largest_components(mesh, config.keep_components, config.min_component_fraction)
    face_budget = config.decimate_faces
    if config.texture:
        face_budget = min(face_budget or config.texture_max_faces, config.texture_max_faces)
    mesh = decimate(mesh, face_budget)

    if config.texture:
        mesh = bake_albedo_texture(mesh, field, config.texture_size, config.chunk_size, device)
    else:
        mesh.visual = trimesh.visual.ColorVisuals(
            mesh, vertex_colors=vertex_albedo(field, mesh.vertices, config.chunk_size, device)
        )
    mesh.units = "m"
    mesh.metadata["msd3d"] = {
        "resolution": int(config.resolution),
        "threshold": level,
        **({"fringe_optical_depth": info["fringe_optical_depth"], "fringe_skin": info["fringe_skin"]} if info else {}),
        "max_density": max_density,
        "bound": bound,
        "up_axis": "+z",
        "front_axis": "+x",
    }
    return mesh
