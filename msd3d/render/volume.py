"""Volume rendering of a radiance field with nerfacc 0.5.3.

Two sampling paths feed the same field, shading and compositing (``nerfacc.rendering``):

* **Batched (CPU; CUDA with the grid off)**: every ray that hits the scene box gets
  ``samples_per_ray`` equal intervals between its entry and exit (clipped to ``[near, far]``); the field
  is queried at one point per interval, jittered inside it when training with ``stratified``. nerfacc's
  batched ``rendering()`` is pure PyTorch, so this runs anywhere. With the occupancy grid on, samples
  in empty cells are not queried (density 0): on 2 CPU cores this cuts the field work about 3x for
  the initial density blob.
* **Packed (CUDA with the grid on)**: ``nerfacc.OccGridEstimator`` marches rays with a fixed
  ``render_step_size`` and skips cells its occupancy grid marks empty; samples are packed with
  ``ray_indices``. nerfacc's CUDA kernels (compiled on first use) are needed.

Either way the grid is refreshed every ``grid_update_interval`` steps by
:meth:`VolumeRenderer.update_occupancy` (the trainer calls it every step) and a fresh grid is filled
once before its first use: an empty grid yields no samples and no gradient (docs/design.md §6).

Conventions: rays come from :meth:`Cameras.rays` (unit directions), ``depth`` is the expected distance
along the ray (not camera z) over the opacity, ``normals`` is the weight-summed unit sample normals
(length = opacity where the surface is sharp), and ``rgb`` is composited over the background.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import nerfacc
import torch
from torch import Tensor, nn

from msd3d.render.cameras import Cameras
from msd3d.render.shading import ShadingConfig, default_light_positions, needs_light, needs_normals, shade
from msd3d.scene.background import Background
from msd3d.scene.base import RadianceField
from msd3d.scene.nerf import FieldSample

GRID_MODES = ("auto", "true", "false")
RAY_BOUNDS = ("aabb", "near_far")


@torch.no_grad()
def _update_grid(
    estimator: nerfacc.OccGridEstimator,
    step: int,
    occ_eval_fn: Callable[[Tensor], Tensor],
    occ_thre: float,
    ema_decay: float,
    warmup_steps: int,
) -> None:
    """nerfacc's ``OccGridEstimator._update``, made deterministic.

    After the warm-up nerfacc samples random cells plus occupied ones, so a cell can appear twice;
    its ``occs[ids] = max(occs[ids] * decay, occ)`` then keeps whichever duplicate write lands last,
    which varies between runs on a multi-threaded CPU. Here duplicates are combined with a
    scatter-max (the order of a max does not matter), the update nerfacc's own comment intends.
    The random draws are nerfacc's, in the same order.
    """
    if step < warmup_steps:
        lvl_indices = estimator._get_all_cells()
    else:
        lvl_indices = estimator._sample_uniform_and_occupied_cells(estimator.cells_per_lvl // 4)
    for lvl, indices in enumerate(lvl_indices):
        grid_coords = estimator.grid_coords[indices]
        x = (grid_coords + torch.rand_like(grid_coords, dtype=torch.float32)) / estimator.resolution
        x = estimator.aabbs[lvl, :3] + x * (estimator.aabbs[lvl, 3:] - estimator.aabbs[lvl, :3])
        occ = occ_eval_fn(x).squeeze(-1)
        cell_ids = lvl * estimator.cells_per_lvl + indices
        updated = torch.maximum(estimator.occs[cell_ids] * ema_decay, occ)
        estimator.occs.scatter_reduce_(0, cell_ids, updated, reduce="amax", include_self=False)
    thre = torch.clamp(estimator.occs[estimator.occs >= 0].mean(), max=occ_thre)
    estimator.binaries = (estimator.occs > thre).view(estimator.binaries.shape)


@dataclass
class RenderConfig:
    resolution: int = 64
    """Training render size (H = W) that the trainer asks its cameras for; at most 1024."""
    eval_resolution: int = 128
    """Size of evaluation renders (turntables, previews); at most 2048."""
    samples_per_ray: int = 48
    """Batched path: samples per ray between the ray's entry and exit of the scene box; at most 1024."""
    ray_bounds: str = "aabb"
    """"aabb": sample where the ray is inside [-bound, bound]^3 (and [near, far]); "near_far": [near, far]."""
    near: float = 0.05
    """Closest distance along a ray that is sampled."""
    far: float = 10.0
    """Farthest distance along a ray that is sampled."""
    stratified: bool = True
    """Jitter the samples when training (batched: per sample; packed: per ray, as nerfacc)."""
    use_occupancy_grid: str = "auto"
    """"auto"/"true": skip empty space with an occupancy grid (CUDA: nerfacc packed marching; CPU: the
    batched samples in empty cells are not queried); "false": query every sample."""
    grid_resolution: int = 32
    """Cells per axis of the occupancy grid over the scene box; at most 512."""
    grid_update_interval: int = 16
    """Training steps between occupancy-grid refreshes."""
    grid_warmup_steps: int = 256
    """Before this step every refresh evaluates all cells (nerfacc's warm-up); afterwards a random quarter."""
    occupancy_threshold: float = 0.01
    """A cell is occupied when density * render_step_size exceeds this (or the mean occupancy, if lower)."""
    grid_ema_decay: float = 0.95
    """Exponential moving average of the cell densities between grid refreshes."""
    render_step_size: float | None = None
    """Packed path: march step in world units; None = 2 * sqrt(3) * bound / 512 (threestudio)."""
    eval_chunk_rays: int = 8192
    """Rays per chunk in :meth:`VolumeRenderer.render_image`."""

    def validate(self) -> None:
        if self.resolution < 1 or self.eval_resolution < 1:
            raise ValueError("render.resolution and render.eval_resolution must be at least 1")
        if self.resolution > 1024:
            raise ValueError(f"render.resolution must be at most 1024, got {self.resolution}")
        if self.eval_resolution > 2048:
            raise ValueError(f"render.eval_resolution must be at most 2048, got {self.eval_resolution}")
        if self.samples_per_ray < 1:
            raise ValueError("render.samples_per_ray must be at least 1")
        if self.samples_per_ray > 1024:
            raise ValueError(f"render.samples_per_ray must be at most 1024, got {self.samples_per_ray}")
        if self.ray_bounds not in RAY_BOUNDS:
            raise ValueError(f"render.ray_bounds must be one of {', '.join(RAY_BOUNDS)}, got {self.ray_bounds!r}")
        if not 0 <= self.near < self.far:
            raise ValueError("render.near and render.far must satisfy 0 <= near < far")
        if _grid_mode(self.use_occupancy_grid) not in GRID_MODES:
            raise ValueError(f"render.use_occupancy_grid must be auto, true or false, got {self.use_occupancy_grid!r}")
        if self.grid_resolution < 1:
            raise ValueError("render.grid_resolution must be at least 1")
        if self.grid_resolution > 512:
            raise ValueError(f"render.grid_resolution must be at most 512, got {self.grid_resolution}")
        if self.grid_update_interval < 1:
            raise ValueError("render.grid_update_interval must be at least 1")
        if self.grid_warmup_steps < 0:
            raise ValueError("render.grid_warmup_steps must be non-negative")
        if self.occupancy_threshold < 0:
            raise ValueError("render.occupancy_threshold must be non-negative")
        if not 0 <= self.grid_ema_decay <= 1:
            raise ValueError("render.grid_ema_decay must lie in [0, 1]")
        if self.render_step_size is not None and self.render_step_size <= 0:
            raise ValueError("render.render_step_size must be positive (or null for the default)")
        if self.eval_chunk_rays < 1:
            raise ValueError("render.eval_chunk_rays must be at least 1")


