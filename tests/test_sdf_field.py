"""The signed-distance field type (field.name=sdf): VolSDF density, sphere start, eikonal loss."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from msd3d.config import load_config
from msd3d.errors import ConfigError
from msd3d.export.mesh import MeshExportConfig, extract_mesh
from msd3d.scene.sdf_field import SDFConfig, SDFNeRFField, laplace_density
from msd3d.scene_builder import build_renderer
from msd3d.train import Trainer


def small_sdf_field(**kwargs) -> SDFNeRFField:
    return SDFNeRFField(SDFConfig(resolutions=(16, 32), hidden_dim=16, **kwargs))


def test_volsdf_density_profile():
    beta = 0.05
    neg = torch.tensor([-1.0, 0.0, 1.0])
    sigma = laplace_density(neg, beta)
    assert sigma[1] == pytest.approx(0.5 / beta)  # half the inside density on the surface
    assert sigma[2] == pytest.approx((1 - 0.5 * np.exp(-20.0)) / beta)
    assert sigma[0] == pytest.approx(0.5 * np.exp(-20.0) / beta)


def test_starts_as_a_sphere_with_outward_normals_and_a_true_distance():
    field = small_sdf_field(sdf_radius=0.4)
    points = torch.tensor([[0.4, 0.0, 0.0], [0.0, -0.4, 0.0], [0.0, 0.0, 0.7]])
    sdf = field.sdf(points).detach()
    np.testing.assert_allclose(sdf.numpy(), [0.0, 0.0, 0.3], atol=0.01)
    normals = field.normals(points[:2]).detach()
    np.testing.assert_allclose(normals.numpy(), [[1, 0, 0], [0, -1, 0]], atol=0.05)
    box = torch.rand(512, 3) * 1.6 - 0.8
    assert float(field.eikonal_loss(box).detach()) < 0.01  # |grad sdf| = 1 at the start
    mesh = extract_mesh(field, MeshExportConfig(resolution=40))
    assert mesh.is_watertight
    # the silhouette the renders show lies ~2 beta outside the zero set (grazing rays through the tail)
    assert np.linalg.norm(mesh.vertices, axis=1).mean() == pytest.approx(0.4 + 2 * 0.02, abs=0.02)


def test_eikonal_loss_penalises_a_scaled_distance():
    field = small_sdf_field()
    with torch.no_grad():  # raw = -2 * |p| + ...: the gradient norm is 2, the loss (2 - 1)^2 = 1
        field.config.sdf_radius = 0.5
    scaled = lambda p: 2.0 * (field.config.sdf_radius - torch.sqrt(p.pow(2).sum(-1) + 1e-12))  # noqa: E731
    field.density_bias = scaled  # type: ignore[method-assign]
    loss = field.eikonal_loss(torch.rand(256, 3) - 0.5)
    assert float(loss.detach()) == pytest.approx(1.0, abs=0.05)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in field.parameters())


def test_config_selects_the_sdf_field_and_training_adds_the_eikonal_loss(tmp_path, tiny_run_overrides):
    tiny_sdf = [o.replace("field.nerf.", "field.sdf.") for o in tiny_run_overrides]
    config = load_config(None, tiny_sdf + ["field.name=sdf", "field.sdf.eikonal_points=64"],
                         {"prompt": "a donut", "device": "cpu", "seed": 0, "train.steps": 3})
    assert isinstance(build_renderer(config).field, SDFNeRFField)
    trainer = Trainer(config, tmp_path / "run", show_progress=False)
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("loss_eikonal" in r and np.isfinite(r["loss_eikonal"]) for r in records)
    with pytest.raises(ConfigError, match="field.sdf.sdf_beta"):
        load_config(None, ["field.name=sdf", "field.sdf.sdf_beta=0"])
