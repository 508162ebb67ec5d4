"""The optimised NeRF: density and albedo from a grid encoding and two small MLPs.

Structure (threestudio's ``ImplicitVolume`` with the hash grid swapped for a ``grid_sample`` grid,
see :mod:`msd3d.scene.encodings` for why):

* world points in ``[-bound, bound]^3`` are scaled to ``[-1, 1]`` and encoded by a multi-resolution
  tri-plane (default) or dense grid;
* a density MLP gives a raw density, to which a **density blob** is added before the activation
  (DreamFusion / Magic3D: ``raw += blob_density * (1 - r / blob_radius)``, or a Gaussian bump) so the
  optimisation starts from a soft ball at the origin instead of empty space;
* an albedo MLP with a sigmoid gives the base colour in ``[0, 1]``;
* points outside the bound get zero density;
* normals are ``-grad(density) / |grad(density)|`` (outward for a solid), by autograd ("analytic",
  the default: grid_sample is twice differentiable in current PyTorch, and it avoids forward
  differences' density queries at 4x the points) or by finite differences of the raw density. Both
  are differentiable with respect to the field's parameters, so lit shading and the orientation
  loss shape the geometry.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msd3d.scene.base import FieldSample
from msd3d.scene.components import DENSITY_ACTIVATIONS, density_activation, mlp
from msd3d.scene.encodings import build_encoding, grid_sample_is_twice_differentiable
from msd3d.validation import check_choice, check_range, join

BLOB_SHAPES = ("linear", "gaussian", "none")
NORMAL_METHODS = ("finite_difference", "analytic")
FINITE_DIFFERENCES = ("forward", "central")


@dataclass
class NeRFConfig:
    """The NeRF's encoding, MLPs, density initialisation and normals."""

    encoding: str = "triplane"
    """"triplane" (multi-resolution tri-plane) or "dense" (multi-resolution voxel grid)."""
    resolutions: tuple[int, ...] = (64, 128)
    """Grid resolution of each level (plane side for tri-planes, cube side for dense grids)."""
    features: int = 8
    """Feature channels per plane / voxel and level."""
    init_std: float = 0.1
    """Standard deviation of the initial grid features."""
    hidden_dim: int = 64
    """Width of the density and albedo MLPs."""
    hidden_layers: int = 1
    """Hidden layers of each MLP (0 = linear)."""
    bound: float = 1.0
    """Scene half-size: the field lives in [-bound, bound]^3."""
    density_activation: str = "softplus"
    """"softplus", "exp" or "trunc_exp" (exp with gradients clamped as in torch-ngp)."""
    blob_shape: str = "linear"
    """"linear": raw += blob_density * (1 - r / blob_radius) (threestudio blob_magic3d);
    "gaussian": raw += blob_density * exp(-r^2 / (2 blob_radius^2)) (threestudio blob_dreamfusion); "none"."""
    blob_density: float = 10.0
    """Raw density the blob adds at the origin."""
    blob_radius: float = 0.5
    """Radius (world units) of the initial density blob."""
    normals: str = "analytic"
    """"analytic" (autograd through the encoding; fewer density queries than finite differences) or
    "finite_difference". Analytic falls back to finite differences, with a warning, where PyTorch
    cannot differentiate grid_sample twice."""
    finite_difference: str = "forward"
    """"forward" (3 extra density queries per point) or "central" (6, more accurate)."""
    normal_eps: float = 0.01
    """Finite-difference step in world units (about a grid cell of the finest level is a good choice)."""

    def validate(self, path: str = "field.nerf") -> None:
        from msd3d.registry import ENCODINGS

        k = lambda name: join(path, name)  # noqa: E731 - the full dotted key of a setting
        check_choice(k("encoding"), self.encoding, ENCODINGS.names())
        if len(self.resolutions) == 0 or any(int(r) < 2 for r in self.resolutions):
            raise ValueError(f"{k('resolutions')} must list at least one resolution, each at least 2")
        check_range(k("features"), self.features, 1)
        check_range(k("init_std"), self.init_std, 0)
        check_range(k("hidden_dim"), self.hidden_dim, 1)
        check_range(k("hidden_layers"), self.hidden_layers, 0)
        check_range(k("bound"), self.bound, 0, low_open=True)
        check_choice(k("density_activation"), self.density_activation, DENSITY_ACTIVATIONS)
        check_choice(k("blob_shape"), self.blob_shape, BLOB_SHAPES)
        if self.blob_shape != "none":
            check_range(k("blob_radius"), self.blob_radius, 0, low_open=True)
        check_choice(k("normals"), self.normals, NORMAL_METHODS)
        check_choice(k("finite_difference"), self.finite_difference, FINITE_DIFFERENCES)
        check_range(k("normal_eps"), self.normal_eps, 0, low_open=True)


