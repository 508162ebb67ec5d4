"""The NeRF field, its encodings and the background."""

from __future__ import annotations

import math

import pytest
import torch

from msd3d.scene.background import Background, BackgroundConfig
from msd3d.scene.base import RadianceField
from msd3d.scene.components import trunc_exp
from msd3d.scene.encodings import DenseGridEncoding, TriplaneEncoding, grid_sample_is_twice_differentiable
from msd3d.scene.nerf import NeRFConfig, NeRFField


def _blob_only(config: NeRFConfig) -> NeRFField:
    """A field whose density is the blob alone (density MLP output zero)."""
    field = NeRFField(config)
    last = field.density_mlp[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    return field


def test_field_implements_the_radiance_field_protocol_with_shapes():
    field = NeRFField(NeRFConfig(resolutions=(8, 16), features=4, hidden_dim=16))
    assert isinstance(field, RadianceField)
    pts = torch.rand(2, 5, 3) * 1.6 - 0.8
    density, albedo = field(pts)
    assert density.shape == (2, 5) and albedo.shape == (2, 5, 3)
    assert torch.all(density >= 0) and torch.all((albedo >= 0) & (albedo <= 1))
    assert torch.allclose(field.density(pts), density)
    assert torch.allclose(field.albedo(pts), albedo)
    assert field.normals(pts).shape == (2, 5, 3)


def test_density_is_zero_outside_the_bound():
    field = NeRFField(NeRFConfig(bound=0.5, resolutions=(8,), features=4, blob_density=0.0))
    inside = torch.tensor([[0.0, 0.0, 0.0], [0.49, -0.49, 0.2]])
    outside = torch.tensor([[0.51, 0.0, 0.0], [0.0, 0.0, -0.7], [2.0, 2.0, 2.0]])
    assert torch.all(field.density(inside) > 0)  # softplus of anything is positive
    assert torch.equal(field.density(outside), torch.zeros(3))


@pytest.mark.parametrize("shape", ["linear", "gaussian"])
def test_density_blob_matches_its_formula(shape):
    config = NeRFConfig(resolutions=(8,), features=4, blob_shape=shape, blob_density=5.0, blob_radius=0.5)
    field = _blob_only(config)
    r = torch.tensor([0.0, 0.25, 0.5, 0.75])
    pts = torch.stack([r, torch.zeros(4), torch.zeros(4)], dim=-1)
    if shape == "linear":
        raw = 5.0 * (1 - r / 0.5)
    else:
        raw = 5.0 * torch.exp(-0.5 * r**2 / 0.25)
    assert torch.allclose(field.density(pts), torch.nn.functional.softplus(raw), atol=1e-5)


@pytest.mark.parametrize("activation", ["softplus", "exp", "trunc_exp"])
def test_density_activations(activation):
    field = _blob_only(
        NeRFConfig(resolutions=(8,), features=4, density_activation=activation, blob_density=2.0, blob_radius=1.0)
    )
    raw = torch.tensor(2.0)  # at the origin the raw density is the blob strength
    expected = torch.nn.functional.softplus(raw) if activation == "softplus" else torch.exp(raw)
    assert torch.allclose(field.density(torch.zeros(1, 3)), expected.expand(1), atol=1e-5)


def test_trunc_exp_clamps_its_gradient():
    x = torch.tensor([1.0, 30.0], requires_grad=True)
    trunc_exp(x).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([math.e, math.exp(15.0)]))


@pytest.mark.parametrize("method", ["finite_difference", "analytic"])
@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_blob_normals_point_outward(method, scheme):
    field = _blob_only(NeRFConfig(resolutions=(16,), features=4, normals=method, finite_difference=scheme))
    g = torch.Generator().manual_seed(0)
    pts = torch.nn.functional.normalize(torch.randn(64, 3, generator=g), dim=-1) * (
        0.2 + 0.6 * torch.rand(64, 1, generator=g)
    )
    normals = field.normals(pts)
    radial = pts / pts.norm(dim=-1, keepdim=True)
    assert torch.allclose(normals.norm(dim=-1), torch.ones(64), atol=1e-5)
    cos = (normals * radial).sum(-1)
    assert cos.min() > 0.999


