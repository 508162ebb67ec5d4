"""Mesh, texture and video export against analytic fields with closed-form geometry.

Round-trip notes: trimesh loads are done with ``process=False`` so vertices are neither merged nor
split, and the files must give back exactly the vertex and face counts written. A textured OBJ / GLB
has its vertices already split along UV seams by the exporter, so its counts are compared with the
textured mesh, not with the vertex-coloured one.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from omegaconf import OmegaConf

from msd3d.atomic_io import atomic_path, atomic_paths, atomic_write_files, atomic_write_text
from msd3d.errors import Msd3dError
from msd3d.export.mesh import (
    Y_UP_FROM_Z_UP,
    MeshExportConfig,
    export_mesh,
    export_mesh_files,
    extract_mesh,
    srgb_to_linear_u8,
)
from msd3d.export.texture import rasterize_uv
from msd3d.export.video import VideoConfig, read_video_frames, render_turntable, turntable_cameras_for, write_video
from msd3d.render.cameras import Cameras
from msd3d.scene.base import RadianceField

# ------------------------------------------------------------------------------------------------
# analytic fields


def _albedo(points: torch.Tensor) -> torch.Tensor:
    """A smooth colour that differs along every axis (so turntable frames and axes are distinguishable)."""
    p = points.clamp(-1.0, 1.0)
    return torch.stack([0.5 + 0.45 * p[..., 0], 0.5 + 0.45 * p[..., 1], 0.5 + 0.45 * torch.sin(2.0 * p[..., 2])], -1)


class SpheresField:
    """Union of spheres: density ``peak * sigmoid(-sdf / beta)``.

    The level ``peak / 2`` is exactly the SDF's zero set, so iso-surfaces have closed-form size.
    """

    def __init__(self, spheres, bound=1.0, beta=0.02, peak=100.0):
        self.bound = bound
        self.beta, self.peak = beta, peak
        self.centres = torch.tensor([c for c, _ in spheres], dtype=torch.float32)  # (S, 3)
        self.radii = torch.tensor([r for _, r in spheres], dtype=torch.float32)  # (S,)

    def sdf(self, points: torch.Tensor) -> torch.Tensor:
        d = (points[..., None, :] - self.centres).norm(dim=-1) - self.radii  # (..., S)
        return d.min(dim=-1).values

    def density(self, points: torch.Tensor) -> torch.Tensor:
        return self.peak * torch.sigmoid(-self.sdf(points) / self.beta)

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        return _albedo(points)


class EllipsoidField(torch.nn.Module):
    """An off-centre ellipsoid as an nn.Module (its centre is a buffer): tall along z, so axes are testable."""

    def __init__(self, centre=(0.1, 0.2, 0.3), axes=(0.2, 0.3, 0.55), bound=1.0):
        super().__init__()
        self.bound = bound
        self.register_buffer("centre", torch.tensor(centre))
        self.register_buffer("axes", torch.tensor(axes))

    def density(self, points: torch.Tensor) -> torch.Tensor:
        q = ((points - self.centre) / self.axes).norm(dim=-1)
        return 50.0 * torch.sigmoid((1.0 - q) / 0.05)

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        return _albedo(points)


R = 0.5


def sphere_field(**kwargs) -> SpheresField:
    return SpheresField([((0.0, 0.0, 0.0), R)], **kwargs)


def test_fields_satisfy_the_protocol():
    assert isinstance(sphere_field(), RadianceField)
    assert isinstance(EllipsoidField(), RadianceField)


# ------------------------------------------------------------------------------------------------
# mesh extraction


def test_sphere_mesh_matches_closed_form_area_and_volume():
    field = sphere_field()
    mesh = extract_mesh(field, MeshExportConfig(resolution=64, threshold=field.peak / 2))
    assert mesh.is_watertight
    assert mesh.volume > 0  # outward-facing faces
    assert mesh.area == pytest.approx(4 * math.pi * R**2, rel=0.01)
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * R**3, rel=0.01)
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert np.abs(radii - R).max() < 0.01
    # vertex colours are the field's albedo at the vertices, as uint8 RGBA
    colours = mesh.visual.vertex_colors
    assert colours.dtype == np.uint8 and (colours[:, 3] == 255).all()
    expected = _albedo(torch.tensor(mesh.vertices, dtype=torch.float32)).numpy() * 255
    assert np.abs(colours[:, :3] - expected).max() <= 0.5 + 1e-3
    assert mesh.metadata["msd3d"]["threshold"] == field.peak / 2


class CapAndStemField:
    """A mushroom-like field: a dense ball (peak 50) on a thin rod of lower density (peak 12).

    Across its 0.12 width the rod's optical depth is ~1.4, so it renders clearly opaque (~0.75),
    but its density stays below the old "auto" level of 22.2, which cut it away (issue 8).
    """

    bound = 1.0

    def density(self, points: torch.Tensor) -> torch.Tensor:
        x, y, z = points.unbind(-1)
        ball = (points - torch.tensor([0.0, 0.0, 0.25])).norm(dim=-1) - 0.3
        rod = torch.maximum(torch.sqrt(x * x + y * y) - 0.06, (z + 0.2).abs() - 0.3)
        return 50.0 * torch.sigmoid(-ball / 0.01) + 12.0 * torch.sigmoid(-rod / 0.01)

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        return _albedo(points)


def test_auto_level_keeps_thin_parts_that_render_opaque():
    """Bug (issue 8): the auto level cut away thin, lower-density parts the renders show."""
    mesh = extract_mesh(CapAndStemField(), MeshExportConfig(resolution=64))
    level = mesh.metadata["msd3d"]["threshold"]
    assert level < 12.0  # below the rod's density
    z_lo, z_hi = mesh.bounds[:, 2]
    assert z_lo == pytest.approx(-0.5, abs=0.03)  # the rod is there (the old level gave -0.1: the ball only)
    assert z_hi == pytest.approx(0.55, abs=0.05)
    assert len(mesh.split(only_watertight=False)) == 1 and mesh.is_watertight


@pytest.mark.parametrize("peak", [10.0, 3000.0])
def test_auto_level_meshes_the_silhouette_the_renders_show(peak):
    """Whatever the density scale (the oracle's ~10-50, sharp SD fields' thousands), the mesh's
    silhouette is where a grazing ray's opacity reaches one half."""
    beta = 0.01
    field = sphere_field(beta=beta, peak=peak)

    def grazing_opacity(offset: float) -> float:  # a ray passing the centre at distance ``offset``
        s = torch.linspace(-1.0, 1.0, 20001)
        points = torch.stack([s, torch.full_like(s, offset), torch.zeros_like(s)], dim=-1)
        return 1.0 - math.exp(-float(field.density(points).sum()) * float(s[1] - s[0]))

    lo, hi = 0.0, 1.0  # bisect the silhouette radius: opacity 1/2
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if grazing_opacity(mid) > 0.5 else (lo, mid)
    half_cell = 0.5 * 2.0 / 63
    silhouette = extract_mesh(field, MeshExportConfig(resolution=64, fringe_transmittance=1.0))
    assert np.linalg.norm(silhouette.vertices, axis=1).mean() == pytest.approx(lo, abs=half_cell)
    # the default also carves the see-through fringe: nothing at the dense scale, and at the faint
    # one (optical depth 10 per unit) a skin of optical depth -ln 0.8 ~ 0.22, about 0.02 thick
    radius = np.linalg.norm(extract_mesh(field, MeshExportConfig(resolution=64)).vertices, axis=1).mean()
    if peak > 1000:
        assert radius == pytest.approx(lo, abs=half_cell)
    else:
        assert lo - 0.03 < radius < lo - 0.01


