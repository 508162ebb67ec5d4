"""The oracle prior's catalogue: families of procedural, coloured 3-D shapes built from SDFs.

A :class:`Family` is one parametric template (a function from local points and a row of shape
parameters to the distances of its coloured parts) plus a few :class:`VariantSpec` rows that differ
in colour, proportion and pose. Because every variant of a family shares the template, all variants
and all cameras render in one batched sphere-tracing pass (:meth:`Family.render`).

Objects sit at the origin, +z up, front facing +x (azimuth 0), inside about ``[-0.6, 0.6]^3``.
A prompt selects a family by forgiving word matching (:func:`match_family`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from msd3d.catalogue.shapes import (
    XYZ,
    SDFField,
    euler_matrix,
    frustum_from_radial,
    length2,
    mirror_xy,
    mirror_y,
    op_smooth_union,
    op_subtract,
    op_union,
    polar_repeat,
    rotate_y,
    sd_box,
    sd_capsule,
    sd_cylinder,
    sd_ellipsoid,
    sd_frustum,
    sd_gable,
    sd_sphere,
    sd_torus,
    single_thread,
    sphere_trace,
    switch,
    translate,
)
from msd3d.errors import Msd3dError
from msd3d.render.cameras import Cameras, ray_box

RGB = tuple[float, float, float]


class ParamView:
    """Named per-point shape parameters: ``P["radius"]`` is a contiguous (N,) tensor."""

    def __init__(self, columns: Tensor, layout: Mapping[str, int]) -> None:
        self.columns = columns.unbind(0)  # columns: (P, N)
        self.layout = layout

    def __getitem__(self, name: str) -> Tensor:
        return self.columns[self.layout[name]]


#: template(points (x, y, z) each (N,), params) -> one distance (N,) per part, in ``parts`` order
Template = Callable[[XYZ, ParamView], Sequence[Tensor]]


@dataclass(frozen=True)
class Pose:
    """Rigid placement of a variant: ``world = R @ local + offset``, ``R = Rz(yaw) Ry(pitch) Rx(roll)``."""

    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)


@dataclass(frozen=True)
class VariantSpec:
    """One variant: overrides of the family's default parameters, a colour per part, a pose."""

    name: str
    description: str
    params: Mapping[str, float] = field(default_factory=dict)
    colors: Mapping[str, RGB] = field(default_factory=dict)
    pose: Pose = Pose()


