"""Volume rendering, shading and regularisers, checked against closed forms on analytic fields."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from msd3d.render.cameras import Cameras, orbit_cameras
from msd3d.render.regularisers import (
    RegulariserConfig,
    WeightSchedule,
    opacity_entropy_loss,
    opacity_sparsity_loss,
    orientation_loss,
    regulariser_losses,
)
from msd3d.render.shading import ShadingConfig, choose_shading, sample_light_positions, shade
from msd3d.render.volume import RenderConfig, VolumeRenderer, ray_aabb
from msd3d.scene.background import Background, BackgroundConfig
from msd3d.scene.nerf import NeRFConfig, NeRFField

ALBEDO = (0.9, 0.3, 0.1)
BG = (0.2, 0.4, 0.6)


class AnalyticField(nn.Module):
    """A RadianceField with a closed-form density and a constant albedo (no fused query)."""

    def __init__(self, density_fn, bound: float = 1.0, normals_fn=None) -> None:
        super().__init__()
        self.density_fn = density_fn
        self.bound = bound
        if normals_fn is not None:
            self.normals = normals_fn

    def density(self, points: Tensor) -> Tensor:
        inside = (points.abs() <= self.bound).all(dim=-1)
        return torch.where(inside, self.density_fn(points), torch.zeros_like(points[..., 0]))

    def albedo(self, points: Tensor) -> Tensor:
        return torch.tensor(ALBEDO, device=points.device).expand(*points.shape[:-1], 3)


def sphere_density(radius: float = 0.5, sigma: float = 100.0, sharpness: float | None = None):
    """Hard (indicator) or smooth (sigmoid of the signed distance) ball density."""

    def fn(p: Tensor) -> Tensor:
        r = p.norm(dim=-1)
        if sharpness is None:
            return torch.where(r < radius, torch.full_like(r, sigma), torch.zeros_like(r))
        return sigma * torch.sigmoid(sharpness * (radius - r))

    return fn


def renderer(field, samples: int = 64, grid: str = "false", bg=BG, **kwargs) -> VolumeRenderer:
    config = RenderConfig(samples_per_ray=samples, use_occupancy_grid=grid, **kwargs)
    return VolumeRenderer(field, Background(BackgroundConfig(type="solid", color=bg)), config)


def camera(elevation=0.0, azimuth=0.0, distance=2.0, fovy=40.0, size=9) -> Cameras:
    t = lambda v: torch.tensor([float(v)])  # noqa: E731
    return orbit_cameras(t(elevation), t(azimuth), t(distance), t(fovy), size)


def chord_lengths(origins: Tensor, dirs: Tensor, inside, t_max: float = 6.0, n: int = 6000) -> Tensor:
    """Length of each ray inside a region, by brute-force counting along the ray (independent of ray_aabb)."""
    t = (torch.arange(n, dtype=torch.float64) + 0.5) * (t_max / n)
    pts = origins.double()[..., None, :] + t[:, None] * dirs.double()[..., None, :]
    return inside(pts).double().sum(-1) * (t_max / n)


# --------------------------------------------------------------------------------------------------
# closed forms
@pytest.mark.parametrize("training", [False, True])
def test_constant_density_opacity_is_beer_lambert_along_the_chord(training):
    sigma = 1.3
    field = AnalyticField(lambda p: torch.full_like(p[..., 0], sigma))
    r = renderer(field, samples=16)
    r.train(training)
    cams = camera(elevation=20.0, azimuth=30.0, distance=3.0, fovy=50.0, size=7)
    out = r(cams, generator=torch.Generator().manual_seed(0))
    origins, dirs = cams.rays()
    length = chord_lengths(origins[0], dirs[0], lambda x: (x.abs() <= 1.0).all(-1))
    expected = 1.0 - torch.exp(-sigma * length)
    assert length.max() > 2.0  # rays do cross the box obliquely
    assert torch.allclose(out.opacity[0, ..., 0].double(), expected, atol=2e-3)
    # centre pixel of the elevation-0 camera: the chord is exactly the box width 2
    out_c = renderer(field, samples=16)(camera(distance=3.0, size=5))
    assert abs(float(out_c.opacity[0, 2, 2, 0]) - (1 - math.exp(-2 * sigma))) < 1e-5


def test_sphere_renders_a_disc_of_the_projected_radius():
    size, fovy, distance, radius = 33, 40.0, 2.0, 0.5
    r = renderer(AnalyticField(sphere_density(radius, sigma=200.0)), samples=128)
    out = r(camera(distance=distance, fovy=fovy, size=size))
    focal = 0.5 * size / math.tan(math.radians(fovy) / 2)
    disc_px = focal * math.tan(math.asin(radius / distance))
    j, i = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    rho = torch.sqrt((i - size / 2) ** 2 + (j - size / 2) ** 2)
    opacity = out.opacity[0, ..., 0]
    assert torch.all(opacity[rho < disc_px - 1.0] > 0.99)
    assert torch.all(opacity[rho > disc_px + 1.0] == 0)
    area = float((opacity > 0.5).sum())
    assert abs(area - math.pi * disc_px**2) / (math.pi * disc_px**2) < 0.06


def test_depth_of_a_thin_opaque_slab_is_its_distance():
    centre, half = 0.2, 0.03  # slab x in [0.17, 0.23], facing the camera on +x
    field = AnalyticField(lambda p: torch.where((p[..., 0] - centre).abs() < half, 500.0, 0.0))
    distance = 2.5
    cams = camera(distance=distance, fovy=40.0, size=9)
    out = renderer(field, samples=256)(cams)
    _, dirs = cams.rays()
    expected = (distance - (centre + half)) / (-dirs[0, ..., 0])  # distance along each ray to the slab face
    assert torch.all(out.opacity > 0.99)
    spacing = 2 * math.sqrt(3) / 256
    assert (out.depth[0, ..., 0] - expected).abs().max() < spacing


def test_background_shows_where_opacity_is_zero():
    r = renderer(AnalyticField(sphere_density(0.5, sigma=200.0)), samples=64)
    out = r(camera(size=15))
    empty = out.opacity[..., 0] == 0
    full = out.opacity[..., 0] > 0.999
    assert empty.any() and full.any()
    assert torch.allclose(out.rgb[empty], torch.tensor(BG).expand(int(empty.sum()), 3))
    assert torch.allclose(out.rgb[full], torch.tensor(ALBEDO).expand(int(full.sum()), 3), atol=1e-3)
    assert torch.allclose(out.background, torch.tensor(BG).expand(1, 15, 15, 3))
    assert torch.all(out.depth[empty] == 0)


def test_rays_that_miss_the_box_see_only_the_background():
    r = renderer(AnalyticField(sphere_density(0.5)), samples=16)
    cams = camera(distance=2.0, size=4)
    cams.c2w[:, :3, :3] = -cams.c2w[:, :3, :3]  # turn the camera away from the scene
    cams.c2w[:, :3, 0] = -cams.c2w[:, :3, 0]  # keep it right-handed
    out = r(cams)
    assert torch.equal(out.opacity, torch.zeros(1, 4, 4, 1))
    assert torch.allclose(out.rgb, torch.tensor(BG).expand(1, 4, 4, 3))
    assert out.num_samples == 0


def test_ray_aabb_entry_and_exit():
    o = torch.tensor([[3.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    d = torch.nn.functional.normalize(torch.tensor([[-1.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), dim=-1)
    t0, t1 = ray_aabb(o, d, 1.0)
    assert torch.allclose(t0[0], torch.tensor(2.0)) and torch.allclose(t1[0], torch.tensor(4.0))
    assert t1[1] <= t0[1]  # misses: enters x in [2, 4] only when y is already beyond 1
    assert torch.allclose(t0[2], torch.tensor(-1.0)) and torch.allclose(t1[2], torch.tensor(1.0))


def test_rendered_normals_of_a_sphere_point_outward():
    radius, distance, size, fovy = 0.5, 2.0, 17, 40.0
    field = AnalyticField(sphere_density(radius, sigma=300.0, sharpness=60.0))  # normals by autograd
    cams = camera(distance=distance, fovy=fovy, size=size)
    out = renderer(field, samples=128)(cams, with_normals=True)
    origins, dirs = cams.rays()
    # analytic first hit of each ray with the sphere, and the outward normal there
    b = (origins[0] * dirs[0]).sum(-1)
    disc = b**2 - (origins[0].pow(2).sum(-1) - radius**2)
    hit = disc > 0.05  # well inside the silhouette
    t = -b - torch.sqrt(disc.clamp_min(0))
    expected = torch.nn.functional.normalize(origins[0] + t[..., None] * dirs[0], dim=-1)
    normals = torch.nn.functional.normalize(out.normals[0], dim=-1)
    cos = (normals * expected).sum(-1)[hit]
    assert hit.sum() > 20 and cos.min() > 0.98
    assert torch.allclose(out.normals[0, size // 2, size // 2], torch.tensor([1.0, 0.0, 0.0]), atol=0.02)


# --------------------------------------------------------------------------------------------------
# the NeRF through the renderer
def small_field(**kwargs) -> NeRFField:
    return NeRFField(NeRFConfig(resolutions=(8, 16), features=4, hidden_dim=16, **kwargs))


@pytest.mark.parametrize(
    ("shading", "grid", "normals"),
    [
        ("albedo", "false", "analytic"),
        ("albedo", "auto", "analytic"),
        ("lambertian", "auto", "analytic"),
        ("textureless", "false", "finite_difference"),
    ],
)
def test_gradients_flow_from_rgb_to_field_and_background(shading, grid, normals):
    torch.manual_seed(0)
    field = small_field(normals=normals)
    config = RenderConfig(samples_per_ray=16, use_occupancy_grid=grid)
    r = VolumeRenderer(field, Background(BackgroundConfig(type="mlp")), config)
    r.train()
    out = r(camera(size=8), shading=shading, generator=torch.Generator().manual_seed(0))
    assert out.rgb.shape == (1, 8, 8, 3) and out.image().shape == (1, 3, 8, 8)
    out.rgb.square().mean().backward()
    for name, p in r.named_parameters():
        if name.startswith("field.albedo_mlp") and shading == "textureless":
            continue  # textureless shading ignores the albedo
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert float(field.encoding.planes[1].grad.abs().sum()) > 0
    assert float(field.density_mlp[0].weight.grad.abs().sum()) > 0
    if shading != "textureless":
        assert float(field.albedo_mlp[0].weight.grad.abs().sum()) > 0


def test_occupancy_grid_masking_on_cpu_matches_full_sampling():
    torch.manual_seed(0)
    field = small_field()
    full = renderer(field, samples=32, grid="false").eval()
    masked = renderer(field, samples=32, grid="auto").eval()
    assert not bool(masked.grid_ready)
    cams = camera(elevation=15.0, azimuth=40.0, size=12)
    a, b = full(cams, with_normals=True), masked(cams, with_normals=True)
    assert bool(masked.grid_ready)  # a fresh grid is filled before its first use
    assert 0.0 < masked.occupied_fraction() < 0.5  # the blob occupies the middle of the box
    assert b.num_samples < 0.6 * a.num_samples
    # skipping drops only the faint halo of the blob, whose cells are below the occupancy threshold
    assert (a.opacity - b.opacity).abs().max() < 0.06 and (a.opacity - b.opacity).abs().mean() < 0.02
    core = b.opacity[..., 0] > 0.5
    assert core.any() and (a.normals - b.normals)[core].abs().max() < 0.05
    # exactly: the masked render is the full render of the density restricted to occupied cells
    restricted = AnalyticField(lambda p: field.density(p) * masked._occupied(p.reshape(-1, 3)).view(p.shape[:-1]))
    restricted.albedo = field.albedo
    c = renderer(restricted, samples=32, grid="false").eval()(cams)
    assert torch.allclose(b.opacity, c.opacity, atol=1e-5) and torch.allclose(b.rgb, c.rgb, atol=1e-5)


def test_occupancy_grid_updates_on_schedule_and_keeps_uniform_fields():
    field = AnalyticField(lambda p: torch.full_like(p[..., 0], 5.0))
    r = renderer(field, samples=16, grid="auto", grid_update_interval=4, grid_resolution=8)
    assert r.update_occupancy(step=3)  # never filled: runs regardless of the step
    assert r.occupied_fraction() == 1.0  # a uniform density above the threshold is occupied everywhere
    assert not r.update_occupancy(step=5)
    assert r.update_occupancy(step=8)
    off = renderer(field, samples=16, grid="false")
    assert not off.uses_occupancy_grid() and not off.update_occupancy(step=0)


def test_render_image_in_chunks_matches_forward():
    torch.manual_seed(0)
    r = VolumeRenderer(small_field(), Background(BackgroundConfig(type="mlp")), RenderConfig(samples_per_ray=16))
    r.eval()
    cams = camera(size=10)
    with torch.no_grad():
        whole = r(cams, shading="lambertian")
    chunked = r.render_image(cams, shading="lambertian", chunk_rays=7)
    assert torch.allclose(whole.rgb, chunked.rgb, atol=1e-5)
    assert torch.allclose(whole.depth, chunked.depth, atol=1e-4)
    assert torch.allclose(whole.normals, chunked.normals, atol=1e-5)
    assert not chunked.rgb.requires_grad


def test_render_image_works_with_analytic_normals():
    field = small_field(normals="analytic")
    r = renderer(field, samples=8)
    out = r.render_image(camera(size=6), shading="normal")
    assert out.rgb.shape == (1, 6, 6, 3) and torch.isfinite(out.rgb).all()


def test_random_solid_background_per_view_in_training():
    field = AnalyticField(lambda p: torch.zeros_like(p[..., 0]))
    r = VolumeRenderer(field, Background(BackgroundConfig(type="random_solid")), RenderConfig(samples_per_ray=4))
    t = lambda *v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    cams = orbit_cameras(t(0.0, 10.0), t(0.0, 90.0), t(2.0, 2.0), t(40.0, 40.0), 4)
    r.train()
    out = r(cams, generator=torch.Generator().manual_seed(1))
    assert (out.rgb[0, 0, 0] - out.rgb[1, 0, 0]).abs().max() > 1e-3
    assert torch.allclose(out.rgb[0], out.rgb[0, 0, 0].expand(4, 4, 3))
    assert torch.allclose(r.render_image(cams).rgb, torch.ones(2, 4, 4, 3))


# --------------------------------------------------------------------------------------------------
# shading
def test_lambertian_and_textureless_shading_of_a_sphere():
    ambient = 0.1
    field = AnalyticField(sphere_density(0.5, sigma=300.0, sharpness=60.0))
    r = VolumeRenderer(
        field,
        Background(BackgroundConfig(type="solid", color=(0.0, 0.0, 0.0))),
        RenderConfig(samples_per_ray=128, use_occupancy_grid="false"),
        ShadingConfig(ambient_ratio=ambient),
    )
    cams = camera(size=9)
    c = 4
    lit = r(cams, shading="lambertian", light_positions=torch.tensor([[3.0, 0.0, 0.0]]))
    plain = r(cams, shading="textureless", light_positions=torch.tensor([[3.0, 0.0, 0.0]]))
    behind = r(cams, shading="lambertian", light_positions=torch.tensor([[-3.0, 0.0, 0.0]]))
    albedo = r(cams, shading="albedo")
    opacity = float(albedo.opacity[0, c, c, 0])
    assert opacity > 0.999
    assert torch.allclose(lit.rgb[0, c, c], torch.tensor(ALBEDO), atol=5e-3)
    assert torch.allclose(plain.rgb[0, c, c], torch.ones(3), atol=5e-3)
    assert torch.allclose(behind.rgb[0, c, c], ambient * torch.tensor(ALBEDO), atol=5e-3)
    # light at the camera (the default): the limb is darker than the centre
    default = r(cams, shading="textureless")
    assert float(default.rgb[0, c, 2, 0].detach()) < float(default.rgb[0, c, c, 0].detach()) - 0.05
    normal = r(cams, shading="normal")
    assert torch.allclose(normal.rgb[0, c, c], torch.tensor([1.0, 0.5, 0.5]), atol=0.02)


def test_shade_closed_forms():
    albedo = torch.tensor([[0.5, 0.2, 1.0]])
    n = torch.tensor([[0.0, 0.0, 1.0]])
    p = torch.zeros(1, 3)
    light = torch.tensor([[0.0, 1.0, 1.0]])  # 45 degrees off the normal
    expected = 0.2 + 0.8 * math.cos(math.pi / 4)
    assert torch.allclose(shade("lambertian", albedo, n, p, light, 0.2), albedo * expected)
    assert torch.allclose(shade("textureless", albedo, n, p, light, 0.2), torch.full((1, 3), expected))
    assert torch.equal(shade("albedo", albedo), albedo)
    with pytest.raises(ValueError, match="normals"):
        shade("lambertian", albedo)


def test_shading_schedule_warms_up_on_albedo_then_mixes():
    config = ShadingConfig(albedo_only_steps=100, lit_prob=0.75, textureless_prob=0.5)
    g = torch.Generator().manual_seed(0)
    assert all(choose_shading(s, config, g) == "albedo" for s in range(100))
    picks = [choose_shading(100 + s, config, g) for s in range(4000)]
    freq = {m: picks.count(m) / len(picks) for m in ("albedo", "lambertian", "textureless")}
    assert abs(freq["albedo"] - 0.25) < 0.03
    assert abs(freq["lambertian"] - 0.375) < 0.03
    assert abs(freq["textureless"] - 0.375) < 0.03
    again = [choose_shading(100 + s, config, torch.Generator().manual_seed(5)) for s in range(3)]
    assert again == [choose_shading(100 + s, config, torch.Generator().manual_seed(5)) for s in range(3)]


def test_light_positions_sit_around_the_camera():
    t = lambda *v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    cams = orbit_cameras(t(0.0, 30.0, 60.0), t(0.0, 100.0, -50.0), t(2.0, 1.5, 1.8), t(40.0, 40.0, 40.0), 4)
    still = sample_light_positions(cams, ShadingConfig(light_position_perturb=0.0), torch.Generator().manual_seed(0))
    cos = torch.nn.functional.cosine_similarity(still, cams.positions, dim=-1)
    assert torch.allclose(cos, torch.ones(3), atol=1e-5)
    config = ShadingConfig(light_distance_range=(0.8, 1.5))
    lights = sample_light_positions(cams, config, torch.Generator().manual_seed(0))
    norms = lights.norm(dim=-1)
    assert torch.all((norms >= 0.8) & (norms <= 1.5))
    cos = torch.nn.functional.cosine_similarity(lights, cams.positions, dim=-1)
    assert torch.all(cos > -1.0) and cos.mean() > 0.3  # perturbed but mostly on the camera's side


# --------------------------------------------------------------------------------------------------
# regularisers
def test_orientation_loss_is_zero_for_outward_normals_and_positive_when_flipped():
    density = sphere_density(0.5, sigma=300.0)  # hard ball; the normals are given in closed form
    outward = AnalyticField(density, normals_fn=lambda p: torch.nn.functional.normalize(p, dim=-1))
    inward = AnalyticField(density, normals_fn=lambda p: -torch.nn.functional.normalize(p, dim=-1))
    cams = camera(size=9)
    loss_out = orientation_loss(renderer(outward, samples=64)(cams, with_normals=True))
    out_in = renderer(inward, samples=64)(cams, with_normals=True)
    loss_in = orientation_loss(out_in)
    assert float(loss_out) < 1e-3
    # flipped: each ray hitting the sphere pays cos^2 of its angle to the surface normal at the hit,
    # averaged over the rays with any opacity (threestudio's normalisation)
    origins, dirs = cams.rays()
    b = (origins[0] * dirs[0]).sum(-1)
    disc = b**2 - (origins[0].pow(2).sum(-1) - 0.25)
    t = -b - torch.sqrt(disc.clamp_min(0))
    n = torch.nn.functional.normalize(origins[0] + t[..., None] * dirs[0], dim=-1)
    cos2 = ((n * dirs[0]).sum(-1) ** 2)[disc > 0]
    expected = cos2.sum() / (out_in.opacity > 0).sum()
    assert float(loss_in) > 0.1
    assert abs(float(loss_in) - float(expected)) < 0.1 * float(expected)


def test_orientation_loss_reaches_the_field_through_normals():
    field = small_field()
    r = renderer(field, samples=16)
    out = r(camera(size=6), with_normals=True)
    loss = orientation_loss(out)
    loss.backward()
    assert float(field.density_mlp[0].weight.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="with_normals"):
        orientation_loss(r(camera(size=4)))


def test_opacity_losses_closed_forms():
    o = torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1)
    assert torch.allclose(opacity_sparsity_loss(o), torch.tensor((0.1 + math.sqrt(0.26) + math.sqrt(1.01)) / 3))
    assert float(opacity_entropy_loss(torch.tensor([0.0, 1.0]))) < 0.01
    assert torch.allclose(opacity_entropy_loss(torch.tensor([0.5])), torch.tensor(math.log(2.0)))


def test_weight_schedule_and_weighted_losses():
    sched = WeightSchedule(start=10.0, end=1000.0, start_step=0, end_step=5000)
    assert sched.value(0) == 10.0 and sched.value(5000) == 1000.0 and sched.value(9000) == 1000.0
    assert math.isclose(sched.value(2500), 505.0)
    assert WeightSchedule(start=3.0).value(123) == 3.0
    assert math.isclose(WeightSchedule(1.0, 100.0, 0, 10, "log_linear").value(5), 10.0)
    step_jump = WeightSchedule(start=0.0, end=2.0, start_step=50, end_step=50)
    assert step_jump.value(49) == 0.0 and step_jump.value(50) == 2.0
    relative = WeightSchedule(start=0.0, end=4.0, start_step=0.5, end_step=1.0, unit="fraction")
    assert relative.value(100, total_steps=400) == 0.0 and math.isclose(relative.value(300, total_steps=400), 2.0)
    with pytest.raises(ValueError, match="total_steps"):
        relative.value(3)
    with pytest.raises(ValueError, match="regularisers.orientation.kind"):
        RegulariserConfig(orientation=WeightSchedule(kind="zigzag")).validate()

    config = RegulariserConfig(
        orientation=WeightSchedule(start=2.0), sparsity=WeightSchedule(start=0.5), opaque=WeightSchedule(start=0.25)
    )
    out = renderer(small_field(), samples=8)(camera(size=5), with_normals=True)
    losses = regulariser_losses(out, config, step=0, total_steps=10)
    assert set(losses) == {"orientation", "sparsity", "opaque"}
    assert torch.allclose(losses["orientation"], 2.0 * orientation_loss(out))
    assert torch.allclose(losses["sparsity"], 0.5 * opacity_sparsity_loss(out.opacity))
    assert torch.allclose(losses["opaque"], 0.25 * opacity_entropy_loss(out.opacity))
    assert RegulariserConfig().needs_normals(0, 100)
    off = RegulariserConfig(orientation=WeightSchedule(0.0), sparsity=WeightSchedule(0.0))
    assert not off.needs_normals(0) and regulariser_losses(out, off, 0) == {}


def test_render_config_validation():
    with pytest.raises(ValueError, match="render.samples_per_ray"):
        RenderConfig(samples_per_ray=0).validate()
    with pytest.raises(ValueError, match="render.use_occupancy_grid"):
        RenderConfig(use_occupancy_grid="sometimes").validate()
    RenderConfig(use_occupancy_grid="False").validate()  # YAML booleans arrive as strings
    with pytest.raises(ValueError, match="shading.ambient_ratio"):
        ShadingConfig(ambient_ratio=1.5).validate()


# --------------------------------------------------------------------------------------------------
# CUDA: nerfacc's packed occupancy-grid path
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_cuda_packed_path_agrees_with_batched_path():
    field = AnalyticField(sphere_density(0.5, sigma=50.0, sharpness=30.0)).cuda()
    # a low threshold keeps the sphere's soft rim in the grid, so only the quadrature differs
    packed = renderer(
        field, samples=256, grid="auto", render_step_size=2 * math.sqrt(3) / 1024, occupancy_threshold=1e-4
    ).cuda().eval()
    batched = renderer(field, samples=256, grid="false").cuda().eval()
    cams = camera(elevation=20.0, azimuth=30.0, size=32).to("cuda")
    a = packed(cams, shading="lambertian")
    b = batched(cams, shading="lambertian")
    assert bool(packed.grid_ready) and packed.occupied_fraction() < 0.5
    assert (a.opacity - b.opacity).abs().mean() < 0.01 and (a.opacity - b.opacity).abs().max() < 0.1
    assert (a.rgb - b.rgb).abs().mean() < 0.01
    mask = (a.opacity > 0.5) & (b.opacity > 0.5)
    assert (a.depth - b.depth)[mask].abs().max() < 0.02


@cuda
def test_cuda_packed_path_trains_the_nerf():
    torch.manual_seed(0)
    field = small_field().cuda()
    r = VolumeRenderer(field, Background(), RenderConfig(samples_per_ray=32)).cuda().train()
    cams = camera(size=16).to("cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    out = r(cams, shading="lambertian", generator=g, with_normals=True)
    assert out.num_samples > 0  # the fresh grid was filled before sampling
    (out.rgb.mean() + orientation_loss(out)).backward()
    assert float(field.encoding.planes[1].grad.abs().sum()) > 0
    assert r.update_occupancy(step=16) and not r.update_occupancy(step=17)