class Dumbbell:
    """Two dense balls (radius 0.25 at x = +-0.4) joined by a thin rod of ``rod_peak`` / 40 their density."""

    bound = 1.0

    def __init__(self, rod_peak: float):
        self.rod_peak = rod_peak

    def density(self, points):
        balls = (
            torch.minimum(
                (points - torch.tensor([-0.4, 0.0, 0.0])).norm(dim=-1),
                (points - torch.tensor([0.4, 0.0, 0.0])).norm(dim=-1),
            )
            - 0.25
        )
        rod = torch.maximum(points[..., 1:].norm(dim=-1) - 0.05, points[..., 0].abs() - 0.4)
        return torch.maximum(40.0 * torch.sigmoid(-balls / 0.02), self.rod_peak * torch.sigmoid(-rod / 0.02))

    def albedo(self, points):
        return _albedo(points)


def test_auto_level_keeps_a_thin_low_density_part_attached():
    """A thin part whose density stays below the silhouette level (a lamp's arm) is kept by lowering
    the level just enough to join the pieces; parts that only empty space separates stay apart."""
    from scipy import ndimage

    from msd3d.export.mesh import connecting_level, density_grid, surface_level

    joined = Dumbbell(rod_peak=2.8)
    grid = density_grid(joined, 40)
    level = surface_level(grid, 1.0)
    assert ndimage.label(grid > level)[1] == 2  # at the silhouette level the rod is gone
    assert 0.5 * level <= connecting_level(grid, level) < level
    mesh = extract_mesh(joined, MeshExportConfig(resolution=40))
    assert len(mesh.split(only_watertight=False)) == 1
    assert mesh.metadata["msd3d"]["fringe_optical_depth"] == 0.0  # the faint rod is all fringe: not carved
    assert 0.6 < -mesh.bounds[0][0] < 0.8 and 0.6 < mesh.bounds[1][0] < 0.8  # both balls, whole

    apart = density_grid(Dumbbell(rod_peak=1.2), 40)  # the rod too faint to be part of the object
    level = surface_level(apart, 1.0)
    assert connecting_level(apart, level) == level
    ball = density_grid(sphere_field(), 24)
    assert connecting_level(ball, 50.0) == 50.0