class Family:
    """A prompt family: a parametric SDF template with coloured parts and its variants."""

    def __init__(
        self,
        name: str,
        synonyms: Sequence[str],
        description: str,
        parts: Sequence[str],
        template: Template,
        defaults: Mapping[str, float],
        variants: Sequence[VariantSpec],
        bound: float = 0.65,
        derive: Callable[[dict[str, float]], dict[str, float]] | None = None,
    ) -> None:
        self.name = name
        self.synonyms = tuple(synonyms)
        self.description = description
        self.parts = tuple(parts)
        self.template = template
        self.defaults = dict(defaults)
        self.variants = tuple(variants)
        self.bound = bound
        rows, colors, rotations, offsets = [], [], [], []
        for spec in self.variants:
            unknown = set(spec.params) - set(self.defaults)
            if unknown:
                raise KeyError(f"{name}/{spec.name}: unknown parameters {sorted(unknown)}")
            if set(spec.colors) != set(self.parts):
                raise KeyError(f"{name}/{spec.name}: colours must name exactly the parts {self.parts}")
            values = {**self.defaults, **spec.params}
            if derive is not None:  # parameters computed from the others (e.g. where a scarf sits)
                values.update(derive(values))
            self.layout = {k: i for i, k in enumerate(values)}
            rows.append([float(values[k]) for k in values])
            colors.append([spec.colors[k] for k in self.parts])
            rotations.append(euler_matrix(spec.pose.yaw, spec.pose.pitch, spec.pose.roll))
            offsets.append(spec.pose.offset)
        self.params = torch.tensor(rows, dtype=torch.float32).T.contiguous()  # (P, V)
        self.colors = torch.tensor(colors, dtype=torch.float32)  # (V, K, 3)
        self.rotations = torch.stack(rotations)  # (V, 3, 3) local -> world
        self.offsets = torch.tensor(offsets, dtype=torch.float32)  # (V, 3)

    def __len__(self) -> int:
        return len(self.variants)

    def __repr__(self) -> str:
        return f"Family({self.name!r}, variants={self.variant_names})"

    @property
    def variant_names(self) -> list[str]:
        return [v.name for v in self.variants]

    @property
    def keywords(self) -> tuple[str, ...]:
        """Words (or short phrases) that select this family in a prompt."""
        return (self.name, *self.synonyms)

    def variant_index(self, variant: int | str) -> int:
        if isinstance(variant, int):
            if not 0 <= variant < len(self):
                raise IndexError(f"{self.name} has {len(self)} variants, no index {variant}")
            return variant
        names = self.variant_names
        if variant not in names:
            raise KeyError(f"{self.name} has no variant {variant!r}; variants: {', '.join(names)}")
        return names.index(variant)

    def shape(self, variant: int | str) -> Shape:
        """One variant as a standalone shape (``sdf``, ``albedo``, ``render``, ``field``)."""
        return Shape(self, self.variant_index(variant))

    # -- evaluation in local coordinates ------------------------------------------------------
    def local_distance(self, points: XYZ, params: Tensor) -> Tensor:
        """Local points (x, y, z) each (N,) with parameter columns (P, N) -> signed distance (N,)."""
        return op_union(*self.template(points, ParamView(params, self.layout)))

    def local_part(self, points: XYZ, params: Tensor) -> Tensor:
        """Index (N,) of the nearest part at each local point."""
        return torch.stack(list(self.template(points, ParamView(params, self.layout))), dim=-1).argmin(-1)

    def local_albedo(self, points: XYZ, params: Tensor, variant: Tensor, colors: Tensor) -> Tensor:
        """Colour (N, 3) of the nearest part; variant (N,) indexes ``colors`` (V, K, 3)."""
        part = self.local_part(points, params)
        k = colors.shape[1]
        return colors.reshape(-1, 3).index_select(0, variant * k + part)

    # -- rendering --------------------------------------------------------------------------
    def render(
        self,
        cameras: Cameras,
        variants: Sequence[int | str] | None = None,
        background: Sequence[float] | float = 1.0,
        supersample: int = 2,
        max_steps: int = 32,
        shading: str = "albedo",
        light_positions: Tensor | None = None,
        ambient_ratio: float = 0.1,
    ) -> Tensor:
        """Images of the variants seen by each camera: (B, V, 3, H, W) in [0, 1].

        Sphere-traced at ``supersample`` x ``supersample`` rays per pixel (box-filtered down), with
        a coverage estimate for rays that pass just beside a silhouette, blended over the solid
        ``background``. ``shading`` is the trainer's (:func:`msd3d.render.shading.shade`):
        "albedo" (the colour of the part hit, unlit), "lambertian" (that colour times
        ``ambient + (1 - ambient) * max(0, n . l)`` for the point light ``light_positions`` (B, 3)
        in world units) or "textureless" (the same lighting of a white albedo).
        """
        vids = list(range(len(self))) if variants is None else [self.variant_index(v) for v in variants]
        if supersample < 1:
            raise ValueError("supersample must be at least 1")
        if shading not in ("albedo", "lambertian", "textureless"):
            raise ValueError(f"the oracle renders albedo, lambertian or textureless shading, not {shading!r}")
        if shading != "albedo" and (light_positions is None or len(light_positions) != len(cameras)):
            raise ValueError(f"{shading} shading needs one light position per camera")
        device = cameras.device
        b, h, w, s, v = len(cameras), cameras.height, cameras.width, supersample, len(vids)
        with torch.no_grad(), single_thread(device):
            cams = cameras.with_resolution(h * s, w * s)
            origins, dirs = cams.rays()  # (B, Hs, Ws, 3)
            vsel = torch.tensor(vids, device=device)
            rot = self.rotations.to(device).index_select(0, vsel)  # (V, 3, 3)
            off = self.offsets.to(device).index_select(0, vsel)  # (V, 3)
            # local = R^T (world - offset), with row vectors: world @ R - offset @ R
            o_local = _rows_times(origins, rot) - (off[:, None, :] @ rot)[None, :, :, None, :]
            d_local = _rows_times(dirs, rot)
            pixel = 2.0 * torch.tan(0.5 * cameras.fovy.to(device)) / (h * s)  # (B,) radians per pixel
            pixel = pixel[:, None, None, None].expand(b, v, h * s, w * s).reshape(-1)
            ray_variant = torch.arange(v, device=device)[None, :, None, None].expand(b, v, h * s, w * s).reshape(-1)
            o_local, d_local = o_local.reshape(-1, 3), d_local.reshape(-1, 3)

            bg = _background(background, device)
            image = bg.expand(o_local.shape[0], 3).clone()
            t_near, t_far, crosses = ray_box(o_local, d_local, self.bound)
            sel = crosses.nonzero().squeeze(-1)
            t_start = t_near.index_select(0, sel)
            t_far = t_far.index_select(0, sel)
            if sel.numel() > 0:
                params = self.params.to(device).index_select(1, vsel)  # (P, V)
                colors = self.colors.to(device).index_select(0, vsel)  # (V, K, 3)
                rv = ray_variant.index_select(0, sel)
                res = sphere_trace(
                    o_local.index_select(0, sel),
                    d_local.index_select(0, sel),
                    self.local_distance,
                    t_start,
                    t_far,
                    pixel.index_select(0, sel),
                    ray_data=params.index_select(1, rv),
                    max_steps=max_steps,
                )
                seen = (res.coverage > 0).nonzero().squeeze(-1)
                if seen.numel() > 0:
                    rs = rv.index_select(0, seen)
                    pts = res.points.index_select(0, seen).T.contiguous().unbind(0)
                    p_seen = params.index_select(1, rs)
                    col = self.local_albedo(pts, p_seen, rs, colors)
                    if shading != "albedo":
                        # the light in each variant's local frame: R^T (light - offset)
                        lights = light_positions.to(device).float()  # (B, 3)
                        l_local = _rows_times(lights, rot) - (off[:, None, :] @ rot)[None, :, 0, :]
                        ray_light = l_local[:, :, None, :].expand(b, v, h * s * w * s, 3).reshape(-1, 3)
                        l_seen = ray_light.index_select(0, sel.index_select(0, seen))
                        col = self._lit(pts, p_seen, col, l_seen, shading, ambient_ratio)
                    cov = res.coverage.index_select(0, seen).unsqueeze(-1)
                    image.index_copy_(0, sel.index_select(0, seen), cov * col + (1.0 - cov) * bg)
            image = image.reshape(b * v, h * s, w * s, 3).permute(0, 3, 1, 2)
            if s > 1:
                image = F.avg_pool2d(image, s)
            return image.reshape(b, v, 3, h, w).clamp(0.0, 1.0)


    def local_normals(self, points: XYZ, params: Tensor, eps: float = 1e-3) -> Tensor:
        """Unit outward normals (N, 3) at local points: central differences of the SDF."""
        x, y, z = points
        grads = []
        for axis in range(3):
            plus = [x, y, z]
            minus = [x, y, z]
            plus[axis] = plus[axis] + eps
            minus[axis] = minus[axis] - eps
            grads.append(self.local_distance(tuple(plus), params) - self.local_distance(tuple(minus), params))
        return F.normalize(torch.stack(grads, dim=-1), dim=-1, eps=1e-12)

    def _lit(
        self, points: XYZ, params: Tensor, albedo: Tensor, lights: Tensor, shading: str, ambient_ratio: float
    ) -> Tensor:
        """The trainer's lambertian / textureless shading at local surface points (N,) with lights (N, 3)."""
        normals = self.local_normals(points, params)
        to_light = F.normalize(lights - torch.stack(points, dim=-1), dim=-1)
        diffuse = (normals * to_light).sum(-1, keepdim=True).clamp_min(0.0)
        light = ambient_ratio + (1.0 - ambient_ratio) * diffuse  # (N, 1)
        return light.expand(-1, 3) if shading == "textureless" else albedo * light