def _grid_mode(value: object) -> str:
    """Normalise use_occupancy_grid (YAML may hand over a bool) to "auto" / "true" / "false"."""
    text = str(value).strip().lower()
    return {"1": "true", "yes": "true", "on": "true", "0": "false", "no": "false", "off": "false"}.get(text, text)


@dataclass
class RenderOutput:
    """One batch of rendered views plus the per-sample quantities the regularisers need.

    Per-sample tensors are flat over all M samples of all rays; ``ray_indices`` maps each sample to
    its ray in the row-major flattening of (B, H, W).
    """

    rgb: Tensor  # (B, H, W, 3) composited over the background
    opacity: Tensor  # (B, H, W, 1)
    depth: Tensor  # (B, H, W, 1) expected distance along the ray, 0 where opacity is 0
    normals: Tensor | None  # (B, H, W, 3) weighted world-space normals; None unless computed
    background: Tensor  # (B, H, W, 3)
    weights: Tensor  # (M,) rendering weights
    ray_indices: Tensor  # (M,) long
    ray_directions: Tensor  # (B*H*W, 3) unit
    sample_normals: Tensor | None  # (M, 3) unit; None unless computed
    shading: str = "albedo"

    @property
    def num_samples(self) -> int:
        return int(self.weights.shape[0])

    @property
    def sample_directions(self) -> Tensor:
        """(M, 3) the direction of each sample's ray."""
        return self.ray_directions[self.ray_indices]

    def image(self) -> Tensor:
        """rgb as (B, 3, H, W), the layout a prior takes."""
        return self.rgb.permute(0, 3, 1, 2)