class FringedDisc:
    """A flat disc (radius 0.4, core half-height 0.08, density 40) with a sharp side wall, padded above
    and below by soft density falling linearly to 0 over 0.04: what a trained field puts on the top
    and bottom faces that no training camera sees edge-on."""

    bound = 1.0

    def density(self, points):
        side = torch.sigmoid(-(points[..., :2].norm(dim=-1) - 0.4) / 0.01)
        vertical = (1.0 - (points[..., 2].abs() - 0.08) / 0.04).clamp(0.0, 1.0)
        return 40.0 * side * vertical

    def albedo(self, points):
        return _albedo(points)


def test_see_through_depth_closed_form():
    """Uniform density 2: the depth to each grid point is 2 x the distance to the nearest face of the
    grid's cells (the box's faces lie half a cell outside the outer grid points)."""
    from msd3d.export.mesh import see_through_depth

    r = 21
    spacing = 2.0 / (r - 1)
    depth = see_through_depth(np.full((r, r, r), 2.0, np.float32), 1.0)
    i = np.arange(r)
    steps = np.minimum(i, r - 1 - i)  # grid steps to the nearest outer grid point, per axis
    nearest = np.minimum(np.minimum(steps[:, None, None], steps[None, :, None]), steps[None, None, :])
    np.testing.assert_allclose(depth, 2.0 * spacing * (nearest + 0.5), rtol=1e-5)


def test_auto_surface_carves_the_see_through_fringe_of_top_and_bottom():
    """Soft padding on the top and bottom clears the silhouette level; the "auto" surface ends where
    light from above / below reaches the padding with transmittance 0.8 (closed form: the optical depth
    from outside, 500 (0.12 - z)^2, equals -ln 0.8 at z = 0.0989), and the side wall stays put."""
    field = FringedDisc()
    cell = 2.0 / 95
    carved = extract_mesh(field, MeshExportConfig(resolution=96))
    padded = extract_mesh(field, MeshExportConfig(resolution=96, fringe_transmittance=1.0))  # the old rule
    z_star = 0.12 - math.sqrt(-math.log(0.8) / 500.0)
    assert carved.bounds[1][2] == pytest.approx(z_star, abs=0.5 * cell)
    assert -carved.bounds[0][2] == pytest.approx(z_star, abs=0.5 * cell)
    assert padded.bounds[1][2] > z_star + 0.5 * cell  # the padding that made meshes ~10 % too tall
    assert carved.extents[0] == pytest.approx(padded.extents[0], abs=cell)  # the sharp side wall: unchanged
    assert carved.metadata["msd3d"]["fringe_optical_depth"] == pytest.approx(-math.log(0.8))
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="fringe_transmittance"):
            MeshExportConfig(fringe_transmittance=bad).validate()