class Shape:
    """One catalogue variant as a standalone object in world coordinates."""

    def __init__(self, family: Family, index: int) -> None:
        self.family = family
        self.index = index
        self.spec = family.variants[index]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def description(self) -> str:
        return self.spec.description

    def __repr__(self) -> str:
        return f"Shape({self.family.name}/{self.name})"

    def _local(self, points: Tensor) -> tuple[XYZ, Tensor, tuple[int, ...]]:
        lead = points.shape[:-1]
        p = points.reshape(-1, 3).float()
        rot = self.family.rotations[self.index].to(p.device)
        off = self.family.offsets[self.index].to(p.device)
        local = ((p - off) @ rot).T.contiguous().unbind(0)
        params = self.family.params[:, self.index : self.index + 1].to(p.device).expand(-1, p.shape[0])
        return local, params.contiguous(), lead

    def sdf(self, points: Tensor) -> Tensor:
        """Signed distance bound (negative inside): points (..., 3) -> (...)."""
        with single_thread(points.device):
            local, params, lead = self._local(points)
            return self.family.local_distance(local, params).reshape(lead).to(points.dtype)

    def albedo(self, points: Tensor) -> Tensor:
        """Colour of the nearest part: points (..., 3) -> (..., 3) in [0, 1]."""
        with single_thread(points.device):
            local, params, lead = self._local(points)
            part = self.family.local_part(local, params)
            colors = self.family.colors[self.index].to(part.device)
            return colors.index_select(0, part).reshape(*lead, 3).to(points.dtype)

    def render(
        self, cameras: Cameras, background: Sequence[float] | float = 1.0, supersample: int = 2, max_steps: int = 32
    ) -> Tensor:
        """(B, 3, H, W) flat-albedo images of this variant."""
        return self.family.render(cameras, [self.index], background, supersample, max_steps)[:, 0]

    def field(self, beta: float = 0.01, bound: float = 1.0) -> SDFField:
        """This shape as a :class:`RadianceField` (VolSDF density of sharpness ``beta``)."""
        return SDFField(self.sdf, self.albedo, bound=bound, beta=beta)


def _rows_times(x: Tensor, rot: Tensor) -> Tensor:
    """World vectors x (B, *S, 3), as rows, times each variant's rotation rot (V, 3, 3): (B, V, *S, 3).

    Three multiply-adds instead of a matmul, so a ray's result does not depend on how many cameras are
    rendered together (a matmul's blocking, and so its rounding, changes with the batch size).
    """
    xs = x.unsqueeze(1)  # (B, 1, *S, 3)
    r = rot.reshape(1, rot.shape[0], *([1] * (x.ndim - 2)), 3, 3)  # (1, V, 1, .., 1, 3, 3)
    return xs[..., 0:1] * r[..., 0, :] + xs[..., 1:2] * r[..., 1, :] + xs[..., 2:3] * r[..., 2, :]


def _background(background: Sequence[float] | float, device: torch.device) -> Tensor:
    bg = torch.as_tensor(background, dtype=torch.float32, device=device).reshape(-1)
    if bg.numel() == 1:
        bg = bg.expand(3)
    if bg.numel() != 3:
        raise ValueError("background must be one grey level or three RGB values")
    return bg.reshape(1, 3)


def _deg(x: Tensor) -> Tensor:
    return x * (math.pi / 180.0)


# =============================================================================================
# Templates. Each takes local points (x, y, z) and parameters P, and returns one distance per
# part, in the order of the family's ``parts``.
# =============================================================================================
def _donut(p: XYZ, P: ParamView) -> list[Tensor]:
    big, small = P["major"], P["minor"]
    x, y, z = p
    ring = length2(x, y) - big
    tube = length2(ring, z)
    dough = tube - small
    icing = torch.maximum(tube - (small + P["icing"]), P["icing_level"] * small - z)
    return [dough, icing]


def _mushroom(p: XYZ, P: ParamView) -> list[Tensor]:
    bottom, cz = P["stem_bottom"], P["cap_z"]
    stem = sd_frustum(translate(p, z=0.5 * (bottom + cz)), 0.5 * (cz - bottom), P["stem_r_bottom"], P["stem_r_top"])
    a, c = P["cap_a"], P["cap_c"]
    pc = translate(p, z=cz)
    cap = torch.maximum(sd_ellipsoid(pc, a, a, c), -P["cap_cut"] * c - pc[2])
    phi = _deg(P["spot_elev"])
    ring = polar_repeat(pc, P["spot_count"])
    spot = sd_sphere(translate(ring, a * torch.cos(phi), 0.0, c * torch.sin(phi)), P["spot_r"])
    top_spot = sd_sphere(translate(pc, z=c), 1.2 * P["spot_r"])
    spots = switch(torch.minimum(spot, top_spot), P["spots"])
    return [stem, cap, spots]


_EYE_EL, _EYE_AZ = math.radians(22.0), math.radians(28.0)
_EYE = (math.cos(_EYE_EL) * math.cos(_EYE_AZ), math.cos(_EYE_EL) * math.sin(_EYE_AZ), math.sin(_EYE_EL))