@dataclass
class _RayResult:
    rgb: Tensor  # (R, 3) foreground only
    opacity: Tensor  # (R, 1)
    depth: Tensor  # (R, 1)
    normals: Tensor | None  # (R, 3)
    weights: Tensor  # (M,)
    ray_indices: Tensor  # (M,)
    sample_normals: Tensor | None  # (M, 3)


def query_field(field: RadianceField, points: Tensor, with_normals: bool) -> FieldSample:
    """Density (N,), albedo (N, 3) and optionally unit outward normals (N, 3) of any field at (N, 3).

    Uses the field's fused ``query`` when it has one; otherwise ``density``/``albedo`` and normals
    ``-grad(density)`` by autograd (differentiable when grad mode is on).
    """
    query = getattr(field, "query", None)
    if callable(query):
        return query(points, with_normals=with_normals)
    density, albedo = field.density(points), field.albedo(points)
    normals = None
    if with_normals:
        normals_fn = getattr(field, "normals", None)
        normals = normals_fn(points) if callable(normals_fn) else autograd_normals(field, points)
    return FieldSample(density, albedo, normals)


def autograd_normals(field: RadianceField, points: Tensor) -> Tensor:
    """-grad(density)/|grad(density)| (N, 3) at points (N, 3), differentiable when grad mode is on."""
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        pts = points.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(field.density(pts).sum(), pts, create_graph=create_graph)
    return torch.nn.functional.normalize(-grad, dim=-1, eps=1e-12)


def ray_aabb(rays_o: Tensor, rays_d: Tensor, bound: float) -> tuple[Tensor, Tensor]:
    """Entry and exit distances (R,), (R,) of rays with the box [-bound, bound]^3; exit <= entry on a miss."""
    safe_d = torch.where(rays_d.abs() < 1e-9, torch.full_like(rays_d, 1e-9), rays_d)
    t1 = (-bound - rays_o) / safe_d
    t2 = (bound - rays_o) / safe_d
    t_enter = torch.minimum(t1, t2).amax(dim=-1)
    t_exit = torch.maximum(t1, t2).amin(dim=-1)
    return t_enter, t_exit


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