class ColumnOnDisc:
    """The fringed disc (radius 0.4, core half-height 0.08, linear ramps to 0 over 0.04 above and below)
    with a denser core near the axis: what a trained table puts where its column meets the foot."""

    bound = 1.0

    def density(self, points):
        r = points[..., :2].norm(dim=-1)
        side = torch.sigmoid(-(r - 0.4) / 0.01)
        vertical = (1.0 - (points[..., 2].abs() - 0.08) / 0.04).clamp(0.0, 1.0)
        return 40.0 * (1.0 + 3.0 * torch.exp(-((r / 0.12) ** 2))) * side * vertical

    def albedo(self, points):
        return _albedo(points)


def test_fringe_skin_carves_ramps_flat_whatever_the_density_behind_them():
    """The transmittance rule leaves a bump where the ramp fronts a denser core (the table's foot under
    its column: meshes 6-7 % too tall); the skin rule puts the surface 2 x fringe_skin in from the
    ramp's outer end (closed form: depth / density = (0.12 - z) / 2 = 0.02 at z = 0.08) at every radius."""
    cell = 2.0 / 95

    def tops(mesh):
        radius = np.linalg.norm(mesh.vertices[:, :2], axis=1)
        z = mesh.vertices[:, 2]
        return z[radius < 0.05].max(), z[(radius > 0.25) & (radius < 0.3)].max()

    centre, off_centre = tops(extract_mesh(ColumnOnDisc(), MeshExportConfig(resolution=96)))
    assert centre > off_centre + 0.5 * cell  # the bump over the dense core
    skinned = extract_mesh(ColumnOnDisc(), MeshExportConfig(resolution=96, fringe_skin=0.02))
    centre, off_centre = tops(skinned)
    assert centre == pytest.approx(0.08, abs=0.5 * cell) and off_centre == pytest.approx(0.08, abs=0.5 * cell)
    assert -skinned.bounds[0][2] == pytest.approx(0.08, abs=0.5 * cell)
    assert skinned.metadata["msd3d"]["fringe_skin"] == pytest.approx(0.02)
    for bad in (-0.01, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="fringe_skin"):
            MeshExportConfig(fringe_skin=bad).validate()


def test_a_faint_field_that_is_all_fringe_is_meshed_without_carving():
    """A ball so faint (density 0.5) that light reaches its centre with transmittance > 0.8 is all
    see-through fringe: the auto surface drops the carving and meshes the density level instead of
    failing (the old rule's mesh)."""

    class Faint:
        bound = 1.0

        def density(self, points):
            return 0.5 * torch.sigmoid(-(points.norm(dim=-1) - 0.3) / 0.02)

        def albedo(self, points):
            return _albedo(points)

    mesh = extract_mesh(Faint(), MeshExportConfig(resolution=48))
    old = extract_mesh(Faint(), MeshExportConfig(resolution=48, fringe_transmittance=1.0))
    assert mesh.metadata["msd3d"]["fringe_optical_depth"] == 0.0
    np.testing.assert_allclose(mesh.bounds, old.bounds)


def test_cavities_are_filled_no_inner_shell():
    """A hollow ball (dense shell around an empty core) exports as one closed outer surface."""

    class HollowBall:
        bound = 1.0

        def density(self, points):
            r = points.norm(dim=-1)
            return 50.0 * torch.sigmoid((0.5 - r) / 0.01) * torch.sigmoid((r - 0.3) / 0.01)

        def albedo(self, points):
            return _albedo(points)

    mesh = extract_mesh(HollowBall(), MeshExportConfig(resolution=48))
    assert len(mesh.split(only_watertight=False)) == 1
    assert np.linalg.norm(mesh.vertices, axis=1).min() > 0.45
    assert mesh.volume > 0.95 * 4 / 3 * math.pi * 0.5**3  # the solid outer ball, no inward shell subtracted