def _snowman(p: XYZ, P: ParamView) -> list[Tensor]:
    x, y, z = p
    bottom = sd_sphere(translate(p, z=P["bottom_z"]), P["bottom_r"])
    mid_on = P["mid_on"]
    mid = switch(sd_sphere(translate(p, z=P["mid_z"]), P["mid_r"]), mid_on)
    hz, hr = P["head_z"], P["head_r"]
    ph = translate(p, z=hz)
    head = sd_sphere(ph, hr)
    snow = op_smooth_union(op_smooth_union(bottom, mid, 0.03), head, 0.03)
    # carrot nose along +x
    x0, x1 = 0.7 * hr, hr + P["nose_len"]
    nose = sd_frustum((y, ph[2], x - 0.5 * (x0 + x1)), 0.5 * (x1 - x0), P["nose_r"], 0.004)
    # hat: brim and crown
    brim_z = hz + 0.85 * hr
    brim = sd_cylinder(translate(p, z=brim_z), P["brim_r"], 0.012)
    crown = sd_cylinder(translate(p, z=brim_z + 0.5 * P["crown_h"]), P["crown_r"], 0.5 * P["crown_h"])
    hat = torch.minimum(brim, crown)
    # eyes, mirrored left/right
    eyes = sd_sphere(translate(mirror_y(ph), hr * _EYE[0], hr * _EYE[1], hr * _EYE[2]), 0.022)
    # scarf at the neck (its height and radius are precomputed parameters, see _snowman_neck)
    scarf = sd_torus(translate(p, z=P["neck_z"]), P["neck_r"], P["scarf_r"])
    return [snow, nose, hat, eyes, scarf]


def _snowman_neck(params: dict[str, float]) -> dict[str, float]:
    """Height and ring radius of the scarf: between the head and the ball below it."""
    hz, hr = params["head_z"], params["head_r"]
    lower = ("mid_z", "mid_r") if params["mid_on"] > 0.5 else ("bottom_z", "bottom_r")
    lz, lr = params[lower[0]], params[lower[1]]
    neck_z = 0.5 * (hz - hr + lz + lr)
    section = max(math.sqrt(max(hr**2 - (neck_z - hz) ** 2, 0.0)), math.sqrt(max(lr**2 - (neck_z - lz) ** 2, 0.0)))
    return {"neck_z": neck_z, "neck_r": section + 0.2 * params["scarf_r"]}


def _table(p: XYZ, P: ParamView) -> list[Tensor]:
    tz, t = P["top_z"], P["top_t"]
    pt = translate(p, z=tz)
    top = torch.where(
        P["round_top"] > 0.5, sd_cylinder(pt, P["top_hx"], t), sd_box(pt, P["top_hx"], P["top_hy"], t, 0.01)
    )
    lb = P["leg_bottom"]
    mid, half = 0.5 * (tz - t + lb), 0.5 * (tz - t - lb)
    legs = switch(sd_cylinder(translate(mirror_xy(p), P["leg_x"], P["leg_y"], mid), P["leg_r"], half), P["legs_on"])
    column = sd_cylinder(translate(p, z=mid), P["column_r"], half)
    foot = sd_cylinder(translate(p, z=lb + 0.02), P["foot_r"], 0.02)
    pedestal = switch(torch.minimum(column, foot), P["pedestal_on"])
    return [top, torch.minimum(legs, pedestal)]


def _mug(p: XYZ, P: ParamView) -> list[Tensor]:
    x, y, z = p
    r, h, zc, wall = P["body_r"], P["body_h"], P["body_z"], P["wall"]
    pb = translate(p, z=zc)
    body = op_subtract(sd_cylinder(pb, r, h), sd_cylinder(translate(pb, z=wall), r - wall, h))
    floor = zc - h + wall
    level = floor + P["fill"] * (2.0 * h - wall)
    drink = sd_cylinder(translate(p, z=0.5 * (floor + level)), r - wall - 0.002, 0.5 * (level - floor))
    ring = (y - r, z - P["handle_z"], x)  # the handle is a half ring in the y-z plane
    handle = torch.maximum(sd_torus(ring, P["handle_R"], P["handle_r"]), (r - wall) - y)
    saucer = switch(sd_cylinder(translate(p, z=zc - h - P["saucer_t"]), P["saucer_r"], P["saucer_t"]), P["saucer_on"])
    return [body, handle, drink, saucer]


def _lamp(p: XYZ, P: ParamView) -> list[Tensor]:
    bz = P["base_z"]
    base = sd_ellipsoid(translate(p, z=bz), P["base_r"], P["base_r"], P["base_h"])
    a = (0.0, 0.0, bz)
    elbow = (P["elbow_x"], 0.0, P["elbow_z"])
    head = (P["head_x"], 0.0, P["head_z"])
    pole = torch.minimum(sd_capsule(p, a, elbow, P["pole_r"]), sd_capsule(p, elbow, head, P["pole_r"]))
    ps = rotate_y(translate(p, *head), -_deg(P["shade_pitch"]))  # the shade's frame, tilted about y
    shade = sd_frustum(ps, P["shade_h"], P["shade_r_bottom"], P["shade_r_top"])
    return [base, pole, shade]


def _rocket(p: XYZ, P: ParamView) -> list[Tensor]:
    r, zb, zt = P["body_r"], P["body_bottom"], P["body_top"]
    body = sd_cylinder(translate(p, z=0.5 * (zb + zt)), r, 0.5 * (zt - zb))
    nh = P["nose_h"]
    nose = sd_frustum(translate(p, z=zt + 0.5 * nh), 0.5 * nh, r, 0.008)
    q = polar_repeat(p, P["fin_count"], _deg(P["fin_phase"]))
    fl, fh = P["fin_len"], P["fin_h"]
    fins = sd_box(translate(q, r + 0.5 * fl - 0.02, 0.0, zb + 0.5 * fh - 0.05), 0.5 * fl + 0.02, P["fin_t"], 0.5 * fh)
    window = sd_sphere(translate(p, r, 0.0, P["window_z"]), P["window_r"])
    return [body, nose, fins, window]


def _tree(p: XYZ, P: ParamView) -> list[Tensor]:
    x, y, z = p
    radial = length2(x, y)
    tb, tt, tr = P["trunk_bottom"], P["trunk_top"], P["trunk_r"]
    trunk = frustum_from_radial(radial, z - 0.5 * (tb + tt), 0.5 * (tt - tb), 1.25 * tr, tr)
    cone_r, step, cz0, ch = P["cone_r"], P["layer_step"], P["cone_z"], P["cone_h"]
    layers = [frustum_from_radial(radial, z - (cz0 + i * step), ch, cone_r * (1 - 0.25 * i), 0.02) for i in range(3)]
    pine = switch(op_union(*layers), P["pine_on"])
    rx, rz, cz = P["crown_rx"], P["crown_rz"], P["crown_z"]
    crown = sd_ellipsoid(translate(p, z=cz), rx, rx, rz)
    blobs = sd_sphere(translate(mirror_xy(p), 0.5 * rx, 0.5 * rx, cz - 0.3 * rz), P["blob_r"])
    crown = op_smooth_union(crown, switch(blobs, P["blobs_on"]), 0.04)
    foliage = torch.minimum(pine, switch(crown, P["crown_on"]))
    return [trunk, foliage]


