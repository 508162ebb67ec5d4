"""Marching-cubes mesh export of a radiance field: OBJ (+MTL/PNG), GLB and PLY.

Pipeline (``extract_mesh``): sample ``field.density`` on a regular grid over ``[-bound, bound]^3``
→ choose the iso-level (a number, or "auto": the level whose silhouettes match where the field
renders at least half opaque, ``surface_level``, with the see-through fringe carved away,
``surface_field``, lowered where needed to keep thin parts attached, ``connecting_level``) → fill
enclosed low-density pockets (no inner shells) → marching cubes → drop floaters (small connected components) → optional
quadric decimation to a face budget → colour from ``field.albedo`` (per-vertex RGBA, or a baked
texture, see ``msd3d.export.texture``).

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

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msd3d.atomic_io import atomic_path, atomic_paths
from msd3d.errors import Msd3dError
from msd3d.export.field_query import field_device, query_field
from msd3d.export.texture import bake_albedo_texture
from msd3d.lazy import lazy_module
from msd3d.render.cameras import Cameras
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

MESH_FORMATS = ("obj", "glb", "ply")

SURFACE_VIEWS = 6
"""``threshold="auto"``: azimuths per elevation ring of the views whose silhouettes set the level."""
SURFACE_VIEW_RESOLUTION = 64
"""Pixels per side of those views."""
SURFACE_IOU_TOLERANCE = 0.002
"""Levels whose silhouette IoU is within this of the best count as equally good."""
CONNECT_LEVEL_FLOOR = 0.5
"""``threshold="auto"``: the lowest fraction of the silhouette level ``connecting_level`` may go to."""
CONNECT_PIECE_FRACTION = 0.02
"""Solid pieces with at least this fraction of the solid voxels count as parts of the object."""

Y_UP_FROM_Z_UP = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
"""-90° about x: msd3d world (+z up) → glTF (+y up); ``(x, y, z) → (x, z, -y)``."""


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


# ----------------------------------------------------------------------------------------------
# the density grid and the surface level


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


def ray_opacity_and_peak(
    grid: np.ndarray, bound: float, cameras: Cameras, samples_per_ray: int = 160, floor: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Per camera ray: its opacity through the density grid and the largest density it meets.

    grid: (R, R, R) from ``density_grid``; cameras: N views. Rays are marched through the box
    around the grid points denser than ``floor`` (the whole grid when none is), with the density
    interpolated trilinearly at ``samples_per_ray`` points evenly spread over each ray's chord;
    opacity is the volume-rendering ``1 - exp(-sum(sigma * delta))``.
    Returns ``opacity`` and ``peak``, each (N * H * W,).
    """
    from msd3d.render.cameras import ray_box

    resolution = grid.shape[0]
    spacing = 2.0 * bound / (resolution - 1)
    dense = np.argwhere(grid > floor)
    if len(dense):  # the box around the non-empty cells, one cell wider
        lo = -bound + (dense.min(0) - 1) * spacing
        hi = -bound + (dense.max(0) + 1) * spacing
    else:
        lo, hi = np.full(3, -bound), np.full(3, bound)
    centre = torch.as_tensor(0.5 * (lo + hi), dtype=torch.float32)
    half = torch.as_tensor(0.5 * (hi - lo), dtype=torch.float32)
    volume = torch.as_tensor(grid, dtype=torch.float32).permute(2, 1, 0)[None, None]  # (1, 1, z, y, x)
    origins, dirs = cameras.rays()
    origins, dirs = origins.reshape(-1, 3).float().cpu(), dirs.reshape(-1, 3).float().cpu()
    # ray_box works on a cube at the origin: scale the box's frame so it becomes [-1, 1]^3
    t_near, t_far, crosses = ray_box((origins - centre) / half, dirs / half, 1.0)
    opacity = np.zeros(len(origins), np.float32)
    peak = np.zeros(len(origins), np.float32)
    hit = crosses.nonzero().squeeze(-1)
    u = (torch.arange(samples_per_ray, dtype=torch.float32) + 0.5) / samples_per_ray  # (S,)
    chunk = max(1, 2**21 // samples_per_ray)
    for start in range(0, len(hit), chunk):
        rays = hit[start : start + chunk]
        near, far = t_near[rays], t_far[rays]
        t = near[:, None] + (far - near)[:, None] * u  # (M, S)
        points = origins[rays, None] + dirs[rays, None] * t[..., None]  # (M, S, 3)
        sigma = torch.nn.functional.grid_sample(
            volume, (points / bound)[None, None], mode="bilinear", padding_mode="zeros", align_corners=True
        )[0, 0, 0]  # (M, S)
        delta = (far - near) / samples_per_ray
        opacity[rays.numpy()] = (1.0 - torch.exp(-sigma.sum(-1) * delta)).numpy()
        peak[rays.numpy()] = sigma.amax(-1).numpy()
    return opacity, peak


def surface_level(
    grid: np.ndarray,
    bound: float,
    views: int = SURFACE_VIEWS,
    resolution: int = SURFACE_VIEW_RESOLUTION,
    candidates: int = 96,
) -> float:
    """The density level whose surface has the silhouettes the renders show ("auto" threshold).

    A ray through the mesh's surface at level L exists exactly when the largest density along the
    ray exceeds L, so the level-L silhouette of a view is ``peak > L``, while the render shows the
    object where its accumulated opacity exceeds one half. Over a ring of views (``views`` azimuths
    at elevations 15° and 50°, plus one from below, at ``resolution``² pixels, cameras as in
    training) this picks, among ``candidates`` levels spaced evenly in log-density between
    1e-3 x and 1 x the grid's maximum, the one whose silhouettes agree best (intersection over
    union) with ``opacity > 0.5``. It depends only on where the field is opaque, not on its
    density scale: a thin part that renders opaque at a low density (a stem, a handle) keeps that
    density in the level, and a soft halo that does not render solid stays outside.
    """
    from msd3d.render.cameras import orbit_cameras

    max_density = float(grid.max())
    if not max_density > 0:
        return 0.0
    azimuth = torch.arange(views, dtype=torch.float32) * (360.0 / views)
    elevation = torch.cat([torch.full((views,), 15.0), torch.full((views,), 50.0), torch.tensor([-60.0])])
    azimuth = torch.cat([azimuth, azimuth + 180.0 / views, torch.tensor([0.0])])
    n = len(azimuth)
    distance = 1.75 * bound
    full = lambda value: torch.full((n,), float(value))  # noqa: E731
    cameras = orbit_cameras(elevation, azimuth, full(distance), full(55.0), resolution, resolution)
    levels = max_density * np.logspace(-3.0, 0.0, candidates, endpoint=False)
    opacity, peak = ray_opacity_and_peak(grid, bound, cameras, floor=float(levels[0]))
    shown = opacity > 0.5
    if not shown.any():  # nothing renders solid: fall back to half the maximum
        return 0.5 * max_density
    inside = peak[None, :] > levels[:, None]  # (L, rays)
    union = (inside | shown[None]).sum(-1)
    iou = (inside & shown[None]).sum(-1) / np.maximum(union, 1)
    # silhouettes are pixel-quantised, so a sharp field has a plateau of equally good levels: take
    # its middle (in log-density), which for a sharp step lies halfway up the step
    best = np.flatnonzero(iou >= iou.max() - SURFACE_IOU_TOLERANCE)
    return float(np.sqrt(levels[best[0]] * levels[best[-1]]))


def sizeable_pieces(
    grid: np.ndarray, level: float, piece_fraction: float = CONNECT_PIECE_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """The face-connected regions of ``grid > level``: (labels (R, R, R), the labels of those holding
    at least ``piece_fraction`` of the solid voxels)."""
    from scipy import ndimage

    labels, count = ndimage.label(grid > level)
    if count == 0:
        return labels, np.zeros(0, np.int64)
    sizes = np.bincount(labels.ravel())[1:]  # (count,)
    return labels, np.flatnonzero(sizes >= piece_fraction * sizes.sum()) + 1


def connecting_level(
    grid: np.ndarray,
    level: float,
    floor: float = CONNECT_LEVEL_FLOOR,
    piece_fraction: float = CONNECT_PIECE_FRACTION,
    candidates: int = 12,
) -> float:
    """The highest level in ``[floor * level, level]`` at which the object's pieces at ``level`` join.

    A part thinner than a training pixel (a lamp's arm, a handle) renders with less density than
    the body, so at the body's surface level it can break into pieces that the renders show joined.
    The pieces are the face-connected regions of ``grid > level`` holding at least
    ``piece_fraction`` of its voxels (smaller ones are floaters, dropped later). If there are several,
    this lowers the level in ``candidates`` geometric steps down to ``floor * level`` and returns the
    first one where they all lie in one region; where none does (truly separate objects, which
    empty space keeps apart), ``level`` itself. One piece: ``level`` unchanged.
    grid: (R, R, R) densities.
    """
    from scipy import ndimage

    labels, pieces = sizeable_pieces(grid, level, piece_fraction)
    if len(pieces) <= 1:
        return float(level)
    seeds = [np.unravel_index(int(np.argmax(labels == piece)), labels.shape) for piece in pieces]
    for lower in level * np.geomspace(1.0, floor, candidates + 1)[1:]:
        joined, _ = ndimage.label(grid > lower)
        if len({int(joined[seed]) for seed in seeds}) == 1:
            return float(lower)
    return float(level)


def see_through_depth(grid: np.ndarray, bound: float) -> np.ndarray:
    """Per grid point, the least optical depth between it and the box's faces along the 6 axis
    directions: ``min`` over ±x, ±y, ±z of ``sum(sigma * spacing)`` from the face to the point
    (the point's own cell counts half). grid: (R, R, R) densities → (R, R, R) float32.

    ``exp(-depth)`` is the transmittance with which light from outside reaches the point along the
    clearest axis: near 1 in empty space and in a soft fringe, near 0 inside the solid.
    """
    spacing = 2.0 * bound / (grid.shape[0] - 1)
    depth = np.full(grid.shape, np.inf, np.float32)
    half = 0.5 * spacing * grid
    for axis in range(3):
        from_low = np.cumsum(grid, axis=axis, dtype=np.float32) * spacing  # (R, R, R) up to each point
        total = np.take(from_low, [-1], axis=axis)  # the whole line
        np.minimum(depth, from_low - half, out=depth)
        np.minimum(depth, total - from_low + half, out=depth)
    return depth


NOT_CARVED = {"fringe_optical_depth": 0.0, "fringe_skin": 0.0}
"""``surface_field``'s fringe info when nothing was carved."""


def surface_field(
    grid: np.ndarray, bound: float, fringe_transmittance: float = 0.8, fringe_skin: float = 0.0
) -> tuple[np.ndarray, dict[str, float]]:
    """The "auto" surface as a level set: a field that crosses 1 where the mesh goes, and the level
    to mesh it at (1, or lower to keep thin parts attached).

    A grid point is solid when its density exceeds the silhouette level
    (``surface_level``: the mesh's silhouettes match where the renders are opaque), and it is not in
    the see-through fringe, i.e. light from outside does not reach it along an axis with
    transmittance ``fringe_transmittance`` or more (``see_through_depth``). The second matters on
    faces that training cameras, all above the object's base and at most ~45° up, only ever see at a
    slant (tops and bottoms): the renders there fix the colour but barely the depth, and the field
    pads them with soft density that clears the silhouette level, a mesh about one 32-pixel training
    pixel too tall. The field is ``min(density / level, depth / -ln(fringe_transmittance))``, and with
    ``fringe_skin`` > 0 also ``depth / (fringe_skin * density)``: a point is fringe when its optical
    depth from outside is less than ``fringe_skin`` world units of its own density. On a face
    blurred into a linear density ramp this surface lies ``2 * fringe_skin`` in from where the ramp
    starts, however dense the solid behind it, whereas the transmittance rule stops further out
    where the solid is denser (a bump under a pedestal's column);
    ``connecting_level`` then lowers its level (so both conditions relax together) where the
    object would fall apart into sizeable pieces; where carving would still split the object into
    more pieces than the density alone, or leave nothing, the carving is dropped. Returns (field (R, R, R) float32,
    info) with info ``threshold`` (the density iso-level used), ``fringe_optical_depth`` and
    ``fringe_skin`` (at that level; both 0: no carving) and ``level``.
    """
    density_level = surface_level(grid, bound)
    if not density_level > 0:
        info = {"threshold": float(density_level), "level": float(density_level)}
        return grid, {**info, **NOT_CARVED}
    scaled = (grid / np.float32(density_level)).astype(np.float32, copy=False)
    optical_depth = -float(np.log(fringe_transmittance))
    level = connecting_level(scaled, 1.0)
    if optical_depth > 0 or fringe_skin > 0:
        depth = see_through_depth(grid, bound)
        carved = scaled
        if optical_depth > 0:
            carved = np.minimum(carved, depth / np.float32(optical_depth))
        if fringe_skin > 0:
            carved = np.minimum(carved, depth / (np.float32(fringe_skin) * np.maximum(grid, np.float32(1e-12))))
        carved_level = connecting_level(carved, 1.0)
        # carving never splits what the density alone keeps whole, nor removes everything (a faint,
        # thin rod or a faint ball is all fringe)
        carved_pieces = len(sizeable_pieces(carved, carved_level)[1])
        if 0 < carved_pieces <= len(sizeable_pieces(scaled, level)[1]):
            info = {"threshold": carved_level * float(density_level), "level": carved_level}
            carving = {"fringe_optical_depth": carved_level * optical_depth, "fringe_skin": carved_level * fringe_skin}
            return carved, {**info, **carving}
    info = {"threshold": level * float(density_level), "level": level}
    return scaled, {**info, **NOT_CARVED}


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


def _component_labels(num_vertices: int, faces: np.ndarray) -> np.ndarray:
    """Connected-component label of every face (faces sharing a vertex are connected)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows = np.concatenate([faces[:, 0], faces[:, 1]])
    cols = np.concatenate([faces[:, 1], faces[:, 2]])
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(num_vertices, num_vertices))
    _, vertex_labels = connected_components(graph, directed=False)
    return vertex_labels[faces[:, 0]]


def keep_largest_components(mesh: trimesh.Trimesh, keep: int = 0, min_fraction: float = 0.0) -> trimesh.Trimesh:
    """Remove floaters: keep the ``keep`` largest components (0 = all) with at least ``min_fraction`` of the faces.

    Components are ranked by face count; the largest one always survives.
    """
    if len(mesh.faces) == 0:
        return mesh
    labels = _component_labels(len(mesh.vertices), mesh.faces)
    counts = np.bincount(labels)
    order = np.argsort(-counts, kind="stable")
    order = order[counts[order] > 0]
    kept = order[:keep] if keep > 0 else order
    kept = kept[counts[kept] >= min_fraction * len(mesh.faces)]
    if len(kept) == 0:
        kept = order[:1]
    if len(kept) == len(order):
        return mesh
    mask = np.isin(labels, kept)
    return _submesh(mesh, mask)


def _submesh(mesh: trimesh.Trimesh, face_mask: np.ndarray) -> trimesh.Trimesh:
    """The faces selected by ``face_mask`` with unreferenced vertices dropped (no other processing)."""
    faces = mesh.faces[face_mask]
    used, inverse = np.unique(faces.reshape(-1), return_inverse=True)
    return trimesh.Trimesh(mesh.vertices[used], inverse.reshape(-1, 3), process=False)


def decimate(mesh: trimesh.Trimesh, face_budget: int) -> trimesh.Trimesh:
    """Quadric edge-collapse decimation to at most ``face_budget`` faces (fast-simplification)."""
    if face_budget <= 0 or len(mesh.faces) <= face_budget:
        return mesh
    try:
        from fast_simplification import simplify
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise Msd3dError(
            "mesh decimation needs the fast-simplification package; pip install fast-simplification "
            "or set mesh.decimate_faces=0"
        ) from error
    vertices, faces = mesh.vertices, mesh.faces
    target = face_budget
    for _ in range(5):  # the simplifier stops near, not always under, the target: tighten until it fits
        vertices, faces = simplify(
            np.ascontiguousarray(mesh.vertices, np.float64),
            np.ascontiguousarray(mesh.faces, np.int64),
            target_count=target,
        )
        if len(faces) <= face_budget:
            break
        target = max(4, int(target * face_budget / len(faces) * 0.98))
    else:  # pragma: no cover - not observed
        raise Msd3dError(f"could not decimate the mesh to {face_budget} faces; raise mesh.decimate_faces")
    result = trimesh.Trimesh(vertices, faces, process=False)
    result.remove_unreferenced_vertices()
    return result


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


# ----------------------------------------------------------------------------------------------
# files


def srgb_to_linear_u8(rgba: np.ndarray) -> np.ndarray:
    """sRGB-encoded uint8 RGB(A) → linear uint8 (glTF's COLOR_0 is linear; albedo images are sRGB)."""
    c = rgba[..., :3].astype(np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    out = rgba.copy()
    out[..., :3] = np.clip(np.rint(linear * 255.0), 0, 255).astype(np.uint8)
    return out


def _glb_material():
    """Diffuse-looking glTF material (the glTF default material is fully metallic)."""
    return trimesh.visual.material.PBRMaterial(
        name="albedo", baseColorFactor=[255, 255, 255, 255], metallicFactor=0.0, roughnessFactor=1.0, doubleSided=False
    )


def _glb_bytes(mesh: trimesh.Trimesh) -> bytes:
    """Binary glTF, +y up (see module docstring), with vertex colours or the baked texture.

    Vertex colours are converted from sRGB to linear, as glTF's ``COLOR_0`` is linear while the
    field's albedo (like every image the prior saw) is sRGB-encoded; textures stay sRGB per spec.
    """
    y_up = mesh.copy()
    y_up.apply_transform(Y_UP_FROM_Z_UP)
    # the metadata travels into the GLB (mesh extras): it must describe the converted axes
    y_up.metadata = dict(mesh.metadata)
    y_up.metadata["msd3d"] = {
        **dict(mesh.metadata.get("msd3d", {})),
        "up_axis": "+y",
        "front_axis": "+x",
        "axes_from_msd3d_world": "(x, y, z) -> (x, z, -y)",
    }
    if isinstance(y_up.visual, trimesh.visual.TextureVisuals):
        material = y_up.visual.material
        if isinstance(material, trimesh.visual.material.SimpleMaterial):
            material = material.to_pbr()
        material.metallicFactor = 0.0
        material.roughnessFactor = 1.0
        y_up.visual.material = material
    else:
        visual = trimesh.visual.TextureVisuals(material=_glb_material())
        visual.vertex_attributes["color"] = srgb_to_linear_u8(np.asarray(y_up.visual.vertex_colors, np.uint8))
        y_up.visual = visual
    return trimesh.exchange.gltf.export_glb(y_up, include_normals=True)


def _ply_bytes(mesh: trimesh.Trimesh) -> bytes:
    """Binary PLY with per-vertex RGBA (a textured mesh is sampled at its vertex UVs)."""
    out = mesh.copy()
    if isinstance(out.visual, trimesh.visual.TextureVisuals):
        out.visual = out.visual.to_color()
    return trimesh.exchange.ply.export_ply(out, encoding="binary", vertex_normal=True, include_attributes=False)


def _welded_textured_obj(mesh: trimesh.Trimesh, header: str, mtllib: str, material: str) -> str:
    """OBJ text of a UV-textured mesh as one welded surface: ``v`` and ``vn`` once per distinct
    position, ``vt`` once per UV-atlas vertex, faces ``f v/vt/vn`` index them separately.

    The texture baker splits vertices along UV seams (every split copy has the same position); OBJ
    can index positions and UVs separately, so the seams need not cut the surface apart.
    """
    vertices = np.asarray(mesh.vertices)
    positions, position_of = np.unique(vertices, axis=0, return_inverse=True)
    position_of = position_of.reshape(-1)
    faces_v = position_of[np.asarray(mesh.faces)]
    welded = trimesh.Trimesh(positions, faces_v, process=False)
    normals = welded.vertex_normals
    uv = np.asarray(mesh.visual.uv)
    f = np.asarray(mesh.faces) + 1
    fv = faces_v + 1
    lines = [f"# {header}", f"mtllib {mtllib}"]
    lines += [f"v {x:.8g} {y:.8g} {z:.8g}" for x, y, z in positions]
    lines += [f"vt {u:.8g} {v:.8g}" for u, v in uv]
    lines += [f"vn {x:.6g} {y:.6g} {z:.6g}" for x, y, z in normals]
    lines.append(f"usemtl {material}")
    lines += [f"f {a}/{ta}/{a} {b}/{tb}/{b} {c}/{tc}/{c}" for (a, b, c), (ta, tb, tc) in zip(fv, f)]
    return "\n".join(lines) + "\n"


def _obj_files(mesh: trimesh.Trimesh, path: Path) -> dict[Path, bytes]:
    """OBJ text (+ MTL and texture image when textured), companions first, the .obj last."""
    stem = path.stem
    if isinstance(mesh.visual, trimesh.visual.TextureVisuals):
        out = mesh.copy()
        material = out.visual.material
        image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
        # a matte MTL (Ks 0): the albedo is the whole appearance
        out.visual.material = trimesh.visual.material.SimpleMaterial(
            image=image,
            diffuse=[255, 255, 255, 255],
            ambient=[255, 255, 255, 255],
            specular=[0, 0, 0, 255],
            glossiness=1.0,
            name=stem,
        )
        text, companions = trimesh.exchange.obj.export_obj(
            out,
            include_normals=True,
            include_color=False,
            include_texture=True,
            return_texture=True,
            mtl_name=f"{stem}.mtl",
            header=None,
        )
        # trimesh's MTL and texture image, but our own OBJ body: one welded surface (see above)
        material_name = next(line.split(None, 1)[1] for line in text.splitlines() if line.startswith("usemtl "))
        text = _welded_textured_obj(out, "msd3d: +z up, front +x, metres", f"{stem}.mtl", material_name)
        files = {path.parent / name: data for name, data in companions.items()}
    else:
        text = trimesh.exchange.obj.export_obj(
            mesh,
            include_normals=True,
            include_color=True,
            include_texture=False,
            header="msd3d: +z up, front +x, metres; vertex colours as 'v x y z r g b'",
        )
        files = {}
    files[path] = text.encode("utf-8")
    return files


def export_mesh(mesh: trimesh.Trimesh, path: str | os.PathLike[str]) -> list[Path]:
    """Write ``mesh`` to ``path`` by extension (.obj / .glb / .ply), atomically; returns every file written.

    ``.obj`` writes ``<stem>.mtl`` and ``<stem>.png`` next to it when the mesh is textured, and
    ``v x y z r g b`` vertex colours otherwise; the whole set is renamed into place together.
    """
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in MESH_FORMATS:
        raise Msd3dError(f"unknown mesh format {path.suffix!r} for {path}; use one of .obj, .glb, .ply")
    if len(mesh.faces) == 0:
        raise Msd3dError(f"refusing to write an empty mesh to {path}")
    if suffix == "obj":
        files = _obj_files(mesh, path)
        with atomic_paths(list(files)) as temps:
            for tmp, data in zip(temps, files.values()):
                tmp.write_bytes(data)
        return list(files)
    data = _glb_bytes(mesh) if suffix == "glb" else _ply_bytes(mesh)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return [path]


def export_mesh_files(
    mesh: trimesh.Trimesh, directory: str | os.PathLike[str], stem: str = "mesh", formats=("glb", "obj")
) -> list[Path]:
    """Write ``<directory>/<stem>.<format>`` for each format; returns every file written."""
    written: list[Path] = []
    for fmt in formats:
        written += export_mesh(mesh, Path(directory) / f"{stem}.{fmt.lower().lstrip('.')}")
    return written