def test_floaters_are_removed_by_size_and_by_count():
    blobs = SpheresField([((-0.45, 0.0, 0.0), 0.3), ((0.45, 0.0, 0.0), 0.25), ((0.0, 0.7, 0.6), 0.05)])
    base = dict(resolution=64, threshold=50.0)

    def components(mesh):
        return sorted(len(part.faces) for part in mesh.split(only_watertight=False))

    everything = extract_mesh(blobs, MeshExportConfig(**base, keep_components=0, min_component_fraction=0.0))
    sizes = components(everything)
    assert len(sizes) == 3 and sizes[0] < 0.02 * sum(sizes)  # the floater is tiny
    default = extract_mesh(blobs, MeshExportConfig(**base))  # drops components < 2 % of the faces
    assert components(default) == sizes[1:]
    largest = extract_mesh(blobs, MeshExportConfig(**base, keep_components=1))
    assert components(largest) == sizes[2:]
    assert largest.volume == pytest.approx(4 / 3 * math.pi * 0.3**3, rel=0.02)
    assert largest.vertices[:, 0].max() < 0  # the kept blob is the bigger one, on -x


def test_decimation_respects_the_face_budget():
    field = sphere_field()
    full = extract_mesh(field, MeshExportConfig(resolution=48, threshold=50.0))
    budget = 1000
    assert len(full.faces) > 4 * budget
    small = extract_mesh(field, MeshExportConfig(resolution=48, threshold=50.0, decimate_faces=budget))
    assert 0.5 * budget <= len(small.faces) <= budget
    assert small.area == pytest.approx(4 * math.pi * R**2, rel=0.03)
    assert len(small.visual.vertex_colors) == len(small.vertices)


def test_no_surface_raises_a_clear_error():
    with pytest.raises(Msd3dError, match=r"no surface found at threshold 150 \(max density 100\); lower --threshold"):
        extract_mesh(sphere_field(), MeshExportConfig(resolution=16, threshold=150.0))

    class Empty:
        bound = 1.0

        def density(self, points):
            return torch.zeros(points.shape[:-1])

        def albedo(self, points):
            return torch.zeros_like(points)

    with pytest.raises(Msd3dError, match="no surface found"):
        extract_mesh(Empty(), MeshExportConfig(resolution=16))


def test_mesh_config_validation_names_the_key():
    with pytest.raises(ValueError, match="mesh.threshold"):
        MeshExportConfig(threshold="high").validate()
    with pytest.raises(ValueError, match="mesh.threshold"):
        MeshExportConfig(threshold=0.0).validate()
    with pytest.raises(ValueError, match="mesh.formats"):
        MeshExportConfig(formats=("fbx",)).validate()
    with pytest.raises(ValueError, match="mesh.resolution"):
        MeshExportConfig(resolution=2).validate()
    # structured-config friendly: a numeric override of "auto" arrives as a number
    merged = OmegaConf.merge(OmegaConf.structured(MeshExportConfig), OmegaConf.from_dotlist(["threshold=25"]))
    config = OmegaConf.to_object(merged)
    config.validate()
    assert config.threshold == 25
    video = OmegaConf.to_object(
        OmegaConf.merge(OmegaConf.structured(VideoConfig), OmegaConf.from_dotlist(["panels=[rgb,depth]"]))
    )
    video.validate()
    assert tuple(video.panels) == ("rgb", "depth")


# ------------------------------------------------------------------------------------------------
# mesh files


@pytest.fixture(scope="module")
def sphere_mesh():
    return extract_mesh(sphere_field(), MeshExportConfig(resolution=32, threshold=50.0))


