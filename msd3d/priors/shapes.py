"""Signed distance functions, their combinations, a batched sphere tracer and an SDF-backed field.

Everything here is pure PyTorch and vectorised over points: a primitive takes points ``p`` (..., 3)
and size parameters that are Python floats or tensors broadcastable with ``p[..., 0]`` (one value per
point), so a whole family of shapes with different parameters is evaluated in one call.

Conventions: world units, +z up (as in :mod:`msd3d.render.cameras`); rotations act on vectors
(``rotate_z(p, a)`` turns ``p`` by ``a`` radians about +z); to evaluate a shape in a frame rotated by
``a`` use the inverse rotation of the points, ``rotate_z(p, -a)``.
Combinations of exact distances (union, subtraction, repetition) give lower bounds of the true
distance, which is all sphere tracing needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

Scalar = float | Tensor

#: Added to a part's distance to switch it off (far outside any scene).
DISABLED = 10.0


# -- vector helpers ----------------------------------------------------------------------------
def length(v: Tensor) -> Tensor:
    """Euclidean norm over the last axis: (..., k) -> (...)."""
    return torch.linalg.vector_norm(v, dim=-1)


def vec3(x: Scalar, y: Scalar, z: Scalar, like: Tensor) -> Tensor:
    """Stack three scalars/tensors broadcast against ``like[..., 0]`` into (..., 3)."""
    shape = like.shape[:-1]
    parts = [torch.as_tensor(c, dtype=like.dtype, device=like.device).expand(shape) for c in (x, y, z)]
    return torch.stack(parts, dim=-1)


def translate(p: Tensor, x: Scalar = 0.0, y: Scalar = 0.0, z: Scalar = 0.0) -> Tensor:
    """Points in a frame whose origin sits at (x, y, z): ``p - (x, y, z)``; (..., 3) -> (..., 3)."""
    px, py, pz = p.unbind(-1)
    return torch.stack([px - x, py - y, pz - z], dim=-1)


def _cos_sin(angle: Scalar) -> tuple[Scalar, Scalar]:
    if isinstance(angle, Tensor):
        return torch.cos(angle), torch.sin(angle)
    return math.cos(angle), math.sin(angle)


def rotate_x(p: Tensor, angle: Scalar) -> Tensor:
    """Rotate vectors (..., 3) by ``angle`` radians about +x (right-handed)."""
    c, s = _cos_sin(angle)
    x, y, z = p.unbind(-1)
    return torch.stack([x, c * y - s * z, s * y + c * z], dim=-1)


def rotate_y(p: Tensor, angle: Scalar) -> Tensor:
    """Rotate vectors (..., 3) by ``angle`` radians about +y (right-handed: +z turns toward +x)."""
    c, s = _cos_sin(angle)
    x, y, z = p.unbind(-1)
    return torch.stack([c * x + s * z, y, -s * x + c * z], dim=-1)


def rotate_z(p: Tensor, angle: Scalar) -> Tensor:
    """Rotate vectors (..., 3) by ``angle`` radians about +z (right-handed: +x turns toward +y)."""
    c, s = _cos_sin(angle)
    x, y, z = p.unbind(-1)
    return torch.stack([c * x - s * y, s * x + c * y, z], dim=-1)


def euler_matrix(yaw_deg: float, pitch_deg: float = 0.0, roll_deg: float = 0.0) -> Tensor:
    """(3, 3) rotation ``Rz(yaw) @ Ry(pitch) @ Rx(roll)`` (degrees), mapping local to world vectors."""
    eye = torch.eye(3, dtype=torch.float64)
    m = rotate_x(eye, math.radians(roll_deg))  # rows are rotated basis vectors
    m = rotate_y(m, math.radians(pitch_deg))
    m = rotate_z(m, math.radians(yaw_deg))
    return m.T.contiguous().float()  # columns = images of the basis vectors


def mirror_xy(p: Tensor) -> Tensor:
    """Fold space into the x >= 0, y >= 0 quadrant (four symmetric copies of one shape)."""
    x, y, z = p.unbind(-1)
    return torch.stack([x.abs(), y.abs(), z], dim=-1)


def mirror_y(p: Tensor) -> Tensor:
    """Fold space into y >= 0 (left/right symmetric pairs)."""
    x, y, z = p.unbind(-1)
    return torch.stack([x, y.abs(), z], dim=-1)


def polar_repeat(p: Tensor, count: Scalar, phase: Scalar = 0.0) -> Tensor:
    """Fold space around +z into one of ``count`` equal sectors, centred on the +x axis.

    A shape modelled once near +x then appears ``count`` times, the first at angle ``phase`` (rad).
    """
    x, y, z = p.unbind(-1)
    sector = 2.0 * math.pi / count
    angle = torch.atan2(y, x) - phase
    folded = angle - sector * torch.round(angle / sector)
    r = torch.hypot(x, y)
    return torch.stack([r * torch.cos(folded), r * torch.sin(folded), z], dim=-1)


# -- primitives ----------------------------------------------------------------------------------
def sd_sphere(p: Tensor, radius: Scalar) -> Tensor:
    """Sphere at the origin: (..., 3) -> (...)."""
    return length(p) - radius


def sd_ellipsoid(p: Tensor, rx: Scalar, ry: Scalar, rz: Scalar) -> Tensor:
    """Axis-aligned ellipsoid at the origin (Quilez's bound, exact on the surface)."""
    x, y, z = p.unbind(-1)
    k0 = torch.sqrt((x / rx) ** 2 + (y / ry) ** 2 + (z / rz) ** 2)
    k1 = torch.sqrt((x / rx**2) ** 2 + (y / ry**2) ** 2 + (z / rz**2) ** 2).clamp_min(1e-9)
    return k0 * (k0 - 1.0) / k1


def sd_box(p: Tensor, hx: Scalar, hy: Scalar, hz: Scalar, rounding: Scalar = 0.0) -> Tensor:
    """Axis-aligned box with half sizes (hx, hy, hz) at the origin; ``rounding`` rounds its edges
    (the outer size stays (hx, hy, hz))."""
    x, y, z = p.unbind(-1)
    qx, qy, qz = x.abs() - hx + rounding, y.abs() - hy + rounding, z.abs() - hz + rounding
    outside = torch.sqrt(qx.clamp_min(0) ** 2 + qy.clamp_min(0) ** 2 + qz.clamp_min(0) ** 2)
    inside = torch.maximum(torch.maximum(qx, qy), qz).clamp_max(0)
    return outside + inside - rounding


def sd_cylinder(p: Tensor, radius: Scalar, half_height: Scalar) -> Tensor:
    """Capped cylinder along z, centred at the origin."""
    x, y, z = p.unbind(-1)
    dr = torch.hypot(x, y) - radius
    dz = z.abs() - half_height
    return torch.maximum(dr, dz).clamp_max(0) + torch.hypot(dr.clamp_min(0), dz.clamp_min(0))


def sd_capped_cone(p: Tensor, half_height: Scalar, r_bottom: Scalar, r_top: Scalar) -> Tensor:
    """Truncated cone along z from ``z = -half_height`` (radius ``r_bottom``) to ``+half_height``
    (radius ``r_top``); exact (Quilez)."""
    x, y, z = p.unbind(-1)
    qx, qy = torch.hypot(x, y), z
    h = half_height
    k2x, k2y = r_top - r_bottom, 2.0 * h
    cap_r = torch.where(qy < 0, torch.as_tensor(r_bottom, dtype=p.dtype), torch.as_tensor(r_top, dtype=p.dtype))
    cax = qx - torch.minimum(qx, cap_r)
    cay = qy.abs() - h
    t = (((r_top - qx) * k2x + (h - qy) * k2y) / (k2x * k2x + k2y * k2y)).clamp(0.0, 1.0)
    cbx = qx - r_top + k2x * t
    cby = qy - h + k2y * t
    sign = torch.where((cbx < 0) & (cay < 0), -1.0, 1.0)
    return sign * torch.sqrt(torch.minimum(cax * cax + cay * cay, cbx * cbx + cby * cby))


def sd_torus(p: Tensor, major: Scalar, minor: Scalar) -> Tensor:
    """Torus around the z axis (ring in the xy plane) at the origin."""
    x, y, z = p.unbind(-1)
    return torch.hypot(torch.hypot(x, y) - major, z) - minor


def sd_capsule(p: Tensor, a: Tensor, b: Tensor, radius: Scalar) -> Tensor:
    """Segment from ``a`` to ``b`` (each (3,) or (..., 3)) thickened by ``radius``."""
    pa, ba = p - a, b - a
    h = ((pa * ba).sum(-1) / (ba * ba).sum(-1).clamp_min(1e-12)).clamp(0.0, 1.0)
    return length(pa - ba * h.unsqueeze(-1)) - radius


def sd_gable(p: Tensor, half_width: Scalar, half_length: Scalar, height: Scalar) -> Tensor:
    """Gable roof: a triangular prism with its base (width 2*half_width along x) on z = 0, its ridge
    along y at z = height, and length 2*half_length (a lower bound of the distance)."""
    x, y, z = p.unbind(-1)
    norm = (height**2 + half_width**2) ** 0.5
    slope = (height * (x.abs() - half_width) + half_width * z) / norm
    return torch.maximum(torch.maximum(slope, -z), y.abs() - half_length)


# -- combinations -------------------------------------------------------------------------------
def op_union(*distances: Tensor) -> Tensor:
    out = distances[0]
    for d in distances[1:]:
        out = torch.minimum(out, d)
    return out


def op_intersect(*distances: Tensor) -> Tensor:
    out = distances[0]
    for d in distances[1:]:
        out = torch.maximum(out, d)
    return out


def op_subtract(a: Tensor, b: Tensor) -> Tensor:
    """``a`` with ``b`` carved out."""
    return torch.maximum(a, -b)


def op_smooth_union(a: Tensor, b: Tensor, k: float) -> Tensor:
    """Union blended over a width ``k`` (polynomial smooth minimum)."""
    h = (0.5 + 0.5 * (b - a) / k).clamp(0.0, 1.0)
    return torch.lerp(b, a, h) - k * h * (1.0 - h)


def switch(distance: Tensor, enabled: Scalar) -> Tensor:
    """A part that is present when ``enabled`` is 1 and pushed out of the scene when it is 0."""
    return distance + (1.0 - enabled) * DISABLED


# -- sphere tracing -----------------------------------------------------------------------------
@dataclass
class TraceResult:
    """Per ray: whether it hit, the point to colour, and its coverage of the pixel.

    hit: (M,) bool; points: (M, 3), the hit point, or the point of closest approach for a miss;
    coverage: (M,) in [0, 1]: 1 for hits, the fraction of a pixel-wide cone covered for misses.
    """

    hit: Tensor
    points: Tensor
    coverage: Tensor
    steps: int


def ray_box(origins: Tensor, dirs: Tensor, bound: float) -> tuple[Tensor, Tensor, Tensor]:
    """Entry/exit distances of rays (M, 3) through the box ``[-bound, bound]^3`` and whether they
    cross it: (t_near (M,), t_far (M,), crosses (M,) bool)."""
    inv = 1.0 / torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0 = (-bound - origins) * inv
    t1 = (bound - origins) * inv
    t_near = torch.minimum(t0, t1).amax(-1).clamp_min(0.0)
    t_far = torch.maximum(t0, t1).amin(-1)
    return t_near, t_far, t_far > t_near


def sphere_trace(
    origins: Tensor,
    dirs: Tensor,
    sdf: Callable[[Tensor, Tensor], Tensor],
    t_near: Tensor,
    t_far: Tensor,
    pixel_angle: Tensor,
    max_steps: int = 64,
    hit_fraction: float = 0.05,
    step_scale: float = 0.95,
) -> TraceResult:
    """March rays against a signed distance bound until they hit, leave, or run out of steps.

    origins, dirs: (M, 3) (dirs unit); t_near, t_far: (M,) the interval to search;
    pixel_angle: (M,) the angular width of the ray's pixel (so a pixel is ``t * pixel_angle`` wide at
    distance ``t``). ``sdf(points (K, 3), ray_index (K,)) -> (K,)`` sees which rays it evaluates, so
    callers can look up per-ray shape parameters. A ray hits when the distance falls below
    ``hit_fraction`` of its pixel width. For misses the closest approach, measured in pixel widths
    ``s``, gives an anti-aliasing coverage ``clamp(0.5 - s, 0, 1)`` (a box filter across the edge).
    Finished rays are dropped from the batch as they finish, so cost follows the active rays.
    """
    m = origins.shape[0]
    device = origins.device
    hit = torch.zeros(m, dtype=torch.bool, device=device)
    best_ratio = torch.full((m,), math.inf, device=device)
    best_t = t_near.clone()
    hit_t = t_near.clone()
    # the active set, compacted as rays finish
    idx = torch.arange(m, device=device)
    o, d, t, tf, pix = origins, dirs, t_near.clone(), t_far, pixel_angle
    b_ratio, b_t = best_ratio.clone(), best_t.clone()
    steps = 0
    for steps in range(1, max_steps + 1):
        if idx.numel() == 0:
            break
        dist = sdf(torch.addcmul(o, t.unsqueeze(-1), d), idx)
        ratio = dist / (t * pix).clamp_min(1e-9)
        closer = ratio < b_ratio
        b_ratio = torch.where(closer, ratio, b_ratio)
        b_t = torch.where(closer, t, b_t)
        now_hit = ratio < hit_fraction
        t = t + step_scale * dist.clamp_min(0.0)
        done = now_hit | (t > tf)
        last = steps == max_steps
        if last or bool(done.any()):
            if last:
                done = torch.ones_like(done)
                now_hit = now_hit | (ratio < 0.5)  # stalled near a surface: count as a hit
            fin = idx[done]
            hit[fin] = now_hit[done]
            hit_t[fin] = t[done]
            best_ratio[fin] = b_ratio[done]
            best_t[fin] = b_t[done]
            keep = ~done
            idx, o, d, t, tf, pix = idx[keep], o[keep], d[keep], t[keep], tf[keep], pix[keep]
            b_ratio, b_t = b_ratio[keep], b_t[keep]
    t_final = torch.where(hit, hit_t, best_t)
    points = torch.addcmul(origins, t_final.unsqueeze(-1), dirs)
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
        return self._sdf(points)

    def density(self, points: Tensor) -> Tensor:
        """(..., 3) -> (...) >= 0; ``1/beta`` deep inside, 0 far outside."""
        s = -self._sdf(points) / self.beta
        psi = torch.where(s <= 0, 0.5 * torch.exp(s.clamp_max(0)), 1.0 - 0.5 * torch.exp(-s.clamp_min(0)))
        return psi / self.beta

    def albedo(self, points: Tensor) -> Tensor:
        """(..., 3) -> (..., 3) in [0, 1]."""
        return self._albedo(points)