def test_normals_are_differentiable_in_the_field_parameters():
    for method in ("finite_difference", "analytic"):
        if method == "analytic" and not grid_sample_is_twice_differentiable("cpu"):
            continue
        field = NeRFField(NeRFConfig(resolutions=(8, 16), features=4, hidden_dim=16, normals=method))
        pts = torch.rand(32, 3) - 0.5
        sample = field.query(pts, with_normals=True)
        sample.normals[:, 0].sum().backward()
        # normals reach the grid features and the density MLP's weights (not the albedo MLP)
        grads = [p.grad for p in field.encoding.parameters()] + [field.density_mlp[0].weight.grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert all(float(g.abs().sum()) > 0 for g in grads)
        assert all(p.grad is None for p in field.albedo_mlp.parameters())


def test_query_matches_separate_calls():
    field = NeRFField(NeRFConfig(resolutions=(8, 16), features=4, hidden_dim=16))
    pts = torch.rand(50, 3) * 2 - 1
    sample = field.query(pts, with_normals=True)
    assert torch.allclose(sample.density, field.density(pts), atol=1e-6)
    assert torch.allclose(sample.albedo, field.albedo(pts), atol=1e-6)
    assert torch.allclose(sample.normals, field.normals(pts), atol=1e-6)


def test_triplane_encoding_interpolates_bilinearly():
    enc = TriplaneEncoding(resolutions=(3,), features=1)
    with torch.no_grad():
        enc.planes[0].zero_()
        # plane 0 (xy): value = x index (column) -> a linear ramp in x from 0 to 2 over [-1, 1]
        enc.planes[0][0, 0] = torch.arange(3.0).expand(3, 3)
        # plane 2 (yz): value = row index (z) -> a ramp in z
        enc.planes[0][2, 0] = torch.arange(3.0)[:, None].expand(3, 3)
    pts = torch.tensor([[-1.0, 0.3, -1.0], [0.5, -0.2, 0.0], [1.0, 0.9, 0.25]])
    out = enc(pts)
    assert out.shape == (3, 3)
    assert torch.allclose(out[:, 0], pts[:, 0] + 1.0, atol=1e-6)
    assert torch.allclose(out[:, 1], torch.zeros(3))
    assert torch.allclose(out[:, 2], pts[:, 2] + 1.0, atol=1e-6)


def test_dense_encoding_interpolates_trilinearly():
    enc = DenseGridEncoding(resolutions=(2,), features=1)
    with torch.no_grad():
        d, h, w = torch.meshgrid(torch.arange(2.0), torch.arange(2.0), torch.arange(2.0), indexing="ij")
        enc.grids[0][0, 0] = w + 10 * h + 100 * d  # x -> W, y -> H, z -> D
    pts = torch.tensor([[0.0, 0.0, 0.0], [1.0, -1.0, 0.5], [-0.5, 0.5, -1.0]])
    expected = (pts[:, 0] + 1) / 2 + 10 * (pts[:, 1] + 1) / 2 + 100 * (pts[:, 2] + 1) / 2
    assert torch.allclose(enc(pts)[:, 0], expected, atol=1e-4)


def test_dense_field_renders_the_same_interface():
    field = NeRFField(NeRFConfig(encoding="dense", resolutions=(8, 16), features=4, hidden_dim=16))
    density, albedo = field(torch.rand(10, 3) - 0.5)
    assert density.shape == (10,) and albedo.shape == (10, 3)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("encoding", "hash"),
        ("resolutions", ()),
        ("features", 0),
        ("bound", 0.0),
        ("density_activation", "relu"),
        ("blob_shape", "cube"),
        ("normals", "magic"),
        ("normal_eps", 0.0),
    ],
)
def test_field_config_rejects_bad_values(key, value):
    with pytest.raises(ValueError, match=f"field.nerf.{key}"):
        NeRFConfig(**{key: value}).validate()


def test_solid_background_is_constant():
    bg = Background(BackgroundConfig(type="solid", color=(0.2, 0.4, 0.6)))
    dirs = torch.nn.functional.normalize(torch.randn(2, 3, 4, 3), dim=-1)
    out = bg(dirs)
    assert out.shape == (2, 3, 4, 3)
    assert torch.allclose(out, torch.tensor([0.2, 0.4, 0.6]).expand(2, 3, 4, 3))


def test_random_solid_background_differs_per_view_in_training_only():
    bg = Background(BackgroundConfig(type="random_solid", color=(1.0, 1.0, 1.0)))
    dirs = torch.nn.functional.normalize(torch.randn(3, 4, 4, 3), dim=-1)
    out = bg(dirs, generator=torch.Generator().manual_seed(0))
    per_view = out[:, 0, 0]
    assert torch.allclose(out, per_view[:, None, None].expand_as(out))  # one colour per view
    assert (per_view[0] - per_view[1]).abs().max() > 1e-3
    assert torch.equal(out, bg(dirs, generator=torch.Generator().manual_seed(0)))
    bg.eval()
    assert torch.equal(bg(dirs), torch.ones(3, 4, 4, 3))


def test_mlp_background_depends_on_direction_and_trains():
    bg = Background(BackgroundConfig(type="mlp"))
    dirs = torch.nn.functional.normalize(torch.randn(64, 3, generator=torch.Generator().manual_seed(1)), dim=-1)
    out = bg(dirs)
    assert out.shape == (64, 3) and torch.all((out > 0) & (out < 1))
    assert out.std(dim=0).min() > 0
    out.sum().backward()
    assert all(p.grad is not None for p in bg.parameters())


def test_background_config_rejects_bad_values():
    with pytest.raises(ValueError, match="background.type"):
        BackgroundConfig(type="sky").validate()
    with pytest.raises(ValueError, match="background.color"):
        BackgroundConfig(color=(1.0, 2.0, 0.0)).validate()