def _chair(p: XYZ, P: ParamView) -> list[Tensor]:
    sz, hx, hy, t = P["seat_z"], P["seat_hx"], P["seat_hy"], P["seat_t"]
    round_seat = P["round_seat"] > 0.5
    ps = translate(p, z=sz)
    seat = torch.where(round_seat, sd_cylinder(ps, hx, t), sd_box(ps, hx, hy, t, 0.01))
    lb, inset = P["leg_bottom"], P["leg_inset"]
    lx = torch.where(round_seat, 0.62 * hx, hx - inset)
    ly = torch.where(round_seat, 0.62 * hx, hy - inset)
    legs = sd_cylinder(translate(mirror_xy(p), lx, ly, 0.5 * (sz - t + lb)), P["leg_r"], 0.5 * (sz - t - lb))
    bt, bh = P["back_t"], P["back_h"]
    pb = rotate_y(translate(p, bt - hx, 0.0, sz), _deg(P["back_recline"]))  # the back leans toward -x
    back = switch(sd_box(translate(pb, z=0.5 * bh), bt, hy, 0.5 * bh, 0.01), P["back_on"])
    return [seat, legs, back]


def _house(p: XYZ, P: ParamView) -> list[Tensor]:
    hx, hy, wh, bz = P["wall_hx"], P["wall_hy"], P["wall_h"], P["base_z"]
    walls = sd_box(translate(p, z=bz + 0.5 * wh), hx, hy, 0.5 * wh)
    zr, rh, ov = bz + wh, P["roof_h"], P["overhang"]
    roof = sd_gable(translate(p, z=zr), hx + ov, hy + ov, rh)
    dh = P["door_h"]
    door = sd_box(translate(p, hx, 0.0, bz + 0.5 * dh), 0.015, P["door_w"], 0.5 * dh)
    windows = sd_box(translate(mirror_y(p), hx, 0.55 * hy, bz + 0.62 * wh), 0.015, 0.06, 0.06)
    chimney = sd_box(translate(p, -0.45 * hx, 0.45 * hy, zr + 0.6 * rh), 0.045, 0.045, 0.3 * rh + 0.05)
    return [walls, roof, door, windows, switch(chimney, P["chimney_on"])]


