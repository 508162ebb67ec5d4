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
  the default: grid_sample is twice differentiable in current PyTorch, and on 2 CPU cores a lit
  64x64 render trains about 1.4x faster than with forward differences, which query the density at
  4x the points) or by finite differences of the raw density. Both are differentiable with respect
  to the field's parameters, so lit shading and the orientation loss shape the geometry.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msd3d.scene.encodings import build_encoding, grid_sample_is_twice_differentiable

ENCODINGS = ("triplane", "dense")
DENSITY_ACTIVATIONS = ("softplus", "exp", "trunc_exp")
BLOB_SHAPES = ("linear", "gaussian", "none")
NORMAL_METHODS = ("finite_difference", "analytic")
FINITE_DIFFERENCES = ("forward", "central")
FIELD_KINDS = ("density", "sdf")


@dataclass
class FieldConfig:
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
    """"analytic" (autograd through the encoding; about 1.4x cheaper than forward differences on CPU
    when trained through) or "finite_difference". Analytic falls back to finite differences, with a
    warning, where PyTorch cannot differentiate grid_sample twice."""
    finite_difference: str = "forward"
    """"forward" (3 extra density queries per point) or "central" (6, more accurate)."""
    normal_eps: float = 0.01
    """Finite-difference step in world units (about a grid cell of the finest level is a good choice)."""
    kind: str = "density"
    """"density": the MLP predicts a density (NeRF); "sdf": it predicts a signed distance, turned into
    a VolSDF density (``msd3d.scene.sdf_field``; the blob settings are then unused)."""
    sdf_beta: float = 0.02
    """kind=sdf: Laplace scale of the VolSDF density (world units); density 1/beta inside."""
    sdf_radius: float = 0.5
    """kind=sdf: radius of the sphere the SDF starts from."""
    eikonal_weight: float = 0.1
    """kind=sdf: weight of the eikonal loss (|grad sdf| - 1)^2 at random points of the box."""
    eikonal_points: int = 1024
    """kind=sdf: random points per step for the eikonal loss."""

    def validate(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ValueError(f"field.encoding must be one of {', '.join(ENCODINGS)}, got {self.encoding!r}")
        if len(self.resolutions) == 0 or any(int(r) < 2 for r in self.resolutions):
            raise ValueError("field.resolutions must list at least one resolution, each at least 2")
        if self.features < 1:
            raise ValueError("field.features must be at least 1")
        if self.init_std < 0:
            raise ValueError("field.init_std must be non-negative")
        if self.hidden_dim < 1:
            raise ValueError("field.hidden_dim must be at least 1")
        if self.hidden_layers < 0:
            raise ValueError("field.hidden_layers must be non-negative")
        if self.bound <= 0:
            raise ValueError("field.bound must be positive")
        if self.density_activation not in DENSITY_ACTIVATIONS:
            raise ValueError(
                f"field.density_activation must be one of {', '.join(DENSITY_ACTIVATIONS)}, "
                f"got {self.density_activation!r}"
            )
        if self.blob_shape not in BLOB_SHAPES:
            raise ValueError(f"field.blob_shape must be one of {', '.join(BLOB_SHAPES)}, got {self.blob_shape!r}")
        if self.blob_shape != "none" and self.blob_radius <= 0:
            raise ValueError("field.blob_radius must be positive")
        if self.normals not in NORMAL_METHODS:
            raise ValueError(f"field.normals must be one of {', '.join(NORMAL_METHODS)}, got {self.normals!r}")
        if self.finite_difference not in FINITE_DIFFERENCES:
            raise ValueError(
                f"field.finite_difference must be one of {', '.join(FINITE_DIFFERENCES)}, "
                f"got {self.finite_difference!r}"
            )
        if self.normal_eps <= 0:
            raise ValueError("field.normal_eps must be positive")
        if self.kind not in FIELD_KINDS:
            raise ValueError(f"field.kind must be one of {', '.join(FIELD_KINDS)}, got {self.kind!r}")
        if self.sdf_beta <= 0 or self.sdf_radius <= 0:
            raise ValueError("field.sdf_beta and field.sdf_radius must be positive")
        if self.eikonal_weight < 0 or self.eikonal_points < 1:
            raise ValueError("field.eikonal_weight must be >= 0 and field.eikonal_points >= 1")


class _TruncExp(torch.autograd.Function):
    """exp(x) whose backward clamps x at 15 (torch-ngp), avoiding overflowing gradients."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: Tensor) -> Tensor:
    return _TruncExp.apply(x)


def density_activation(name: str, raw: Tensor) -> Tensor:
    """Non-negative density from a raw density."""
    if name == "softplus":
        return F.softplus(raw)
    if name == "exp":
        return torch.exp(raw)
    if name == "trunc_exp":
        return trunc_exp(raw)
    raise ValueError(f"unknown density activation {name!r}")


def mlp(in_dim: int, hidden_dim: int, hidden_layers: int, out_dim: int) -> nn.Sequential:
    """A ReLU MLP with ``hidden_layers`` hidden layers of width ``hidden_dim``."""
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(hidden_layers):
        layers += [nn.Linear(dim, hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*layers)


@dataclass
class FieldSample:
    """Field values at N points; ``normals`` is None unless asked for."""

    density: Tensor  # (N,)
    albedo: Tensor  # (N, 3)
    normals: Tensor | None = None  # (N, 3) unit, outward


class NeRFField(nn.Module):
    """A :class:`~msd3d.scene.base.RadianceField`: density and albedo inside ``[-bound, bound]^3``."""

    def __init__(self, config: FieldConfig | None = None) -> None:
        super().__init__()
        self.config = config or FieldConfig()
        self.config.validate()
        c = self.config
        self.bound = float(c.bound)
        self.encoding = build_encoding(c.encoding, tuple(c.resolutions), c.features, c.init_std)
        self.density_mlp = mlp(self.encoding.output_dim, c.hidden_dim, c.hidden_layers, 1)
        self.albedo_mlp = mlp(self.encoding.output_dim, c.hidden_dim, c.hidden_layers, 3)
        self._warned_fallback = False

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

    def raw_density(self, points: Tensor) -> Tensor:
        """Pre-activation density (..., ) at points (..., 3), blob included, not masked by the bound."""
        flat = points.reshape(-1, 3)
        return self._raw_density(flat, self._features(flat)).reshape(points.shape[:-1])

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
                    "field.normals=analytic needs grid_sample's second derivative, which this PyTorch build "
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