@pytest.mark.parametrize("suffix", ["obj", "ply", "glb"])
def test_mesh_files_load_back_with_same_counts_and_colours(sphere_mesh, tmp_path, suffix):
    written = export_mesh(sphere_mesh, tmp_path / f"sphere.{suffix}")
    assert written == [tmp_path / f"sphere.{suffix}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"sphere.{suffix}"]  # no temp files left
    if suffix == "glb":
        scene = trimesh.load(written[0], process=False)
        (loaded,) = scene.geometry.values()
        colours = loaded.visual.vertex_attributes["color"]
        expected_colours = srgb_to_linear_u8(sphere_mesh.visual.vertex_colors)  # COLOR_0 is linear
        expected_vertices = trimesh.transform_points(sphere_mesh.vertices, Y_UP_FROM_Z_UP)
    else:
        loaded = trimesh.load(written[0], process=False, force="mesh")
        colours = loaded.visual.vertex_colors
        expected_colours = sphere_mesh.visual.vertex_colors
        expected_vertices = sphere_mesh.vertices
    assert len(loaded.vertices) == len(sphere_mesh.vertices)
    assert len(loaded.faces) == len(sphere_mesh.faces)
    np.testing.assert_allclose(loaded.vertices, expected_vertices, atol=1e-5)
    np.testing.assert_array_equal(loaded.faces, sphere_mesh.faces)
    assert colours.dtype == np.uint8 and colours.shape == (len(sphere_mesh.vertices), 4)
    assert np.abs(colours.astype(int) - expected_colours.astype(int)).max() <= 1


def test_glb_is_y_up_and_keeps_the_front_on_plus_x(tmp_path):
    field = EllipsoidField()
    mesh = extract_mesh(field, MeshExportConfig(resolution=48))
    lo, hi = mesh.bounds
    assert (hi - lo)[2] > 1.5 * (hi - lo)[1]  # tall along +z in msd3d's world
    export_mesh(mesh, tmp_path / "e.glb")
    loaded = trimesh.load(tmp_path / "e.glb", process=False, force="mesh")
    glo, ghi = loaded.bounds
    centre, gcentre = (lo + hi) / 2, (glo + ghi) / 2
    np.testing.assert_allclose(ghi - glo, (hi - lo)[[0, 2, 1]], atol=1e-5)  # tall along +y now
    np.testing.assert_allclose(gcentre, [centre[0], centre[2], -centre[1]], atol=1e-5)
    assert gcentre[1] > 0.25 and gcentre[0] > 0.05  # up stays up, front (+x) stays +x
    assert loaded.volume > 0  # a proper rotation keeps the faces outward
    # the metadata says what the file holds (it said +z up before issue 8)
    assert loaded.metadata["msd3d"]["up_axis"] == "+y" and loaded.metadata["msd3d"]["front_axis"] == "+x"
    assert mesh.metadata["msd3d"]["up_axis"] == "+z"  # the in-memory mesh (and OBJ / PLY) stay +z up


def test_textured_export_bakes_the_albedo(tmp_path):
    field = sphere_field()
    mesh = extract_mesh(field, MeshExportConfig(resolution=32, threshold=50.0, texture=True, texture_size=256))
    assert isinstance(mesh.visual, trimesh.visual.TextureVisuals)
    uv = mesh.visual.uv
    assert uv.shape == (len(mesh.vertices), 2) and uv.min() >= 0.0 and uv.max() <= 1.0
    image = mesh.visual.material.baseColorTexture
    assert image.size == (256, 256)
    assert mesh.area == pytest.approx(4 * math.pi * R**2, rel=0.02)

    # colour looked up through the UVs (trimesh's own convention) equals the albedo at those points
    points, face_ids = trimesh.sample.sample_surface(mesh, 3000, seed=0)
    bary = trimesh.triangles.points_to_barycentric(mesh.triangles[face_ids], points)
    uv_points = np.einsum("nk,nkd->nd", bary, uv[mesh.faces[face_ids]])
    looked_up = trimesh.visual.color.uv_to_color(uv_points, image)[:, :3].astype(float)
    expected = _albedo(torch.tensor(points, dtype=torch.float32)).numpy() * 255
    error = np.abs(looked_up - expected)
    assert error.mean() < 1.5 and error.max() < 8.0

    written = export_mesh(mesh, tmp_path / "tex.obj")
    assert sorted(p.name for p in written) == ["tex.mtl", "tex.obj", "tex.png"]
    assert written[-1].name == "tex.obj"  # renamed last, after its companions
    assert "map_Kd tex.png" in (tmp_path / "tex.mtl").read_text()
    obj = trimesh.load(tmp_path / "tex.obj", process=False, force="mesh")
    assert len(obj.faces) == len(mesh.faces) and len(obj.vertices) == len(mesh.vertices)
    # each loaded corner keeps its position and UV (trimesh splits v/vt pairs again when loading)
    np.testing.assert_allclose(obj.vertices[obj.faces], mesh.vertices[mesh.faces], atol=1e-6)
    np.testing.assert_allclose(obj.visual.uv[obj.faces], uv[mesh.faces], atol=1e-6)
    assert np.asarray(obj.visual.material.image).shape[:2] == (256, 256)
    # the file itself is one welded surface (issue 8): positions once, UVs indexed separately
    lines = (tmp_path / "tex.obj").read_text().splitlines()
    positions = np.array([[float(v) for v in line.split()[1:4]] for line in lines if line.startswith("v ")])
    corners = [[int(c.split("/")[0]) - 1 for c in line.split()[1:]] for line in lines if line.startswith("f ")]
    assert len(positions) == len(np.unique(mesh.vertices, axis=0)) < len(mesh.vertices)
    assert sum(line.startswith("vt ") for line in lines) == len(mesh.vertices)
    welded = trimesh.Trimesh(positions, np.array(corners), process=False)
    assert welded.is_watertight and len(welded.split(only_watertight=False)) == 1

    export_mesh(mesh, tmp_path / "tex.glb")
    glb = trimesh.load(tmp_path / "tex.glb", process=False, force="mesh")
    assert len(glb.faces) == len(mesh.faces)
    np.testing.assert_allclose(glb.visual.uv, uv, atol=1e-6)
    assert glb.visual.material.baseColorTexture.size == (256, 256)
    assert glb.visual.material.metallicFactor == 0.0

    export_mesh(mesh, tmp_path / "tex.ply")  # textures become vertex colours in PLY
    ply = trimesh.load(tmp_path / "tex.ply", process=False, force="mesh")
    assert ply.visual.kind == "vertex" and len(ply.faces) == len(mesh.faces)


def test_uv_rasterisation_covers_exactly_the_triangle_area():
    # two triangles splitting the unit square: every texel centre is covered exactly once
    uv = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    face_index, bary = rasterize_uv(uv, faces, 32, max_texels_per_chunk=100)  # forces chunking
    assert (face_index >= 0).all()
    np.testing.assert_allclose(bary.sum(-1), 1.0)
    assert (bary >= -1e-9).all()
    # one triangle of area 1/8 of the square covers ≈ 1/8 of the texels
    half, _ = rasterize_uv(np.array([[0.0, 0.0], [0.5, 0.0], [0.0, 0.5]]), np.array([[0, 1, 2]]), 64)
    assert (half >= 0).sum() == pytest.approx(64 * 64 / 8, rel=0.05)


def test_export_mesh_files_and_unknown_extension(sphere_mesh, tmp_path):
    written = export_mesh_files(sphere_mesh, tmp_path / "out", "asset", formats=("glb", "obj", "ply"))
    assert [p.name for p in written] == ["asset.glb", "asset.obj", "asset.ply"]
    assert all(p.stat().st_size > 0 for p in written)
    with pytest.raises(Msd3dError, match="unknown mesh format"):
        export_mesh(sphere_mesh, tmp_path / "asset.fbx")


# ------------------------------------------------------------------------------------------------
# atomic writing


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "model.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer failed")
    assert list(tmp_path.iterdir()) == []

    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("new but broken")
            raise RuntimeError("writer failed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # plain-file permissions


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_file_set_is_all_or_nothing(tmp_path):
    names = [tmp_path / "a.mtl", tmp_path / "a.png", tmp_path / "a.obj"]
    with pytest.raises(RuntimeError):
        with atomic_paths(names) as temps:
            temps[0].write_text("mtl")
            temps[1].write_bytes(b"png")
            raise RuntimeError("failed before the obj")
    assert list(tmp_path.iterdir()) == []
    atomic_write_files({p: p.suffix.encode() for p in names})
    assert sorted(p.read_bytes() for p in tmp_path.iterdir()) == [b".mtl", b".obj", b".png"]


def test_failed_video_write_keeps_the_previous_file(tmp_path, monkeypatch):
    import msd3d.export.video as video

    target = tmp_path / "turntable.mp4"
    target.write_bytes(b"previous")
    with pytest.raises(ValueError):
        write_video(np.zeros((2, 8, 8, 5), np.uint8), target)  # invalid frames: nothing written

    def broken_writer(frames, path, fps, quality):
        Path(path).write_bytes(b"partial mp4")
        raise OSError("disk full")

    monkeypatch.setattr(video, "_write_mp4", broken_writer)
    with pytest.raises(OSError, match="disk full"):
        write_video(np.zeros((3, 8, 8, 3), np.uint8), target)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["turntable.mp4"]


# ------------------------------------------------------------------------------------------------
# videos


def analytic_sphere_render(cameras: Cameras, radius: float = R) -> dict[str, torch.Tensor]:
    """Exact ray-sphere renders: rgb (albedo on white), world normals, depth, opacity."""
    origins, dirs = cameras.rays()  # (B, H, W, 3)
    b = (origins * dirs).sum(-1)
    c = (origins * origins).sum(-1) - radius**2
    disc = b * b - c
    hit = (disc > 0).float()[..., None]
    t = (-b - disc.clamp(min=0).sqrt())[..., None]
    points = origins + t * dirs
    return {
        "rgb": _albedo(points) * hit + (1 - hit),
        "normals": points / radius * hit,
        "depth": t * hit,
        "opacity": hit,
    }


def test_mp4_decodes_to_requested_frames_and_size(tmp_path):
    config = VideoConfig(frames=9, size=31, fps=12, panels=("rgb",), batch_size=4)  # odd size on purpose
    frames = render_turntable(analytic_sphere_render, config, show_progress=False)
    assert frames.shape == (9, 31, 31, 3) and frames.dtype == np.uint8
    assert not np.array_equal(frames[0], frames[3])  # the view turns
    path = write_video(frames, tmp_path / "turntable.mp4", fps=config.fps)
    decoded = read_video_frames(path)
    assert decoded.shape == (9, 32, 32, 3)  # padded to even for yuv420p
    assert np.abs(decoded[:, :31, :31].astype(float) - frames).mean() < 6.0
    assert [p.name for p in tmp_path.iterdir()] == ["turntable.mp4"]


def test_gif_decodes_to_requested_frames_and_size(tmp_path):
    config = VideoConfig(frames=6, size=24, fps=10, format="gif")
    frames = render_turntable(analytic_sphere_render, config, show_progress=False)
    path = write_video(frames, tmp_path / "turntable.gif", fps=config.fps)
    decoded = read_video_frames(path)
    assert decoded.shape == (6, 24, 24, 3)
    assert np.abs(decoded.astype(float) - frames).mean() < 4.0


def test_side_by_side_panels(tmp_path):
    size = 32
    config = VideoConfig(frames=4, size=size, elevation=0.0, panels=("rgb", "normals", "depth"), batch_size=3)
    frames = render_turntable(analytic_sphere_render, config, show_progress=False)
    assert frames.shape == (4, size, 3 * size, 3)
    # frame 1 looks from azimuth 90° (+y): the centre normal points at the camera, +y → (0.5, 1, 0.5)
    centre = frames[1, size // 2, size + size // 2].astype(float) / 255
    np.testing.assert_allclose(centre, [0.5, 1.0, 0.5], atol=0.06)
    # background of the normals and depth panels is the white background; rgb equals the render
    assert (frames[:, 0, size] == 255).all() and (frames[:, 0, 2 * size] == 255).all()
    expected = analytic_sphere_render(turntable_cameras_for(config))["rgb"].numpy()
    assert np.abs(frames[:, :, :size].astype(float) - expected * 255).max() <= 0.5 + 1e-3
    # depth: nearest foreground pixel (the sphere's centre) maps to the colormap's top end
    import matplotlib

    top = np.asarray(matplotlib.colormaps["turbo"](1.0)[:3]) * 255
    assert np.abs(frames[0, size // 2, 2 * size + size // 2] - top).max() <= 2
    path = write_video(frames, tmp_path / "panels.mp4", fps=8)
    assert read_video_frames(path).shape == (4, size, 3 * size, 3)


def test_missing_panel_and_bad_config_raise():
    only_rgb = lambda cameras: {"rgb": analytic_sphere_render(cameras)["rgb"]}  # noqa: E731
    with pytest.raises(Msd3dError, match="depth"):
        render_turntable(only_rgb, VideoConfig(frames=2, size=8, panels=("rgb", "depth")), show_progress=False)
    with pytest.raises(ValueError, match="video.panels"):
        VideoConfig(panels=("rgb", "albedo")).validate()
    with pytest.raises(ValueError, match="video.format"):
        VideoConfig(format="avi").validate()
    with pytest.raises(Msd3dError, match="unknown video format"):
        write_video(np.zeros((1, 4, 4, 3), np.uint8), "clip.avi")
