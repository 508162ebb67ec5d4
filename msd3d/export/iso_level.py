"""The iso-level of ``threshold="auto"``: where the mesh's surface goes in the density grid.

``surface_level`` picks the density level whose silhouettes match where the field renders at least
half opaque; ``connecting_level`` lowers it where needed to keep thin parts attached;
``surface_field`` carves away the see-through fringe (``see_through_depth``, ``fringe_skin``) and
returns the field and level that ``msd3d.export.mesh.extract_mesh`` meshes.
"""

from __future__ import annotations

import numpy as np
import torch

from msd3d.render.cameras import Cameras

__all__ = [
    "SURFACE_VIEWS",
    "SURFACE_VIEW_RESOLUTION",
    "SURFACE_IOU_TOLERANCE",
    "CONNECT_LEVEL_FLOOR",
    "CONNECT_PIECE_FRACTION",
    "NOT_CARVED",
    "ray_opacity_and_peak",
    "surface_level",
    "connecting_level",
    "sizeable_pieces",
    "see_through_depth",
    "surface_field",
]

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