# =============================================================================================
# The catalogue
# =============================================================================================
def _build_catalogue() -> dict[str, Family]:
    fams = [
        Family(
            "donut",
            ("doughnut", "torus", "ring", "bagel"),
            "a ring of dough with icing on top",
            ("dough", "icing"),
            _donut,
            {"major": 0.32, "minor": 0.14, "icing": 0.025, "icing_level": 0.0},
            [
                VariantSpec("strawberry", "flat donut with pink icing",
                            {}, {"dough": (0.87, 0.63, 0.36), "icing": (0.96, 0.42, 0.66)}),
                VariantSpec("chocolate", "fat donut, thick chocolate icing",
                            {"major": 0.27, "minor": 0.21, "icing": 0.03, "icing_level": -0.25},
                            {"dough": (0.78, 0.52, 0.28), "icing": (0.33, 0.17, 0.08)}),
                VariantSpec("upright_glazed", "thin ring standing upright, blue glaze facing front",
                            {"major": 0.38, "minor": 0.09, "icing": 0.02, "icing_level": 0.3},
                            {"dough": (0.95, 0.75, 0.35), "icing": (0.25, 0.55, 0.95)},
                            Pose(pitch=90.0)),
            ],
        ),
        Family(
            "mushroom",
            ("toadstool", "fungus", "fungi", "shroom", "fly agaric"),
            "a stem under a domed cap, sometimes spotted",
            ("stem", "cap", "spots"),
            _mushroom,
            {"stem_bottom": -0.45, "stem_r_bottom": 0.09, "stem_r_top": 0.07, "cap_z": 0.05, "cap_a": 0.4,
             "cap_c": 0.28, "cap_cut": 0.1, "spots": 1.0, "spot_r": 0.06, "spot_elev": 35.0, "spot_count": 7.0},
            [
                VariantSpec("fly_agaric", "red cap with white spots",
                            {}, {"stem": (0.95, 0.93, 0.85), "cap": (0.85, 0.1, 0.08), "spots": (0.98, 0.98, 0.95)}),
                VariantSpec("porcini", "wide flat brown cap on a thick stem, no spots",
                            {"stem_r_bottom": 0.17, "stem_r_top": 0.12, "cap_z": 0.0, "cap_a": 0.48, "cap_c": 0.2,
                             "cap_cut": 0.15, "spots": 0.0},
                            {"stem": (0.9, 0.84, 0.66), "cap": (0.5, 0.28, 0.12), "spots": (0.5, 0.28, 0.12)}),
                VariantSpec("purple_cone", "tall purple cap with yellow spots, leaning",
                            {"stem_bottom": -0.5, "stem_r_bottom": 0.06, "stem_r_top": 0.05, "cap_z": -0.02,
                             "cap_a": 0.24, "cap_c": 0.44, "cap_cut": 0.0, "spot_r": 0.045, "spot_elev": 20.0,
                             "spot_count": 5.0},
                            {"stem": (0.82, 0.9, 0.72), "cap": (0.55, 0.25, 0.75), "spots": (0.98, 0.85, 0.2)},
                            Pose(pitch=18.0)),
            ],
        ),
        Family(
            "snowman",
            ("snow man", "snowmen"),
            "stacked snowballs with a hat, carrot nose and scarf",
            ("snow", "nose", "hat", "eyes", "scarf"),
            _snowman,
            {"bottom_z": -0.36, "bottom_r": 0.24, "mid_on": 1.0, "mid_z": -0.02, "mid_r": 0.18, "head_z": 0.26,
             "head_r": 0.13, "nose_len": 0.13, "nose_r": 0.03, "brim_r": 0.15, "crown_r": 0.1, "crown_h": 0.16,
             "scarf_r": 0.035},
            [
                VariantSpec("top_hat", "three balls, black top hat, red scarf", {},
                            {"snow": (0.86, 0.91, 0.98), "nose": (1.0, 0.5, 0.1), "hat": (0.08, 0.08, 0.08),
                             "eyes": (0.05, 0.05, 0.05), "scarf": (0.85, 0.1, 0.1)}),
                VariantSpec("two_ball", "two big balls, red beanie, green scarf",
                            {"bottom_z": -0.3, "bottom_r": 0.28, "mid_on": 0.0, "head_z": 0.12, "head_r": 0.2,
                             "nose_len": 0.1, "brim_r": 0.17, "crown_r": 0.16, "crown_h": 0.1, "scarf_r": 0.045},
                            {"snow": (0.86, 0.91, 0.98), "nose": (1.0, 0.5, 0.1), "hat": (0.8, 0.1, 0.15),
                             "eyes": (0.05, 0.05, 0.05), "scarf": (0.1, 0.6, 0.25)}),
                VariantSpec("slim_blue", "slim and tall, blue hat, yellow scarf, turned to its left",
                            {"bottom_z": -0.4, "bottom_r": 0.18, "mid_z": -0.1, "mid_r": 0.14, "head_z": 0.13,
                             "head_r": 0.11, "brim_r": 0.13, "crown_r": 0.085, "crown_h": 0.22, "scarf_r": 0.03},
                            {"snow": (0.86, 0.91, 0.98), "nose": (1.0, 0.5, 0.1), "hat": (0.15, 0.3, 0.85),
                             "eyes": (0.05, 0.05, 0.05), "scarf": (0.98, 0.82, 0.1)},
                            Pose(yaw=45.0)),
            ],
            derive=_snowman_neck,
        ),
        Family(
            "table",
            ("coffee table", "dining table", "desk"),
            "a table top on legs or a pedestal",
            ("top", "legs"),
            _table,
            {"top_z": 0.15, "top_t": 0.025, "top_hx": 0.45, "top_hy": 0.3, "round_top": 0.0, "leg_bottom": -0.4,
             "legs_on": 1.0, "leg_x": 0.39, "leg_y": 0.24, "leg_r": 0.03, "pedestal_on": 0.0, "column_r": 0.05,
             "foot_r": 0.2},
            [
                VariantSpec("wooden_dining", "rectangular wooden table on four legs", {},
                            {"top": (0.62, 0.4, 0.2), "legs": (0.42, 0.26, 0.12)}),
                VariantSpec("round_cafe", "round teal top on a black pedestal",
                            {"round_top": 1.0, "top_hx": 0.38, "top_z": 0.2, "legs_on": 0.0, "pedestal_on": 1.0},
                            {"top": (0.12, 0.62, 0.68), "legs": (0.1, 0.1, 0.1)}),
                VariantSpec("low_coffee", "low wide red coffee table, thick black legs, turned",
                            {"top_z": -0.12, "top_t": 0.04, "top_hx": 0.55, "top_hy": 0.33, "leg_bottom": -0.38,
                             "leg_x": 0.48, "leg_y": 0.26, "leg_r": 0.05},
                            {"top": (0.8, 0.15, 0.12), "legs": (0.08, 0.08, 0.08)},
                            Pose(yaw=35.0)),
            ],
        ),
        Family(
            "mug",
            ("cup", "teacup", "tea cup", "coffee cup", "coffee mug", "tankard"),
            "a hollow cup with a handle and a drink inside",
            ("body", "handle", "drink", "saucer"),
            _mug,
            {"body_r": 0.2, "body_h": 0.22, "body_z": -0.05, "wall": 0.025, "fill": 0.8, "handle_R": 0.11,
             "handle_r": 0.025, "handle_z": -0.05, "saucer_on": 0.0, "saucer_r": 0.36, "saucer_t": 0.015},
            [
                VariantSpec("red_coffee", "red mug of coffee", {},
                            {"body": (0.8, 0.12, 0.12), "handle": (0.8, 0.12, 0.12), "drink": (0.3, 0.17, 0.08),
                             "saucer": (0.9, 0.9, 0.9)}),
                VariantSpec("blue_teacup", "wide low blue teacup of tea on a saucer",
                            {"body_r": 0.24, "body_h": 0.12, "body_z": -0.1, "handle_R": 0.07, "handle_r": 0.02,
                             "handle_z": -0.1, "saucer_on": 1.0},
                            {"body": (0.2, 0.35, 0.8), "handle": (0.2, 0.35, 0.8), "drink": (0.75, 0.45, 0.15),
                             "saucer": (0.92, 0.9, 0.82)}),
                VariantSpec("green_travel", "tall narrow green mug, yellow handle on the other side",
                            {"body_r": 0.14, "body_h": 0.33, "body_z": 0.0, "handle_R": 0.1, "handle_z": 0.05,
                             "fill": 0.9},
                            {"body": (0.15, 0.55, 0.3), "handle": (0.95, 0.8, 0.2), "drink": (0.95, 0.88, 0.75),
                             "saucer": (0.9, 0.9, 0.9)},
                            Pose(yaw=180.0)),
            ],
        ),
        Family(
            "lamp",
            ("desk lamp", "floor lamp", "table lamp", "lampshade", "lantern"),
            "a base, a pole and a shade",
            ("base", "pole", "shade"),
            _lamp,
            {"base_z": -0.55, "base_r": 0.16, "base_h": 0.025, "elbow_x": 0.0, "elbow_z": 0.0, "head_x": 0.0,
             "head_z": 0.38, "pole_r": 0.02, "shade_h": 0.12, "shade_r_bottom": 0.2, "shade_r_top": 0.16,
             "shade_pitch": 0.0},
            [
                VariantSpec("floor", "tall floor lamp with a yellow drum shade", {},
                            {"base": (0.2, 0.2, 0.2), "pole": (0.2, 0.2, 0.2), "shade": (0.98, 0.85, 0.3)}),
                VariantSpec("desk", "bent-arm desk lamp, green cone shade tilted forward",
                            {"base_z": -0.4, "base_r": 0.14, "base_h": 0.03, "elbow_x": -0.15, "elbow_z": -0.05,
                             "head_x": 0.12, "head_z": 0.22, "shade_h": 0.09, "shade_r_bottom": 0.14,
                             "shade_r_top": 0.04, "shade_pitch": -40.0},
                            {"base": (0.5, 0.5, 0.55), "pole": (0.5, 0.5, 0.55), "shade": (0.1, 0.55, 0.25)}),
                VariantSpec("table", "round blue ceramic base under a wide orange shade",
                            {"base_z": -0.32, "base_r": 0.17, "base_h": 0.2, "elbow_z": -0.05, "head_z": 0.16,
                             "shade_h": 0.14, "shade_r_bottom": 0.3, "shade_r_top": 0.22},
                            {"base": (0.15, 0.3, 0.75), "pole": (0.7, 0.6, 0.3), "shade": (0.98, 0.62, 0.3)}),
            ],
        ),
        Family(
            "rocket",
            ("rocketship", "rocket ship", "spaceship", "space ship", "spacecraft", "missile"),
            "a cylindrical body, nose cone, fins and a window",
            ("body", "nose", "fins", "window"),
            _rocket,
            {"body_r": 0.12, "body_bottom": -0.38, "body_top": 0.2, "nose_h": 0.22, "fin_count": 4.0,
             "fin_phase": 45.0, "fin_len": 0.13, "fin_h": 0.2, "fin_t": 0.015, "window_r": 0.05, "window_z": 0.06},
            [
                VariantSpec("classic", "grey body, red nose and four red fins", {},
                            {"body": (0.8, 0.82, 0.86), "nose": (0.85, 0.1, 0.1), "fins": (0.85, 0.1, 0.1),
                             "window": (0.2, 0.5, 0.9)}),
                VariantSpec("tall_silver", "tall thin dark-silver rocket, yellow nose, three fins",
                            {"body_r": 0.085, "body_bottom": -0.5, "body_top": 0.3, "nose_h": 0.22,
                             "fin_count": 3.0, "fin_phase": 60.0, "fin_len": 0.1, "fin_h": 0.24, "window_r": 0.04,
                             "window_z": 0.15},
                            {"body": (0.5, 0.52, 0.58), "nose": (0.95, 0.8, 0.1), "fins": (0.15, 0.15, 0.2),
                             "window": (0.1, 0.8, 0.8)}),
                VariantSpec("stubby_orange", "short fat orange rocket, black nose, green fins, leaning",
                            {"body_r": 0.17, "body_bottom": -0.3, "body_top": 0.08, "nose_h": 0.2,
                             "fin_count": 5.0, "fin_phase": 36.0, "fin_len": 0.12, "fin_h": 0.16, "window_r": 0.06,
                             "window_z": -0.05},
                            {"body": (0.95, 0.5, 0.1), "nose": (0.1, 0.1, 0.1), "fins": (0.2, 0.7, 0.3),
                             "window": (0.95, 0.95, 0.95)},
                            Pose(roll=25.0)),
            ],
        ),
        Family(
            "tree",
            ("pine", "pine tree", "fir", "oak", "maple", "christmas tree", "conifer"),
            "a trunk under cone layers or a round crown",
            ("trunk", "foliage"),
            _tree,
            {"trunk_bottom": -0.55, "trunk_top": -0.1, "trunk_r": 0.05, "pine_on": 1.0, "cone_z": -0.15,
             "cone_h": 0.2, "cone_r": 0.36, "layer_step": 0.2, "crown_on": 0.0, "crown_z": 0.15, "crown_rx": 0.32,
             "crown_rz": 0.3, "blobs_on": 1.0, "blob_r": 0.16},
            [
                VariantSpec("pine", "dark green pine of three cone layers", {},
                            {"trunk": (0.45, 0.28, 0.12), "foliage": (0.08, 0.38, 0.15)}),
                VariantSpec("oak", "round light-green crown on a thick trunk",
                            {"pine_on": 0.0, "crown_on": 1.0, "trunk_r": 0.07, "trunk_top": 0.05},
                            {"trunk": (0.45, 0.28, 0.12), "foliage": (0.4, 0.72, 0.2)}),
                VariantSpec("autumn", "wide flat orange crown, dark trunk, leaning",
                            {"pine_on": 0.0, "crown_on": 1.0, "trunk_r": 0.06, "trunk_top": 0.1, "crown_z": 0.22,
                             "crown_rx": 0.42, "crown_rz": 0.2, "blobs_on": 0.0},
                            {"trunk": (0.28, 0.16, 0.08), "foliage": (0.95, 0.5, 0.1)},
                            Pose(pitch=12.0)),
            ],
        ),
        Family(
            "chair",
            ("stool", "armchair", "seat", "bar stool"),
            "a seat on four legs, usually with a back",
            ("seat", "legs", "back"),
            _chair,
            {"seat_z": -0.05, "seat_hx": 0.22, "seat_hy": 0.22, "seat_t": 0.03, "round_seat": 0.0,
             "leg_bottom": -0.5, "leg_inset": 0.03, "leg_r": 0.025, "back_on": 1.0, "back_h": 0.45, "back_t": 0.03,
             "back_recline": 8.0},
            [
                VariantSpec("wooden", "wooden chair with a tall back", {},
                            {"seat": (0.62, 0.4, 0.2), "legs": (0.45, 0.28, 0.12), "back": (0.62, 0.4, 0.2)}),
                VariantSpec("bar_stool", "tall red round stool, black legs, no back",
                            {"round_seat": 1.0, "seat_hx": 0.17, "seat_z": 0.2, "seat_t": 0.04, "back_on": 0.0},
                            {"seat": (0.85, 0.12, 0.12), "legs": (0.12, 0.12, 0.12), "back": (0.85, 0.12, 0.12)}),
                VariantSpec("lounge", "low wide blue lounge chair with a reclined back, turned",
                            {"seat_z": -0.22, "seat_hx": 0.27, "seat_hy": 0.28, "seat_t": 0.06, "leg_bottom": -0.45,
                             "leg_r": 0.03, "back_h": 0.5, "back_t": 0.05, "back_recline": 25.0},
                            {"seat": (0.15, 0.3, 0.75), "legs": (0.8, 0.65, 0.4), "back": (0.15, 0.3, 0.75)},
                            Pose(yaw=40.0)),
            ],
        ),
        Family(
            "house",
            ("cottage", "cabin", "hut", "barn", "townhouse", "building"),
            "walls under a gable roof with a door, windows and a chimney",
            ("walls", "roof", "door", "windows", "chimney"),
            _house,
            {"wall_hx": 0.3, "wall_hy": 0.35, "wall_h": 0.35, "base_z": -0.4, "roof_h": 0.25, "overhang": 0.04,
             "door_w": 0.07, "door_h": 0.18, "chimney_on": 1.0},
            [
                VariantSpec("cottage", "cream cottage with a red roof and a chimney", {},
                            {"walls": (0.95, 0.84, 0.58), "roof": (0.75, 0.15, 0.1), "door": (0.4, 0.22, 0.1),
                             "windows": (0.3, 0.6, 0.9), "chimney": (0.5, 0.5, 0.5)}),
                VariantSpec("townhouse", "tall narrow blue townhouse, dark roof, yellow door",
                            {"wall_hx": 0.22, "wall_hy": 0.22, "wall_h": 0.62, "base_z": -0.5, "roof_h": 0.18,
                             "chimney_on": 0.0},
                            {"walls": (0.3, 0.45, 0.8), "roof": (0.22, 0.22, 0.27), "door": (0.95, 0.8, 0.2),
                             "windows": (0.95, 0.95, 0.7), "chimney": (0.5, 0.5, 0.5)}),
                VariantSpec("barn", "long low red barn with a green roof, side-on",
                            {"wall_hx": 0.28, "wall_hy": 0.46, "wall_h": 0.3, "base_z": -0.35, "roof_h": 0.22,
                             "door_w": 0.1, "door_h": 0.2, "chimney_on": 0.0},
                            {"walls": (0.7, 0.12, 0.1), "roof": (0.2, 0.5, 0.3), "door": (0.95, 0.95, 0.88),
                             "windows": (0.95, 0.95, 0.88), "chimney": (0.5, 0.5, 0.5)},
                            Pose(yaw=90.0)),
            ],
        ),
    ]
    return {f.name: f for f in fams}