class VolumeRenderer(nn.Module):
    """Renders a radiance field and a background from a batch of cameras."""

    def __init__(
        self,
        field: RadianceField,
        background: Background | None = None,
        config: RenderConfig | None = None,
        shading: ShadingConfig | None = None,
    ) -> None:
        super().__init__()
        self.config = config or RenderConfig()
        self.config.validate()
        self.shading_config = shading or ShadingConfig()
        self.shading_config.validate()
        self.field = field
        self.background = background if background is not None else Background()
        self.bound = float(field.bound)
        self.render_step_size = (
            float(self.config.render_step_size)
            if self.config.render_step_size is not None
            else 2.0 * math.sqrt(3.0) * self.bound / 512.0
        )
        self.estimator: nerfacc.OccGridEstimator | None = None
        if _grid_mode(self.config.use_occupancy_grid) != "false":
            b = self.bound
            self.estimator = nerfacc.OccGridEstimator(
                roi_aabb=[-b, -b, -b, b, b, b], resolution=self.config.grid_resolution, levels=1
            )
        # whether the occupancy grid has been filled at least once (saved with checkpoints)
        self.register_buffer("grid_ready", torch.zeros((), dtype=torch.bool))

    # ----------------------------------------------------------------------------------------------
    # occupancy grid
    def uses_occupancy_grid(self) -> bool:
        """Whether rays skip empty space with the occupancy grid.

        On CUDA the grid drives nerfacc's packed marching; on CPU it masks the batched samples (the
        field is only queried at samples in occupied cells).
        """
        return self.estimator is not None

    def _packed(self, device: torch.device) -> bool:
        return device.type == "cuda" and self.uses_occupancy_grid()

    def _grid_step_size(self, device: torch.device) -> float:
        """Step that turns density into occupancy (alpha ~ density * step) on this path."""
        if self._packed(device):
            return self.render_step_size
        # batched path: the longest chord through the box over the samples per ray (conservative)
        return 2.0 * math.sqrt(3.0) * self.bound / self.config.samples_per_ray

    @torch.no_grad()
    def update_occupancy(self, step: int, force: bool = False) -> bool:
        """Refresh the occupancy grid at training ``step`` if it is due; returns whether it ran.

        Due every ``grid_update_interval`` steps, and always while the grid has never been filled.
        Before ``grid_warmup_steps`` every cell is evaluated, afterwards a random quarter plus the
        occupied ones (nerfacc). A no-op when the occupancy grid is off.
        """
        if not self.uses_occupancy_grid():
            return False
        due = force or not bool(self.grid_ready) or step % self.config.grid_update_interval == 0
        if not due:
            return False
        assert self.estimator is not None
        step_size = self._grid_step_size(self.grid_ready.device)
        _update_grid(
            self.estimator,
            step=step,
            occ_eval_fn=lambda x: self.field.density(x) * step_size,
            occ_thre=self.config.occupancy_threshold,
            ema_decay=self.config.grid_ema_decay,
            warmup_steps=self.config.grid_warmup_steps,
        )
        # nerfacc marks cells above min(mean occupancy, threshold) *strictly*, which leaves a field of
        # uniform density with no occupied cell at all: also keep every cell at or above the threshold
        occs = self.estimator.occs
        self.estimator.binaries |= (occs >= self.config.occupancy_threshold).view(self.estimator.binaries.shape)
        self.grid_ready.fill_(True)
        return True

    def _ensure_grid_ready(self) -> None:
        """Fill a fresh grid once (all cells) so the first render is not empty."""
        if not bool(self.grid_ready):
            self.update_occupancy(step=0, force=True)

    def occupied_fraction(self) -> float:
        """Share of occupancy-grid cells marked occupied (1.0 when no grid is used)."""
        if self.estimator is None or not bool(self.grid_ready):
            return 1.0
        return float(self.estimator.binaries.float().mean())

    def _occupied(self, points: Tensor) -> Tensor:
        """Whether each point (N, 3) lies in an occupied grid cell: (N,) bool."""
        assert self.estimator is not None
        binaries = self.estimator.binaries[0]  # (rx, ry, rz)
        res = torch.tensor(binaries.shape, device=points.device)
        cell = ((points / self.bound + 1.0) * 0.5 * res).long()
        inside = ((cell >= 0) & (cell < res)).all(dim=-1)
        cell = torch.minimum(cell.clamp_min(0), res - 1)
        flat = (cell[:, 0] * res[1] + cell[:, 1]) * res[2] + cell[:, 2]
        return binaries.reshape(-1)[flat] & inside

    # ----------------------------------------------------------------------------------------------
    # rendering
    def forward(
        self,
        cameras: Cameras,
        shading: str = "albedo",
        light_positions: Tensor | None = None,
        generator: torch.Generator | None = None,
        with_normals: bool | None = None,
    ) -> RenderOutput:
        """Render B views (with gradients).

        Args:
            cameras: B cameras on the renderer's device.
            shading: "albedo", "lambertian", "textureless" or "normal".
            light_positions: (B, 3) point lights for lit shading; default: at each camera.
            generator: drives the stratified jitter and random background colours.
            with_normals: compute normals even when the shading does not need them (for the
                orientation loss); default: only when the shading needs them.
        """
        want_normals = needs_normals(shading) or bool(with_normals)
        stratified = self.training and self.config.stratified
        return self._render(cameras, shading, light_positions, generator, want_normals, stratified, None)

    @torch.no_grad()
    def render_image(
        self,
        cameras: Cameras,
        shading: str = "albedo",
        light_positions: Tensor | None = None,
        chunk_rays: int | None = None,
        with_normals: bool = False,
    ) -> RenderOutput:
        """Evaluation render without gradients, in chunks of rays (any resolution).

        No jitter, fixed background colour; per-sample tensors are left empty to save memory.
        """
        want_normals = needs_normals(shading) or with_normals
        chunk = chunk_rays or self.config.eval_chunk_rays
        return self._render(cameras, shading, light_positions, None, want_normals, False, chunk)

    def _render(
        self,
        cameras: Cameras,
        shading: str,
        light_positions: Tensor | None,
        generator: torch.Generator | None,
        want_normals: bool,
        stratified: bool,
        chunk: int | None,
    ) -> RenderOutput:
        b, h, w = len(cameras), cameras.height, cameras.width
        origins, directions = cameras.rays()  # (B, H, W, 3)
        rays_o, rays_d = origins.reshape(-1, 3), directions.reshape(-1, 3)
        n_rays = rays_o.shape[0]
        randomize_bg = None if chunk is None else False
        background = self.background(directions, generator=generator, randomize=randomize_bg)  # (B, H, W, 3)

        ray_lights = None
        if needs_light(shading):
            if light_positions is None:
                light_positions = default_light_positions(cameras)
            ray_lights = light_positions.to(rays_o).repeat_interleave(h * w, dim=0)  # (R, 3)

        if chunk is None:
            result = self._render_rays(rays_o, rays_d, ray_lights, shading, want_normals, stratified, generator)
        else:
            parts = [
                self._render_rays(
                    rays_o[i : i + chunk],
                    rays_d[i : i + chunk],
                    None if ray_lights is None else ray_lights[i : i + chunk],
                    shading,
                    want_normals,
                    False,
                    None,
                )
                for i in range(0, n_rays, chunk)
            ]
            empty = rays_o.new_zeros(0)
            result = _RayResult(
                rgb=torch.cat([p.rgb for p in parts]),
                opacity=torch.cat([p.opacity for p in parts]),
                depth=torch.cat([p.depth for p in parts]),
                normals=torch.cat([p.normals for p in parts]) if want_normals else None,  # type: ignore[misc]
                weights=empty,
                ray_indices=empty.long(),
                sample_normals=None,
            )

        bg_flat = background.reshape(-1, 3)
        rgb = result.rgb + bg_flat * (1.0 - result.opacity)
        return RenderOutput(
            rgb=rgb.view(b, h, w, 3),
            opacity=result.opacity.view(b, h, w, 1),
            depth=result.depth.view(b, h, w, 1),
            normals=None if result.normals is None else result.normals.view(b, h, w, 3),
            background=background,
            weights=result.weights,
            ray_indices=result.ray_indices,
            ray_directions=rays_d,
            sample_normals=result.sample_normals,
            shading=shading,
        )

    def _render_rays(
        self,
        rays_o: Tensor,
        rays_d: Tensor,
        ray_lights: Tensor | None,
        shading: str,
        want_normals: bool,
        stratified: bool,
        generator: torch.Generator | None,
    ) -> _RayResult:
        if self._packed(rays_o.device):
            return self._render_rays_packed(rays_o, rays_d, ray_lights, shading, want_normals, stratified, generator)
        return self._render_rays_batched(rays_o, rays_d, ray_lights, shading, want_normals, stratified, generator)

    def _shade_samples(
        self, positions: Tensor, sample_lights: Tensor | None, shading: str, want_normals: bool
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Colours (N, 3), densities (N,) and normals (N, 3) or None at sample positions (N, 3)."""
        sample = query_field(self.field, positions, want_normals)
        colors = shade(
            shading,
            sample.albedo,
            sample.normals,
            positions,
            sample_lights,
            ambient_ratio=self.shading_config.ambient_ratio,
        )
        return colors, sample.density, sample.normals

    def _ray_bounds(self, rays_o: Tensor, rays_d: Tensor) -> tuple[Tensor, Tensor]:
        c = self.config
        if c.ray_bounds == "near_far":
            return torch.full_like(rays_o[:, 0], c.near), torch.full_like(rays_o[:, 0], c.far)
        t_enter, t_exit = ray_aabb(rays_o, rays_d, self.bound)
        return t_enter.clamp_min(c.near), t_exit.clamp_max(c.far)

    def _render_rays_batched(
        self,
        rays_o: Tensor,
        rays_d: Tensor,
        ray_lights: Tensor | None,
        shading: str,
        want_normals: bool,
        stratified: bool,
        generator: torch.Generator | None,
    ) -> _RayResult:
        n_rays, device = rays_o.shape[0], rays_o.device
        s = self.config.samples_per_ray
        t_near, t_far = self._ray_bounds(rays_o, rays_d)
        hit = torch.nonzero(t_far > t_near).squeeze(-1)  # rays that cross the scene box
        o, d = rays_o[hit], rays_d[hit]
        n_hit = hit.shape[0]
        if n_hit == 0:  # nothing to march: transparent everywhere
            zeros = rays_o.new_zeros
            return _RayResult(
                rgb=zeros(n_rays, 3),
                opacity=zeros(n_rays, 1),
                depth=zeros(n_rays, 1),
                normals=zeros(n_rays, 3) if want_normals else None,
                weights=zeros(0),
                ray_indices=hit,
                sample_normals=zeros(0, 3) if want_normals else None,
            )

        fractions = torch.linspace(0.0, 1.0, s + 1, device=device)
        t_near_h, length = t_near[hit, None], (t_far - t_near)[hit, None]
        t_starts = t_near_h + length * fractions[:-1]  # (n_hit, S)
        t_ends = t_near_h + length * fractions[1:]
        u = _uniform((n_hit, s), generator, device) if stratified else torch.full((n_hit, s), 0.5, device=device)
        t_points = t_starts + u * (t_ends - t_starts)
        positions = (o[:, None, :] + t_points[..., None] * d[:, None, :]).reshape(-1, 3)  # (n_hit * S, 3)
        lights = None if ray_lights is None else ray_lights[hit].repeat_interleave(s, dim=0)
        sample_rays = hit.repeat_interleave(s)  # (n_hit * S,)

        # skip empty space: query the field only at samples in occupied cells (all samples without a grid)
        keep: Tensor | None = None
        if self.uses_occupancy_grid():
            self._ensure_grid_ready()
            keep = torch.nonzero(self._occupied(positions)).squeeze(-1)
        store: dict[str, Tensor | None] = {"normals": None}

        def rgb_sigma_fn(t0: Tensor, t1: Tensor, ray_indices: Tensor | None) -> tuple[Tensor, Tensor]:
            if keep is None:
                colors, density, normals = self._shade_samples(positions, lights, shading, want_normals)
                store["normals"] = normals
                return colors.view(n_hit, s, 3), density.view(n_hit, s)
            n = positions.shape[0]
            if keep.numel() == 0:  # every sample in empty space
                store["normals"] = positions.new_zeros(0, 3) if want_normals else None
                return positions.new_zeros(n_hit, s, 3), positions.new_zeros(n_hit, s)
            kept_lights = None if lights is None else lights[keep]
            colors_k, density_k, normals_k = self._shade_samples(positions[keep], kept_lights, shading, want_normals)
            store["normals"] = normals_k
            colors = colors_k.new_zeros(n, 3).index_copy(0, keep, colors_k)
            density = density_k.new_zeros(n).index_copy(0, keep, density_k)
            return colors.view(n_hit, s, 3), density.view(n_hit, s)

        rgb_h, opacity_h, depth_h, extras = nerfacc.rendering(t_starts, t_ends, rgb_sigma_fn=rgb_sigma_fn)
        weights = extras["weights"].reshape(-1)  # (n_hit * S,)
        sample_normals = store["normals"]
        if keep is not None:  # per-sample outputs only where the field was queried
            weights, sample_rays = weights[keep], sample_rays[keep]
        normals_h = None
        if sample_normals is not None:
            normals_h = nerfacc.accumulate_along_rays(weights, sample_normals, ray_indices=sample_rays, n_rays=n_rays)

        def scatter(values: Tensor) -> Tensor:
            full = values.new_zeros(n_rays, values.shape[-1])
            return full.index_copy(0, hit, values)

        return _RayResult(
            rgb=scatter(rgb_h),
            opacity=scatter(opacity_h),
            depth=scatter(depth_h),
            normals=normals_h,
            weights=weights,
            ray_indices=sample_rays,
            sample_normals=sample_normals,
        )

    def _render_rays_packed(
        self,
        rays_o: Tensor,
        rays_d: Tensor,
        ray_lights: Tensor | None,
        shading: str,
        want_normals: bool,
        stratified: bool,
        generator: torch.Generator | None,
    ) -> _RayResult:
        assert self.estimator is not None
        self._ensure_grid_ready()
        n_rays, device = rays_o.shape[0], rays_o.device
        c = self.config
        t_min = None
        if stratified:  # nerfacc's per-ray jitter of the first sample, drawn from our generator
            t_min = c.near + _uniform((n_rays,), generator, device) * self.render_step_size
        ray_indices, t_starts, t_ends = self.estimator.sampling(
            rays_o.contiguous(),
            rays_d.contiguous(),
            near_plane=c.near,
            far_plane=c.far,
            t_min=t_min,
            render_step_size=self.render_step_size,
            stratified=False,
            alpha_thre=0.0,
            early_stop_eps=0.0,
        )
        ray_indices = ray_indices.long()
        store: dict[str, Tensor | None] = {"normals": None}

        def rgb_sigma_fn(t0: Tensor, t1: Tensor, ri: Tensor) -> tuple[Tensor, Tensor]:
            positions = rays_o[ri] + (0.5 * (t0 + t1))[:, None] * rays_d[ri]
            lights = None if ray_lights is None else ray_lights[ri]
            colors, density, normals = self._shade_samples(positions, lights, shading, want_normals)
            store["normals"] = normals
            return colors, density

        rgb, opacity, depth, extras = nerfacc.rendering(
            t_starts, t_ends, ray_indices=ray_indices, n_rays=n_rays, rgb_sigma_fn=rgb_sigma_fn
        )
        weights = extras["weights"]
        sample_normals = store["normals"]
        if want_normals and sample_normals is None:  # no samples at all
            sample_normals = rays_o.new_zeros(0, 3)
        normals = None
        if sample_normals is not None:
            normals = nerfacc.accumulate_along_rays(weights, sample_normals, ray_indices=ray_indices, n_rays=n_rays)
        return _RayResult(rgb, opacity, depth, normals, weights, ray_indices, sample_normals)
