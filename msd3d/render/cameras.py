"""Cameras: random orbits for training, turntables for evaluation, view-dependent prompts.

Conventions (shared by the renderer, the oracle prior and the exporters):

* World space is right-handed with **+z up**; the object sits at the origin inside ``[-bound, bound]^3``.
* A camera at elevation ``e``, azimuth ``a`` (degrees) and distance ``d`` sits at
  ``d * (cos e cos a, cos e sin a, sin e)`` and looks at the origin. Azimuth 0 (camera on +x) is the
  **front** of the object, as in threestudio.
* ``c2w`` is camera-to-world in the OpenGL convention: camera x right, y up, looking down -z.
* Images are (B, H, W, C) while rendering and (B, C, H, W) when handed to a prior.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from msd3d.rng import draw_device, rand


@dataclass
class Cameras:
    """A batch of B pinhole cameras sharing one image size."""

    c2w: Tensor  # (B, 4, 4)
    fovy: Tensor  # (B,) vertical field of view, radians
    height: int
    width: int
    elevation: Tensor  # (B,) degrees
    azimuth: Tensor  # (B,) degrees, in [-180, 180)
    distance: Tensor  # (B,)

    def __len__(self) -> int:
        return self.c2w.shape[0]

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    @property
    def positions(self) -> Tensor:
        """(B, 3) camera centres in world space."""
        return self.c2w[:, :3, 3]

    def to(self, device: torch.device | str) -> Cameras:
        return Cameras(
            c2w=self.c2w.to(device),
            fovy=self.fovy.to(device),
            height=self.height,
            width=self.width,
            elevation=self.elevation.to(device),
            azimuth=self.azimuth.to(device),
            distance=self.distance.to(device),
        )

    def __getitem__(self, index: int | slice | Tensor) -> Cameras:
        if isinstance(index, int):
            index = slice(index, index + 1)
        return Cameras(
            c2w=self.c2w[index],
            fovy=self.fovy[index],
            height=self.height,
            width=self.width,
            elevation=self.elevation[index],
            azimuth=self.azimuth[index],
            distance=self.distance[index],
        )

    def with_resolution(self, height: int, width: int | None = None) -> Cameras:
        """The same cameras rendering a different image size (field of view unchanged)."""
        return Cameras(self.c2w, self.fovy, height, width or height, self.elevation, self.azimuth, self.distance)

    @staticmethod
    def cat(batches: Sequence[Cameras]) -> Cameras:
        """Several batches of cameras of one image size as one batch (in order)."""
        sizes = {(c.height, c.width) for c in batches}
        if len(sizes) != 1:
            raise ValueError(f"cannot concatenate cameras of different image sizes {sorted(sizes)}")
        (height, width), = sizes
        return Cameras(
            c2w=torch.cat([c.c2w for c in batches]),
            fovy=torch.cat([c.fovy for c in batches]),
            height=height,
            width=width,
            elevation=torch.cat([c.elevation for c in batches]),
            azimuth=torch.cat([c.azimuth for c in batches]),
            distance=torch.cat([c.distance for c in batches]),
        )

    def rays(self) -> tuple[Tensor, Tensor]:
        """Ray origins and unit directions through pixel centres: each (B, H, W, 3)."""
        b, h, w = len(self), self.height, self.width
        device = self.device
        focal = 0.5 * h / torch.tan(0.5 * self.fovy)  # (B,) pixels
        j, i = torch.meshgrid(
            torch.arange(h, device=device, dtype=torch.float32) + 0.5,
            torch.arange(w, device=device, dtype=torch.float32) + 0.5,
            indexing="ij",
        )
        dirs_cam = torch.stack(
            [
                (i[None] - 0.5 * w) / focal[:, None, None],
                -(j[None] - 0.5 * h) / focal[:, None, None],
                -torch.ones(b, h, w, device=device),
            ],
            dim=-1,
        )  # (B, H, W, 3)
        dirs = torch.einsum("bij,bhwj->bhwi", self.c2w[:, :3, :3], dirs_cam)
        dirs = dirs / dirs.norm(dim=-1, keepdim=True)
        origins = self.positions[:, None, None, :].expand_as(dirs)
        return origins, dirs


def look_at(positions: Tensor, target: Tensor | None = None, up: Tensor | None = None) -> Tensor:
    """Camera-to-world matrices (B, 4, 4) for cameras at ``positions`` (B, 3) looking at ``target``."""
    b = positions.shape[0]
    target = torch.zeros(3, device=positions.device) if target is None else target
    up = torch.tensor([0.0, 0.0, 1.0], device=positions.device) if up is None else up
    forward = target - positions
    forward = forward / forward.norm(dim=-1, keepdim=True)
    right = torch.linalg.cross(forward, up.expand_as(forward))
    # straight up/down views: fall back to +y as the up reference
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    alt = torch.linalg.cross(forward, torch.tensor([0.0, 1.0, 0.0], device=positions.device).expand_as(forward))
    right = torch.where(degenerate, alt, right)
    right = right / right.norm(dim=-1, keepdim=True)
    cam_up = torch.linalg.cross(right, forward)
    c2w = torch.eye(4, device=positions.device).repeat(b, 1, 1)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = cam_up
    c2w[:, :3, 2] = -forward
    c2w[:, :3, 3] = positions
    return c2w


def orbit_cameras(
    elevation: Tensor,
    azimuth: Tensor,
    distance: Tensor,
    fovy_deg: Tensor,
    height: int,
    width: int | None = None,
    target: Tensor | None = None,
) -> Cameras:
    """Cameras on a sphere around ``target`` (default the origin) looking at it; angles in degrees,
    all tensors (B,); ``target`` (3,)."""
    e, a = torch.deg2rad(elevation), torch.deg2rad(azimuth)
    positions = distance[:, None] * torch.stack(
        [torch.cos(e) * torch.cos(a), torch.cos(e) * torch.sin(a), torch.sin(e)], dim=-1
    )
    if target is not None:
        positions = positions + target.to(positions)
    azimuth = (azimuth + 180.0) % 360.0 - 180.0
    return Cameras(
        c2w=look_at(positions, None if target is None else target.to(positions)),
        fovy=torch.deg2rad(fovy_deg),
        height=height,
        width=width or height,
        elevation=elevation,
        azimuth=azimuth,
        distance=distance,
    )


@dataclass
class CameraConfig:
    """Random training views (threestudio's dreamfusion defaults) and the evaluation turntable."""

    elevation_range: tuple[float, float] = (-10.0, 45.0)
    """Training camera elevation, degrees above the horizon [low, high], within [-90, 90]."""
    azimuth_range: tuple[float, float] = (-180.0, 180.0)
    """Training camera azimuth, degrees (0 = front, on +x)."""
    distance_range: tuple[float, float] = (1.5, 2.0)
    """Training camera distance from the origin (world units)."""
    fovy_range: tuple[float, float] = (40.0, 70.0)
    """Training vertical field of view, degrees."""
    batch_size: int = 1
    """Views per optimisation step; at most 64."""
    eval_elevation: float = 15.0
    """Elevation of validation and scoring turntables, degrees (-90 to 90)."""
    eval_distance: float = 1.75
    """Distance of validation and scoring turntables."""
    eval_fovy: float = 55.0
    """Field of view of validation and scoring turntables, degrees."""
    front_threshold: float = 45.0
    """|azimuth| below this is the front view."""
    back_threshold: float = 45.0
    """|azimuth| above 180 - this is the back view."""
    overhead_threshold: float = 60.0
    """Elevation above this is the overhead view."""

    def validate(self) -> None:
        for name in ("elevation_range", "azimuth_range", "distance_range", "fovy_range"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"camera.{name} must be [low, high] with low <= high, got [{lo}, {hi}]")
        for name, values in (("elevation_range", self.elevation_range), ("eval_elevation", [self.eval_elevation])):
            if not all(-90 <= v <= 90 for v in values):
                raise ValueError(f"camera.{name} must lie in [-90, 90] degrees, got {self.__dict__[name]}")
        if self.distance_range[0] <= 0:
            raise ValueError("camera.distance_range must be positive")
        if not (0 < self.fovy_range[0] and self.fovy_range[1] < 180):
            raise ValueError("camera.fovy_range must lie in (0, 180) degrees")
        if self.batch_size < 1:
            raise ValueError("camera.batch_size must be at least 1")
        if self.batch_size > 64:
            raise ValueError(f"camera.batch_size must be at most 64, got {self.batch_size}")


def _uniform(lo: float, hi: float, n: int, generator: torch.Generator | None) -> Tensor:
    return lo + (hi - lo) * rand(n, generator, draw_device(generator, "cpu"))


def sample_cameras(
    config: CameraConfig, height: int, width: int | None = None, generator: torch.Generator | None = None
) -> Cameras:
    """``config.batch_size`` random orbit cameras (on the CPU; move them with ``.to``)."""
    n = config.batch_size
    elevation = _uniform(*config.elevation_range, n, generator)
    azimuth = _uniform(*config.azimuth_range, n, generator)
    distance = _uniform(*config.distance_range, n, generator)
    fovy = _uniform(*config.fovy_range, n, generator)
    return orbit_cameras(elevation, azimuth, distance, fovy, height, width)


def turntable_cameras(
    n: int,
    height: int,
    width: int | None = None,
    elevation: float = 15.0,
    distance: float = 1.75,
    fovy: float = 55.0,
    start_azimuth: float = 0.0,
    target: tuple[float, float, float] | None = None,
) -> Cameras:
    """``n`` views evenly spaced in azimuth (a full circle), starting from the front, circling
    ``target`` (default the origin) at ``distance`` from it."""
    azimuth = start_azimuth + torch.arange(n, dtype=torch.float32) * (360.0 / n)
    full = lambda v: torch.full((n,), float(v))  # noqa: E731
    centre = None if target is None else torch.tensor(target, dtype=torch.float32)
    return orbit_cameras(full(elevation), azimuth, full(distance), full(fovy), height, width, target=centre)


def frame_points(
    points: Tensor,
    elevation: float,
    fovy: float,
    fill: float,
    azimuths: Tensor,
    min_distance: float = 0.05,
) -> tuple[float, tuple[float, float, float]]:
    """Camera distance and target that make ``points`` fill ``fill`` of a square frame.

    points: (P, 3) world points of the object (e.g. its occupied cells); azimuths: (N,) degrees of
    the turntable's views. The target is the centre of the points' bounding box; the distance is the
    smallest for which every point projects inside ``fill`` of the half-frame (in both image axes)
    in every view, so the object's widest view spans ``fill`` of the frame. Returns
    ``(distance, (x, y, z))``.
    """
    points = points.detach().float().cpu()
    lo, hi = points.min(dim=0).values, points.max(dim=0).values
    centre = 0.5 * (lo + hi)
    rel = points - centre  # (P, 3)
    e = torch.deg2rad(torch.tensor(float(elevation)))
    a = torch.deg2rad(azimuths.float().cpu())  # (N,)
    # camera frame per view (as look_at builds it): forward from camera to target, right, up
    back = torch.stack([torch.cos(e) * torch.cos(a), torch.cos(e) * torch.sin(a), torch.sin(e).expand_as(a)], -1)
    right = torch.stack([-torch.sin(a), torch.cos(a), torch.zeros_like(a)], -1)  # (N, 3) = forward x up_z
    up = torch.linalg.cross(back, right)  # (N, 3): right x forward with forward = -back
    x = rel @ right.T  # (P, N) coordinates in the camera frame, relative to the target
    y = rel @ up.T
    z = rel @ back.T  # towards the camera
    tan_half = math.tan(math.radians(fovy) / 2.0) * fill
    # a point projects inside the frame at distance d when max(|x|, |y|) <= (d - z) * tan_half
    needed = z + torch.maximum(x.abs(), y.abs()) / tan_half  # (P, N)
    near = z + 1e-3  # the camera must also stay in front of every point
    distance = float(torch.maximum(needed, near).max())
    return max(distance, min_distance), (float(centre[0]), float(centre[1]), float(centre[2]))


VIEW_NAMES = ("front", "side", "back", "overhead")


def view_name(elevation: float, azimuth: float, config: CameraConfig | None = None) -> str:
    """"front", "side", "back" or "overhead" for one camera (DreamFusion's view-dependent prompting)."""
    config = config or CameraConfig()
    if elevation > config.overhead_threshold:
        return "overhead"
    a = abs((azimuth + 180.0) % 360.0 - 180.0)
    if a < config.front_threshold:
        return "front"
    if a > 180.0 - config.back_threshold:
        return "back"
    return "side"


def view_prompts(prompt: str, cameras: Cameras, config: CameraConfig | None = None) -> list[str]:
    """One prompt per camera with DreamFusion's suffix: ``"<prompt>, front view"`` etc."""
    return [
        f"{prompt}, {view_name(float(e), float(a), config)} view"
        for e, a in zip(cameras.elevation.tolist(), cameras.azimuth.tolist())
    ]


def ray_box(origins: Tensor, dirs: Tensor, bound: float) -> tuple[Tensor, Tensor, Tensor]:
    """Entry/exit distances of rays (M, 3) through the box ``[-bound, bound]^3`` and whether they
    cross it: (t_near (M,), t_far (M,), crosses (M,) bool)."""
    safe = torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0 = (-bound - origins) / safe
    t1 = (bound - origins) / safe
    t_near = torch.minimum(t0, t1).amax(-1).clamp_min(0.0)
    t_far = torch.maximum(t0, t1).amin(-1)
    return t_near, t_far, t_far > t_near
