"""Shading of NeRF samples (DreamFusion / threestudio ``DiffuseWithPointLightMaterial``).

Modes, per sample with albedo ``a``, unit normal ``n``, position ``p`` and point light at ``l``:

* ``"albedo"``: ``a`` (no lighting);
* ``"lambertian"``: ``a * (ambient + (1 - ambient) * max(0, n . (l - p)/|l - p|))``;
* ``"textureless"``: the lambertian shading of a white albedo, so only geometry is visible;
* ``"normal"``: ``(n + 1) / 2``, the normals as colours (visualisation).

DreamFusion's training recipe: render albedo only for a warm-up period, then pick each step's mode
at random (albedo with probability ``1 - lit_prob``; otherwise textureless with probability
``textureless_prob``, else lambertian), with the light placed around the camera.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from msd3d.render.cameras import Cameras
from msd3d.rng import draw_device, rand, randn

SHADING_MODES = ("albedo", "lambertian", "textureless", "normal")


@dataclass
class ShadingConfig:
    ambient_ratio: float = 0.1
    """Share of ambient light in lit modes (threestudio: ambient 0.1, diffuse 0.9)."""
    light_distance_range: tuple[float, float] = (0.8, 1.5)
    """Distance of the point light from the origin (threestudio dreamfusion)."""
    light_position_perturb: float = 1.0
    """Std of the Gaussian added to the camera position before taking the light's direction."""
    albedo_only_steps: int = 1000
    """Steps at the start that render albedo only (threestudio's ambient_only_steps)."""
    lit_prob: float = 0.75
    """After the warm-up, the probability of a lit step (threestudio's diffuse_prob)."""
    textureless_prob: float = 0.5
    """Among lit steps, the probability of textureless rather than lambertian shading."""

    def validate(self) -> None:
        if not 0.0 <= self.ambient_ratio <= 1.0:
            raise ValueError("shading.ambient_ratio must lie in [0, 1]")
        lo, hi = self.light_distance_range
        if not 0 < lo <= hi:
            raise ValueError("shading.light_distance_range must be [low, high] with 0 < low <= high")
        if self.light_position_perturb < 0:
            raise ValueError("shading.light_position_perturb must be non-negative")
        if self.albedo_only_steps < 0:
            raise ValueError("shading.albedo_only_steps must be non-negative")
        for name in ("lit_prob", "textureless_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"shading.{name} must lie in [0, 1]")


def needs_normals(mode: str) -> bool:
    """Whether shading ``mode`` uses normals."""
    if mode not in SHADING_MODES:
        raise ValueError(f"unknown shading {mode!r}; choose one of {', '.join(SHADING_MODES)}")
    return mode != "albedo"


def needs_light(mode: str) -> bool:
    """Whether shading ``mode`` uses a light position."""
    return mode in ("lambertian", "textureless")


def sample_light_positions(
    cameras: Cameras, config: ShadingConfig | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """(B, 3) point lights near each camera: ``normalize(camera + perturb * N(0, I)) * distance``.

    threestudio's "dreamfusion" light sampling; the distance is uniform in ``light_distance_range``.
    """
    config = config or ShadingConfig()
    b = len(cameras)
    noise = randn((b, 3), generator, draw_device(generator, "cpu")).to(cameras.device)
    lo, hi = config.light_distance_range
    distance = (lo + (hi - lo) * rand((b,), generator, draw_device(generator, "cpu"))).to(cameras.device)
    direction = F.normalize(cameras.positions + config.light_position_perturb * noise, dim=-1)
    return direction * distance[:, None]


def default_light_positions(cameras: Cameras, distance: float | None = None) -> Tensor:
    """(B, 3) lights at each camera's position (scaled to ``distance`` from the origin): for evaluation."""
    positions = cameras.positions
    if distance is None:
        return positions.clone()
    return F.normalize(positions, dim=-1) * distance


def choose_shading(step: int, config: ShadingConfig | None = None, generator: torch.Generator | None = None) -> str:
    """The shading mode of training ``step``: albedo during the warm-up, then a random mix.

    Always draws two uniforms after the warm-up, so the generator's stream does not depend on the
    outcome.
    """
    config = config or ShadingConfig()
    if step < config.albedo_only_steps:
        return "albedo"
    u_lit, u_textureless = rand((2,), generator, draw_device(generator, "cpu")).tolist()
    if u_lit >= config.lit_prob:
        return "albedo"
    return "textureless" if u_textureless < config.textureless_prob else "lambertian"


def shade(
    mode: str,
    albedo: Tensor,
    normals: Tensor | None = None,
    points: Tensor | None = None,
    light_positions: Tensor | None = None,
    ambient_ratio: float = 0.1,
) -> Tensor:
    """Sample colours (N, 3) from albedo (N, 3), unit normals (N, 3), positions (N, 3), lights (N, 3)."""
    if mode == "albedo":
        return albedo
    if normals is None:
        raise ValueError(f"shading {mode!r} needs normals")
    if mode == "normal":
        return 0.5 * (normals + 1.0)
    if mode not in ("lambertian", "textureless"):
        raise ValueError(f"unknown shading {mode!r}; choose one of {', '.join(SHADING_MODES)}")
    if points is None or light_positions is None:
        raise ValueError(f"shading {mode!r} needs sample positions and light positions")
    light_dirs = F.normalize(light_positions - points, dim=-1)
    diffuse = (normals * light_dirs).sum(-1, keepdim=True).clamp_min(0.0)
    light = ambient_ratio + (1.0 - ambient_ratio) * diffuse  # (N, 1)
    if mode == "textureless":
        return light.expand(-1, 3)
    return albedo * light