CATALOGUE: dict[str, Family] = _build_catalogue()


# -- prompt matching ---------------------------------------------------------------------------
_VIEW_SUFFIX = re.compile(r",\s*(front|side|back|overhead)\s+view\s*$")
_WORD = re.compile(r"[a-z]+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _forms(word: str) -> set[str]:
    """A word and its plausible singulars ("cups" -> cup, "boxes" -> box, "berries" -> berry)."""
    forms = {word}
    if word.endswith("ies") and len(word) > 4:
        forms.add(word[:-3] + "y")
    if word.endswith("es") and len(word) > 3:
        forms.add(word[:-2])
    if word.endswith("s") and len(word) > 3:
        forms.add(word[:-1])
    return forms


def strip_view_suffix(prompt: str) -> str:
    """``"a mug, side view"`` -> ``"a mug"`` (the trainer's view-dependent suffixes)."""
    return _VIEW_SUFFIX.sub("", prompt.strip().lower()).strip()


def find_family(prompt: str, catalogue: Mapping[str, Family] | None = None) -> Family | None:
    """The family a prompt names, or None.

    Case, punctuation, articles, adjectives and view suffixes are ignored; a family matches when
    its name or one of its synonyms appears as a word (or phrase; plurals accepted). When several
    match, the longest phrase wins ("a table lamp" is a lamp), then the earliest ("a lamp on a table").
    """
    catalogue = CATALOGUE if catalogue is None else catalogue
    words = [_forms(w) for w in _words(strip_view_suffix(prompt))]
    best: tuple[int, int] | None = None
    found: Family | None = None
    for family in catalogue.values():
        for keyword in family.keywords:
            kw = _words(keyword)
            n = len(kw)
            for start in range(len(words) - n + 1):
                if all(kw[j] in words[start + j] for j in range(n)):
                    rank = (-n, start)
                    if best is None or rank < best:
                        best, found = rank, family
    return found


def match_family(prompt: str, catalogue: Mapping[str, Family] | None = None, prior: str = "oracle") -> Family:
    """:func:`find_family`, raising :class:`Msd3dError` (naming ``prior`` and listing the families) when
    nothing matches."""
    catalogue = CATALOGUE if catalogue is None else catalogue
    family = find_family(prompt, catalogue)
    if family is None:
        known = "; ".join(f"{f.name} ({', '.join(f.synonyms)})" for f in catalogue.values())
        raise Msd3dError(
            f"the {prior} prior has no shape for prompt {prompt!r}; name one of its families: {known}"
        )
    return family


def list_catalogue(catalogue: Mapping[str, Family] | None = None) -> list[dict]:
    """Plain data for a CLI listing: one dict per family with ``name`` (also under ``family``),
    ``description``, ``synonyms`` and ``variants`` (each ``{"name", "description"}``)."""
    catalogue = CATALOGUE if catalogue is None else catalogue
    return [
        {
            "name": f.name,
            "family": f.name,
            "description": f.description,
            "synonyms": list(f.synonyms),
            "variants": [{"name": v.name, "description": v.description} for v in f.variants],
        }
        for f in catalogue.values()
    ]
