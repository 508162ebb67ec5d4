"""A signed-distance NeRF: the geometry is an SDF, the density a VolSDF transform of it.

Same encoding and MLPs as :class:`msd3d.scene.nerf.NeRFField` (and the same
:class:`~msd3d.scene.base.RadianceField` interface), but the density MLP predicts a signed
distance ``sdf(p) = mlp(features(p)) + |p| - sdf_radius`` (threestudio's implicit-sdf geometry with
a sphere initialisation: the run starts from a ball of radius ``sdf_radius``), and the density is
VolSDF's ``sigma = Psi_beta(-sdf) / beta`` with ``Psi_beta`` the CDF of a zero-mean Laplace
distribution of scale ``beta`` (``field.sdf_beta``): ``1/beta`` deep inside, ``1/(2 beta)`` on the
surface, falling off over a few ``beta`` outside. An eikonal regulariser ``(|grad sdf| - 1)^2`` at
random points in the box (:meth:`SDFNeRFField.eikonal_loss`, weight ``field.sdf.eikonal_weight``) keeps
it a distance, so the surface stays one thin, well-defined level set.

Select it with ``field.name: sdf``; its settings are ``field.sdf.*`` (the NeRF's, plus the four below).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from msd3d.scene.nerf import NeRFConfig, NeRFField
from msd3d.validation import check_range, join


@dataclass
class SDFConfig(NeRFConfig):
    """A signed-distance field: the NeRF's encoding and MLPs, the density MLP predicting a distance."""

    sdf_beta: float = 0.02
    """Laplace scale of the VolSDF density (world units); density 1/beta inside."""
    sdf_radius: float = 0.5
    """Radius of the sphere the SDF starts from (the blob settings are unused)."""
    eikonal_weight: float = 0.1
    """Weight of the eikonal loss (|grad sdf| - 1)^2 at random points of the box."""
    eikonal_points: int = 1024
    """Random points per step for the eikonal loss."""

    def validate(self, path: str = "field.sdf") -> None:
        super().validate(path)
        check_range(join(path, "sdf_beta"), self.sdf_beta, 0, low_open=True)
        check_range(join(path, "sdf_radius"), self.sdf_radius, 0, low_open=True)
        check_range(join(path, "eikonal_weight"), self.eikonal_weight, 0)
        check_range(join(path, "eikonal_points"), self.eikonal_points, 1)


def laplace_density(neg_sdf: Tensor, beta: float) -> Tensor:
    """VolSDF density ``Psi_beta(-sdf) / beta`` from ``-sdf`` (...,)."""
    s = neg_sdf / beta
    psi = torch.where(s <= 0, 0.5 * torch.exp(s.clamp_max(0.0)), 1.0 - 0.5 * torch.exp(-s.clamp_min(0.0)))
    return psi / beta


class SDFNeRFField(NeRFField):
    """A :class:`NeRFField` whose density comes from a signed distance (see module docstring).

    Internally the "raw density" of the parent class is ``-sdf`` (larger inside), so the parent's
    normals ``-grad(raw) / |grad(raw)|`` are the SDF's outward normals ``grad(sdf) / |grad(sdf)|``.
    """

    config: SDFConfig

    def __init__(self, config: SDFConfig | None = None) -> None:
        super().__init__(config or SDFConfig())
        with torch.no_grad():  # start exactly on the sphere: the MLP's output starts at zero
            last = self.density_mlp[-1]
            last.weight.mul_(0.01)
            last.bias.zero_()

    def density_bias(self, points: Tensor) -> Tensor:
        """``-(|p| - sdf_radius)``: the sphere the SDF starts from (in raw = -sdf units)."""
        return self.config.sdf_radius - torch.sqrt(points.pow(2).sum(-1) + 1e-12)

    def _activate(self, points: Tensor, raw: Tensor) -> Tensor:
        sigma = laplace_density(raw, self.config.sdf_beta)
        return torch.where(self._inside(points), sigma, torch.zeros_like(sigma))

    def raw_density(self, points: Tensor) -> Tensor:
        """``-sdf`` (...,) at points (..., 3): the pre-activation density, not masked by the bound."""
        flat = points.reshape(-1, 3)
        return self._raw_density(flat, self._features(flat)).reshape(points.shape[:-1])

    def sdf(self, points: Tensor) -> Tensor:
        """Signed distance (...,) at points (..., 3), negative inside."""
        return -self.raw_density(points)

    def regulariser_losses(self, generator: torch.Generator) -> dict[str, Tensor]:
        """The field's own training losses (the trainer adds them): the weighted eikonal loss at
        ``eikonal_points`` uniform points of the box, drawn from the run's ``generator``."""
        c = self.config
        if c.eikonal_weight <= 0:
            return {}
        box = (2 * torch.rand(c.eikonal_points, 3, generator=generator) - 1) * self.bound
        device = next(self.parameters()).device
        return {"eikonal": c.eikonal_weight * self.eikonal_loss(box.to(device))}

    def eikonal_loss(self, points: Tensor) -> Tensor:
        """Mean ``(|grad sdf| - 1)^2`` at points (N, 3) (differentiable w.r.t. the parameters)."""
        with torch.enable_grad():
            pts = points.detach().requires_grad_(True)
            raw = self.raw_density(pts)
            (grad,) = torch.autograd.grad(raw.sum(), pts, create_graph=True)
        return (grad.norm(dim=-1) - 1.0).pow(2).mean()
