"""Cameras: ray geometry, poses, turntables and view-dependent prompts."""

from __future__ import annotations

import math

import pytest
import torch

from msd3d.render.cameras import (
    CameraConfig,
    look_at,
    orbit_cameras,
    sample_cameras,
    turntable_cameras,
    view_name,
    view_prompts,
)


def _cams(elevation, azimuth, distance=2.0, fovy=50.0, size=5):
    n = len(elevation)
    return orbit_cameras(
        torch.tensor(elevation, dtype=torch.float32),
        torch.tensor(azimuth, dtype=torch.float32),
        torch.full((n,), distance),
        torch.full((n,), fovy),
        size,
    )


def test_centre_ray_hits_origin_and_camera_sits_on_its_orbit():
    cams = _cams([0.0, 30.0, -10.0, 89.0], [0.0, 45.0, 170.0, -120.0], distance=1.7, size=5)
    origins, dirs = cams.rays()
    assert origins.shape == dirs.shape == (4, 5, 5, 3)
    assert torch.allclose(dirs.norm(dim=-1), torch.ones(4, 5, 5), atol=1e-6)
    o, d = origins[:, 2, 2], dirs[:, 2, 2]  # the centre pixel of an odd-sized image
    # closest approach of the centre ray to the origin, and it lies ahead of the camera
    t = -(o * d).sum(-1)
    assert torch.all(t > 0)
    closest = o + t[:, None] * d
    assert closest.norm(dim=-1).max() < 1e-5
    assert torch.allclose(cams.positions.norm(dim=-1), torch.full((4,), 1.7), atol=1e-5)
    e, a = math.radians(30.0), math.radians(45.0)
    expected = 1.7 * torch.tensor([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])
    assert torch.allclose(cams.positions[1], expected, atol=1e-5)


def test_c2w_is_a_proper_rotation_looking_at_the_origin_with_z_up():
    g = torch.Generator().manual_seed(0)
    cams = sample_cameras(CameraConfig(batch_size=16, elevation_range=(-80.0, 89.9)), 4, generator=g)
    rot = cams.c2w[:, :3, :3]
    eye = torch.eye(3).expand(16, 3, 3)
    assert torch.allclose(rot.transpose(1, 2) @ rot, eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(16), atol=1e-5)
    # OpenGL: the camera looks down its -z axis, towards the origin
    forward = -rot[:, :, 2]
    assert torch.allclose(forward, -cams.positions / cams.positions.norm(dim=-1, keepdim=True), atol=1e-5)
    # camera x (right) is horizontal and camera y (up) points to world +z
    assert rot[:, 2, 0].abs().max() < 1e-5
    assert torch.all(rot[:, 2, 1] > 0)
    assert torch.equal(cams.c2w[:, 3], torch.tensor([0.0, 0.0, 0.0, 1.0]).expand(16, 4))


def test_straight_down_view_is_still_orthonormal():
    c2w = look_at(torch.tensor([[0.0, 0.0, 2.0]]))
    rot = c2w[0, :3, :3]
    assert torch.allclose(rot.T @ rot, torch.eye(3), atol=1e-6)
    assert torch.allclose(-rot[:, 2], torch.tensor([0.0, 0.0, -1.0]), atol=1e-6)


def test_image_right_and_up_match_world_for_the_front_camera():
    # front camera on +x looking at -x with +z up: image right is world +y, image up is world +z
    cams = _cams([0.0], [0.0], size=4)
    _, dirs = cams.rays()
    assert dirs[0, 0, -1, 1] > dirs[0, 0, 0, 1]  # right column points further along +y
    assert dirs[0, 0, 0, 2] > dirs[0, -1, 0, 2]  # top row points further along +z


def test_pixel_rays_span_the_field_of_view():
    fovy = 60.0
    cams = _cams([0.0], [0.0], fovy=fovy, size=64)
    _, dirs = cams.rays()
    forward = -cams.c2w[0, :3, 2]
    # top and bottom edge pixel centres are half a pixel inside the field of view
    top = torch.acos((dirs[0, 0, 32] * forward).sum().clamp(-1, 1))
    focal = 32.0 / math.tan(math.radians(fovy / 2))
    expected = math.atan(31.5 / focal)
    assert abs(float(top) - expected) < 1e-4


def test_turntable_azimuths_are_evenly_spaced_from_the_front():
    cams = turntable_cameras(8, 16, elevation=20.0, distance=1.5, fovy=45.0)
    assert len(cams) == 8 and cams.height == cams.width == 16
    expected = torch.tensor([0.0, 45.0, 90.0, 135.0, -180.0, -135.0, -90.0, -45.0])
    assert torch.allclose(cams.azimuth, expected)
    assert torch.allclose(cams.elevation, torch.full((8,), 20.0))
    assert torch.allclose(cams.positions.norm(dim=-1), torch.full((8,), 1.5), atol=1e-5)
    assert torch.allclose(cams.fovy, torch.full((8,), math.radians(45.0)))
    # consecutive cameras are 45 degrees apart around +z
    xy = cams.positions[:, :2]
    cos = (xy[:-1] * xy[1:]).sum(-1) / (xy[:-1].norm(dim=-1) * xy[1:].norm(dim=-1))
    assert torch.allclose(cos, torch.full((7,), math.cos(math.radians(45.0))), atol=1e-5)


def test_view_names_follow_dreamfusion_thresholds():
    assert view_name(0.0, 0.0) == "front"
    assert view_name(10.0, 44.0) == "front"
    assert view_name(10.0, -44.0) == "front"
    assert view_name(10.0, 90.0) == "side"
    assert view_name(10.0, -100.0) == "side"
    assert view_name(10.0, 170.0) == "back"
    assert view_name(10.0, -179.0) == "back"
    assert view_name(10.0, 190.0) == "back"  # wraps
    assert view_name(70.0, 0.0) == "overhead"
    cams = _cams([0.0, 0.0, 80.0], [0.0, 180.0, 90.0])
    assert view_prompts("a corgi", cams) == ["a corgi, front view", "a corgi, back view", "a corgi, overhead view"]


def test_sampled_cameras_respect_ranges_and_generator():
    config = CameraConfig(batch_size=64)
    a = sample_cameras(config, 8, generator=torch.Generator().manual_seed(3))
    b = sample_cameras(config, 8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.c2w, b.c2w)
    assert a.elevation.min() >= -10.0 and a.elevation.max() <= 45.0
    assert a.distance.min() >= 1.5 and a.distance.max() <= 2.0
    assert math.degrees(float(a.fovy.min())) >= 40.0 - 1e-4 and math.degrees(float(a.fovy.max())) <= 70.0 + 1e-4
    assert a[3].c2w.shape == (1, 4, 4) and len(a[2:5]) == 3
    assert a.with_resolution(32).rays()[0].shape == (64, 32, 32, 3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"elevation_range": (10.0, -10.0)},
        {"distance_range": (0.0, 1.0)},
        {"fovy_range": (0.0, 60.0)},
        {"fovy_range": (30.0, 190.0)},
        {"batch_size": 0},
    ],
)
def test_camera_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError, match="camera\\."):
        CameraConfig(**kwargs).validate()