class NeRFField(nn.Module):
    """A :class:`~msd3d.scene.base.RadianceField`: density and albedo inside ``[-bound, bound]^3``."""

    def __init__(self, config: NeRFConfig | None = None) -> None:
        super().__init__()
        self.config = config or NeRFConfig()
        self.config.validate()
        c = self.config
        self.bound = float(c.bound)
        self.encoding = build_encoding(c.encoding, tuple(c.resolutions), c.features, c.init_std)
        self.density_mlp = mlp(self.encoding.output_dim, c.hidden_dim, c.hidden_layers, 1)
        self.albedo_mlp = mlp(self.encoding.output_dim, c.hidden_dim, c.hidden_layers, 3)
        self._warned_fallback = False

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by optimiser group: "encoding" (the grids, ``train.lr``) and "network" (the MLPs,
        ``train.lr_network``)."""
        encoding = list(self.encoding.parameters())
        return {"encoding": encoding, "network": [*self.density_mlp.parameters(), *self.albedo_mlp.parameters()]}

    # ----------------------------------------------------------------------------------------------
    # building blocks
    def _features(self, points: Tensor) -> Tensor:
        """Encoded features (N, D) at world points (N, 3)."""
        return self.encoding(points / self.bound)

    def density_bias(self, points: Tensor) -> Tensor:
        """The blob added to the raw density, (N,) at points (N, 3)."""
        c = self.config
        if c.blob_shape == "none" or c.blob_density == 0:
            return torch.zeros(points.shape[:-1], device=points.device, dtype=points.dtype)
        r2 = points.pow(2).sum(-1)
        if c.blob_shape == "linear":
            return c.blob_density * (1.0 - torch.sqrt(r2 + 1e-12) / c.blob_radius)
        return c.blob_density * torch.exp(-0.5 * r2 / c.blob_radius**2)

    def _raw_density(self, points: Tensor, features: Tensor) -> Tensor:
        return self.density_mlp(features).squeeze(-1) + self.density_bias(points)

    def _inside(self, points: Tensor) -> Tensor:
        return (points.abs() <= self.bound).all(dim=-1)

    def _activate(self, points: Tensor, raw: Tensor) -> Tensor:
        sigma = density_activation(self.config.density_activation, raw)
        return torch.where(self._inside(points), sigma, torch.zeros_like(sigma))

    # ----------------------------------------------------------------------------------------------
    # RadianceField interface
    def density(self, points: Tensor) -> Tensor:
        """Density (...,) >= 0 at points (..., 3); zero outside the bound."""
        flat = points.reshape(-1, 3)
        return self._activate(flat, self._raw_density(flat, self._features(flat))).reshape(points.shape[:-1])

    def albedo(self, points: Tensor) -> Tensor:
        """Albedo (..., 3) in [0, 1] at points (..., 3)."""
        flat = points.reshape(-1, 3)
        return torch.sigmoid(self.albedo_mlp(self._features(flat))).reshape(*points.shape[:-1], 3)

    def forward(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """(density (...,), albedo (..., 3)) at points (..., 3), sharing one encoding pass."""
        sample = self.query(points.reshape(-1, 3))
        return sample.density.reshape(points.shape[:-1]), sample.albedo.reshape(*points.shape[:-1], 3)

    def normals(self, points: Tensor) -> Tensor:
        """Unit outward normals -grad(density)/|grad(density)| (..., 3) at points (..., 3)."""
        sample = self.query(points.reshape(-1, 3), with_normals=True, with_albedo=False)
        assert sample.normals is not None
        return sample.normals.reshape(points.shape)

    def query(self, points: Tensor, with_normals: bool = False, with_albedo: bool = True) -> FieldSample:
        """Density (N,), albedo (N, 3) and optionally normals (N, 3) at points (N, 3), in one pass.

        Normals are differentiable with respect to the parameters whenever grad mode is on.
        """
        if not with_normals:
            feats = self._features(points)
            raw = self._raw_density(points, feats)
            albedo = torch.sigmoid(self.albedo_mlp(feats)) if with_albedo else _empty_albedo(points)
            return FieldSample(self._activate(points, raw), albedo)
        if self.config.normals == "analytic":
            return self._query_analytic(points, with_albedo)
        return self._query_finite_difference(points, with_albedo)

    def _query_finite_difference(self, points: Tensor, with_albedo: bool) -> FieldSample:
        n, eps = points.shape[0], self.config.normal_eps
        offsets = eps * torch.eye(3, device=points.device, dtype=points.dtype)
        if self.config.finite_difference == "central":
            offsets = torch.cat([offsets, -offsets], dim=0)
        # one encoding pass over the points and all their offset copies: (N * (1 + K), 3)
        shifted = (points[None] + offsets[:, None]).reshape(-1, 3)
        all_points = torch.cat([points, shifted], dim=0)
        all_feats = self._features(all_points)
        all_raw = self._raw_density(all_points, all_feats)
        raw, raw_shifted = all_raw[:n], all_raw[n:].view(-1, n)
        if self.config.finite_difference == "central":
            grad = (raw_shifted[:3] - raw_shifted[3:]) / (2 * eps)  # (3, N)
        else:
            grad = (raw_shifted - raw[None]) / eps
        normals = F.normalize(-grad.t(), dim=-1, eps=1e-12)
        feats = all_feats[:n]
        albedo = torch.sigmoid(self.albedo_mlp(feats)) if with_albedo else _empty_albedo(points)
        return FieldSample(self._activate(points, raw), albedo, normals)

    def _query_analytic(self, points: Tensor, with_albedo: bool) -> FieldSample:
        train_through = torch.is_grad_enabled()
        if train_through and not grid_sample_is_twice_differentiable(points.device.type):
            if not self._warned_fallback:
                warnings.warn(
                    "field.nerf.normals=analytic needs grid_sample's second derivative, which this PyTorch build "
                    f"lacks on {points.device.type}; using finite differences instead",
                    stacklevel=2,
                )
                self._warned_fallback = True
            return self._query_finite_difference(points, with_albedo)
        with torch.enable_grad():
            pts = points if points.requires_grad else points.detach().requires_grad_(True)
            feats = self._features(pts)
            raw = self._raw_density(pts, feats)
            (grad,) = torch.autograd.grad(raw.sum(), pts, create_graph=train_through)
        normals = F.normalize(-grad, dim=-1, eps=1e-12)
        if not train_through:
            raw, feats = raw.detach(), feats.detach()
        albedo = torch.sigmoid(self.albedo_mlp(feats)) if with_albedo else _empty_albedo(points)
        return FieldSample(self._activate(points, raw), albedo, normals)


def _empty_albedo(points: Tensor) -> Tensor:
    return torch.zeros(points.shape[0], 3, device=points.device, dtype=points.dtype)
