"""Signed distance functions, their combinations, a batched sphere tracer and an SDF-backed field.

Everything here is pure PyTorch and vectorised over points. Points are passed either as a tensor
(..., 3) or, cheaper, as a tuple of three component tensors ``(x, y, z)`` (an :data:`XYZ`); the
operations return tuples so that a shape template never pays for stacking and unstacking (on CPU,
small-tensor PyTorch is dominated by per-operation overhead). Size parameters are Python floats or
tensors broadcastable with one component (one value per point), so a whole family of shapes with
different parameters is evaluated in one call.

Conventions: world units, +z up (as in :mod:`msd3d.render.cameras`); rotations act on vectors
(``rotate_z(p, a)`` turns ``p`` by ``a`` radians about +z); to evaluate a shape in a frame rotated by
``a``, rotate the points by ``-a``. Combinations of exact distances (union, subtraction, repetition)
give lower bounds of the true distance, which is all sphere tracing needs.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Union

import torch
from torch import Tensor

Scalar = Union[float, Tensor]
XYZ = tuple[Tensor, Tensor, Tensor]
Points = Union[Tensor, XYZ]

#: Added to a part's distance to switch it off (far outside any scene).
DISABLED = 10.0


# -- vector helpers ----------------------------------------------------------------------------
def xyz(p: Points) -> XYZ:
    """Components of points given as a tensor (..., 3) or already as a tuple."""
    if isinstance(p, tuple):
        return p
    return p.unbind(-1)


def length2(a: Tensor, b: Tensor) -> Tensor:
    """``sqrt(a^2 + b^2)`` (cheaper than ``torch.hypot`` and accurate enough at scene scale)."""
    return torch.addcmul(a * a, b, b).sqrt()


def length3(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    return torch.addcmul(torch.addcmul(a * a, b, b), c, c).sqrt()


def _shift(c: Tensor, v: Scalar) -> Tensor:
    if isinstance(v, (int, float)) and v == 0:
        return c
    return c - v


def translate(p: Points, x: Scalar = 0.0, y: Scalar = 0.0, z: Scalar = 0.0) -> XYZ:
    """Points in a frame whose origin sits at (x, y, z): ``p - (x, y, z)``."""
    px, py, pz = xyz(p)
    return _shift(px, x), _shift(py, y), _shift(pz, z)


def _cos_sin(angle: Scalar) -> tuple[Scalar, Scalar]:
    if isinstance(angle, Tensor):
        return torch.cos(angle), torch.sin(angle)
    return math.cos(angle), math.sin(angle)


def rotate_x(p: Points, angle: Scalar) -> XYZ:
    """Rotate vectors by ``angle`` radians about +x (right-handed: +y turns toward +z)."""
    c, s = _cos_sin(angle)
    x, y, z = xyz(p)
    return x, c * y - s * z, s * y + c * z


def rotate_y(p: Points, angle: Scalar) -> XYZ:
    """Rotate vectors by ``angle`` radians about +y (right-handed: +z turns toward +x)."""
    c, s = _cos_sin(angle)
    x, y, z = xyz(p)
    return c * x + s * z, y, c * z - s * x


def rotate_z(p: Points, angle: Scalar) -> XYZ:
    """Rotate vectors by ``angle`` radians about +z (right-handed: +x turns toward +y)."""
    c, s = _cos_sin(angle)
    x, y, z = xyz(p)
    return c * x - s * y, s * x + c * y, z


def euler_matrix(yaw_deg: float, pitch_deg: float = 0.0, roll_deg: float = 0.0) -> Tensor:
    """(3, 3) rotation ``Rz(yaw) @ Ry(pitch) @ Rx(roll)`` (degrees), mapping local to world vectors."""
    basis = torch.eye(3, dtype=torch.float64)  # rows: e_x, e_y, e_z
    p = rotate_x(basis, math.radians(roll_deg))
    p = rotate_y(p, math.radians(pitch_deg))
    p = rotate_z(p, math.radians(yaw_deg))
    return torch.stack(p, dim=0).float()  # column j = image of e_j


def mirror_xy(p: Points) -> XYZ:
    """Fold space into the x >= 0, y >= 0 quadrant (four symmetric copies of one shape)."""
    x, y, z = xyz(p)
    return x.abs(), y.abs(), z


def mirror_y(p: Points) -> XYZ:
    """Fold space into y >= 0 (left/right symmetric pairs)."""
    x, y, z = xyz(p)
    return x, y.abs(), z


def polar_repeat(p: Points, count: Scalar, phase: Scalar = 0.0) -> XYZ:
    """Fold space around +z into one of ``count`` equal sectors, centred on the +x axis.

    A shape modelled once near +x then appears ``count`` times, the first at angle ``phase`` (rad).
    """
    x, y, z = xyz(p)
    sector = 2.0 * math.pi / count
    angle = _shift(torch.atan2(y, x), phase)
    folded = angle - sector * torch.round(angle / sector)
    r = length2(x, y)
    return r * torch.cos(folded), r * torch.sin(folded), z


# -- primitives ----------------------------------------------------------------------------------
def sd_sphere(p: Points, radius: Scalar) -> Tensor:
    """Sphere at the origin."""
    return length3(*xyz(p)) - radius


def sd_ellipsoid(p: Points, rx: Scalar, ry: Scalar, rz: Scalar) -> Tensor:
    """Axis-aligned ellipsoid at the origin (Quilez's bound, exact on the surface)."""
    x, y, z = xyz(p)
    ax, ay, az = x / rx, y / ry, z / rz
    k0 = length3(ax, ay, az)
    k1 = length3(ax / rx, ay / ry, az / rz).clamp_min(1e-9)
    return k0 * (k0 - 1.0) / k1


def sd_box(p: Points, hx: Scalar, hy: Scalar, hz: Scalar, rounding: float = 0.0) -> Tensor:
    """Axis-aligned box with half sizes (hx, hy, hz) at the origin; ``rounding`` rounds its edges
    (the outer size stays (hx, hy, hz))."""
    x, y, z = xyz(p)
    qx, qy, qz = x.abs() - (hx - rounding), y.abs() - (hy - rounding), z.abs() - (hz - rounding)
    outside = length3(qx.clamp_min(0), qy.clamp_min(0), qz.clamp_min(0))
    inside = torch.maximum(torch.maximum(qx, qy), qz).clamp_max(0)
    out = outside + inside
    return out - rounding if rounding else out


def sd_cylinder(p: Points, radius: Scalar, half_height: Scalar) -> Tensor:
    """Capped cylinder along z, centred at the origin."""
    x, y, z = xyz(p)
    dr = length2(x, y) - radius
    dz = z.abs() - half_height
    return torch.maximum(dr, dz).clamp_max(0) + length2(dr.clamp_min(0), dz.clamp_min(0))


def sd_capped_cone(p: Points, half_height: Scalar, r_bottom: Scalar, r_top: Scalar) -> Tensor:
    """Truncated cone along z from ``z = -half_height`` (radius ``r_bottom``) to ``+half_height``
    (radius ``r_top``); exact (Quilez)."""
    x, y, qy = xyz(p)
    qx = length2(x, y)
    h = half_height
    k2x, k2y = r_top - r_bottom, 2.0 * h
    if isinstance(r_bottom, Tensor) or isinstance(r_top, Tensor):
        cap_r = torch.where(qy < 0, r_bottom, r_top)
    else:
        cap_r = torch.where(qy < 0, torch.full_like(qy, r_bottom), torch.full_like(qy, r_top))
    cax = qx - torch.minimum(qx, cap_r)
    cay = qy.abs() - h
    t = (((r_top - qx) * k2x + (h - qy) * k2y) / (k2x * k2x + k2y * k2y)).clamp(0.0, 1.0)
    cbx = qx - r_top + k2x * t
    cby = qy - h + k2y * t
    inside = (cbx < 0) & (cay < 0)
    dist = torch.minimum(torch.addcmul(cax * cax, cay, cay), torch.addcmul(cbx * cbx, cby, cby)).sqrt()
    return torch.where(inside, -dist, dist)


def sd_frustum(p: Points, half_height: Scalar, r_bottom: Scalar, r_top: Scalar) -> Tensor:
    """Cheap lower bound of :func:`sd_capped_cone` (same solid): the larger of the distances to the
    slanted side (in the meridian plane) and to the caps' slab. Exact on the side; it only
    underestimates near the rims, which sphere tracing tolerates, at about a fifth of the cost."""
    x, y, z = xyz(p)
    return frustum_from_radial(length2(x, y), z, half_height, r_bottom, r_top)


def frustum_from_radial(r: Tensor, z: Tensor, half_height: Scalar, r_bottom: Scalar, r_top: Scalar) -> Tensor:
    """:func:`sd_frustum` given the radial distance ``r`` and height ``z`` (to share ``r``)."""
    slope = r_top - r_bottom
    two_h = 2.0 * half_height
    norm = (two_h * two_h + slope * slope) ** 0.5
    side = (two_h * (r - r_bottom) - slope * (z + half_height)) / norm
    return torch.maximum(side, z.abs() - half_height)


def sd_torus(p: Points, major: Scalar, minor: Scalar) -> Tensor:
    """Torus around the z axis (ring in the xy plane) at the origin."""
    x, y, z = xyz(p)
    return length2(length2(x, y) - major, z) - minor


def sd_capsule(p: Points, a: tuple[Scalar, Scalar, Scalar], b: tuple[Scalar, Scalar, Scalar], radius: Scalar) -> Tensor:
    """Segment from point ``a`` to point ``b`` (each three scalars/tensors) thickened by ``radius``."""
    x, y, z = xyz(p)
    pax, pay, paz = x - a[0], y - a[1], z - a[2]
    bax, bay, baz = b[0] - a[0], b[1] - a[1], b[2] - a[2]
    bb = bax * bax + bay * bay + baz * baz
    h = ((pax * bax + pay * bay + paz * baz) / bb).clamp(0.0, 1.0)
    return length3(pax - bax * h, pay - bay * h, paz - baz * h) - radius


def sd_gable(p: Points, half_width: Scalar, half_length: Scalar, height: Scalar) -> Tensor:
    """Gable roof: a triangular prism with its base (width 2*half_width along x) on z = 0, its ridge
    along y at z = height, and length 2*half_length (a lower bound of the distance)."""
    x, y, z = xyz(p)
    norm = (height * height + half_width * half_width) ** 0.5
    slope = (height * (x.abs() - half_width) + half_width * z) / norm
    return torch.maximum(torch.maximum(slope, -z), y.abs() - half_length)


# -- combinations -------------------------------------------------------------------------------
def op_union(*distances: Tensor) -> Tensor:
    out = distances[0]
    for d in distances[1:]:
        out = torch.minimum(out, d)
    return out


def op_subtract(a: Tensor, b: Tensor) -> Tensor:
    """``a`` with ``b`` carved out."""
    return torch.maximum(a, -b)


def op_smooth_union(a: Tensor, b: Tensor, k: float) -> Tensor:
    """Union blended over a width ``k`` (polynomial smooth minimum)."""
    h = ((b - a) * (0.5 / k) + 0.5).clamp(0.0, 1.0)
    return torch.lerp(b, a, h) - k * h * (1.0 - h)


def switch(distance: Tensor, enabled: Scalar) -> Tensor:
    """A part that is present when ``enabled`` is 1 and pushed out of the scene when it is 0."""
    if isinstance(enabled, (int, float)) and enabled == 1:
        return distance
    return distance + (1.0 - enabled) * DISABLED


@contextlib.contextmanager
def single_thread(device: torch.device) -> Iterator[None]:
    """Run CPU work on one intra-op thread, then restore the previous count.

    Sphere tracing runs thousands of small operations; spreading each over threads costs more than
    it saves, and on a busy machine waiting for the other threads made renders much slower.
    (The thread count is process-wide: do not render from several Python threads at once.)
    """
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# -- sphere tracing -----------------------------------------------------------------------------
@dataclass
class TraceResult:
    """Per ray: whether it hit, the point to colour, and its coverage of the pixel.

    hit: (M,) bool; points: (M, 3), the hit point, or the point of closest approach for a miss;
    coverage: (M,) in [0, 1]: 1 for hits, the covered fraction of a pixel-wide cone for misses;
    steps: sphere-tracing iterations run.
    """

    hit: Tensor
    points: Tensor
    coverage: Tensor
    steps: int


def sphere_trace(
    origins: Tensor,
    dirs: Tensor,
    sdf: Callable[[XYZ, Tensor], Tensor],
    t_near: Tensor,
    t_far: Tensor,
    pixel_angle: Tensor,
    ray_data: Tensor | None = None,
    max_steps: int = 32,
    hit_fraction: float = 0.1,
    step_scale: float = 0.95,
) -> TraceResult:
    """March rays against a signed distance bound until they hit, leave, or run out of steps.

    origins, dirs: (M, 3) (dirs unit); t_near, t_far: (M,) the interval to search;
    pixel_angle: (M,) angular width of each ray's pixel (a pixel is ``t * pixel_angle`` wide at
    distance ``t``); ray_data: optional (C, M) per-ray values (e.g. shape parameters) handed to
    ``sdf(points (x, y, z) each (K,), ray_data (C, K)) -> (K,)`` for the rays still marching.

    A ray hits when the distance falls below ``hit_fraction`` of its pixel width; a ray still
    marching after ``max_steps`` (grazing a silhouette) counts as a hit if it is within half a pixel.
    For a miss, the closest approach ``s`` (in pixel widths) gives an anti-aliasing coverage
    ``clamp(0.5 - s, 0, 1)`` (a box filter across the silhouette). Each ray's result depends on that
    ray only, never on the rest of the batch. Finished rays stop moving and are dropped from the
    batch in groups, so the cost follows the rays still marching.
    """
    m = origins.shape[0]
    device = origins.device
    if ray_data is None:
        ray_data = torch.zeros(0, m, device=device)
    hit = torch.zeros(m, dtype=torch.bool, device=device)
    best_ratio = torch.full((m,), math.inf, device=device)
    hit_t = t_near.clone()
    best_t = t_near.clone()
    # the marching set, compacted as rays finish; points as (3, K) so components are contiguous
    idx = torch.arange(m, device=device)
    o, d = origins.T.contiguous(), dirs.T.contiguous()
    t, tf, pix, data = t_near.clone(), t_far, pixel_angle, ray_data
    b_ratio = best_ratio.clone()
    b_t = t.clone()
    steps = 0
    while idx.numel() > 0 and steps < max_steps:
        steps += 1
        dist = sdf(torch.addcmul(o, d, t).unbind(0), data)
        ratio = dist / (t * pix)
        closer = ratio < b_ratio
        b_ratio = torch.minimum(ratio, b_ratio)
        b_t = torch.where(closer, t, b_t)
        now_hit = ratio < hit_fraction
        done = now_hit | (t > tf)
        t = torch.where(done, t, t + step_scale * dist)  # finished rays stay where they are
        last = steps == max_steps
        n_done = int(done.sum())
        if last:
            now_hit = now_hit | ((ratio < 0.5) & ~done)  # still marching, within half a pixel: a hit
            done = torch.ones_like(done)
        elif n_done == 0 or (n_done < 0.25 * idx.numel() and steps % 4 != 0):
            continue  # finished rays wait, frozen, for the next compaction
        fin = done.nonzero().squeeze(-1)
        rid = idx.index_select(0, fin)
        hit.index_copy_(0, rid, now_hit.index_select(0, fin))
        hit_t.index_copy_(0, rid, t.index_select(0, fin))
        best_ratio.index_copy_(0, rid, b_ratio.index_select(0, fin))
        best_t.index_copy_(0, rid, b_t.index_select(0, fin))
        if last:
            break
        keep = (~done).nonzero().squeeze(-1)
        idx, t, tf, pix, b_ratio, b_t = (v.index_select(0, keep) for v in (idx, t, tf, pix, b_ratio, b_t))
        o, d, data = o.index_select(1, keep), d.index_select(1, keep), data.index_select(1, keep)
    t_final = torch.where(hit, hit_t, best_t)
    points = torch.addcmul(origins, dirs, t_final.unsqueeze(-1))
    coverage = torch.where(hit, torch.ones_like(best_ratio), (0.5 - best_ratio).clamp(0.0, 1.0))
    return TraceResult(hit=hit, points=points, coverage=coverage, steps=steps)


# -- an SDF as a radiance field -----------------------------------------------------------------
class SDFField:
    """A shape seen as a volume (VolSDF): density ``Psi_beta(-sdf) / beta`` with ``Psi_beta`` the
    CDF of a zero-mean Laplace distribution of scale ``beta``; albedo from the shape's parts.

    Satisfies :class:`msd3d.scene.base.RadianceField`, so a catalogue shape can stand in for a
    trained NeRF (ground truth for renderer and exporter tests).
    """

    def __init__(
        self,
        sdf: Callable[[Tensor], Tensor],
        albedo: Callable[[Tensor], Tensor],
        bound: float = 1.0,
        beta: float = 0.01,
    ) -> None:
        if beta <= 0:
            raise ValueError("beta must be positive")
        self._sdf, self._albedo = sdf, albedo
        self.bound = bound
        self.beta = beta

    def sdf(self, points: Tensor) -> Tensor:
        """(..., 3) -> (...) signed distance (negative inside)."""
        return self._sdf(points)

    def density(self, points: Tensor) -> Tensor:
        """(..., 3) -> (...) >= 0; ``1/beta`` deep inside, 0 far outside."""
        s = -self._sdf(points) / self.beta
        psi = torch.where(s <= 0, 0.5 * torch.exp(s.clamp_max(0)), 1.0 - 0.5 * torch.exp(-s.clamp_min(0)))
        return psi / self.beta

    def albedo(self, points: Tensor) -> Tensor:
        """(..., 3) -> (..., 3) in [0, 1]."""
        return self._albedo(points)
