"""Geometry regularisers of text-to-3D NeRFs (DreamFusion / threestudio), with step-scheduled weights.

* **orientation** (DreamFusion): ``sum_i sg(w_i) * max(0, n_i . d_i)^2`` over the samples of each ray,
  averaged over the rays that have any opacity: penalises normals that face away from the camera
  (``n . d > 0`` with ``d`` the ray direction), which otherwise let the scene "paint" geometry on
  the inside of surfaces. Gradients reach the normals, not the weights (as in threestudio).
* **sparsity** (threestudio ``lambda_sparsity``): ``mean sqrt(opacity^2 + 0.01)``, a smooth L1 that
  removes floaters.
* **opaque** (threestudio ``lambda_opaque``): the binary entropy of the opacity, pushing pixels to be
  fully transparent or fully opaque.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from msd3d.render.volume import RenderOutput
from msd3d.schedules import Schedule

#: A regulariser weight over the run (the shared schedule type).
WeightSchedule = Schedule


@dataclass
class RegulariserConfig:
    """Weights of the geometry regularisers (threestudio dreamfusion-sd defaults)."""

    orientation: WeightSchedule = field(
        default_factory=lambda: WeightSchedule(start=10.0, end=1000.0, start_step=0, end_step=5000)
    )
    sparsity: WeightSchedule = field(default_factory=lambda: WeightSchedule(start=1.0))
    opaque: WeightSchedule = field(default_factory=lambda: WeightSchedule(start=0.0))

    def validate(self) -> None:
        self.orientation.validate("regularisers.orientation")
        self.sparsity.validate("regularisers.sparsity")
        self.opaque.validate("regularisers.opaque")

    def weights(self, step: int, total_steps: int | None = None) -> dict[str, float]:
        return {
            "orientation": self.orientation.value(step, total_steps),
            "sparsity": self.sparsity.value(step, total_steps),
            "opaque": self.opaque.value(step, total_steps),
        }

    def needs_normals(self, step: int, total_steps: int | None = None) -> bool:
        """Whether the render of ``step`` must carry sample normals (orientation weight > 0)."""
        return self.orientation.value(step, total_steps) > 0


def orientation_loss(output: RenderOutput) -> Tensor:
    """``sum_i sg(w_i) max(0, n_i . d_i)^2`` summed over samples, averaged over rays with opacity > 0."""
    if output.sample_normals is None:
        raise ValueError("the orientation loss needs sample normals: render with with_normals=True")
    if output.num_samples == 0:
        return output.opacity.sum() * 0.0
    facing_away = (output.sample_normals * output.sample_directions).sum(-1).clamp_min(0.0)
    total = (output.weights.detach() * facing_away.square()).sum()
    visible = (output.opacity > 0).sum().clamp_min(1)
    return total / visible


def opacity_sparsity_loss(opacity: Tensor) -> Tensor:
    """Smooth L1 ``mean sqrt(opacity^2 + 0.01)`` of per-pixel opacity (B, H, W, 1)."""
    return torch.sqrt(opacity.square() + 0.01).mean()


def opacity_entropy_loss(opacity: Tensor, eps: float = 1e-3) -> Tensor:
    """Binary entropy of per-pixel opacity (B, H, W, 1), zero at 0 and 1."""
    o = opacity.clamp(eps, 1.0 - eps)
    return -(o * torch.log(o) + (1.0 - o) * torch.log(1.0 - o)).mean()


def regulariser_losses(
    output: RenderOutput, config: RegulariserConfig, step: int, total_steps: int | None = None
) -> dict[str, Tensor]:
    """The weighted regulariser losses active at ``step``: name -> weight * term (weight-0 terms omitted).

    Names are "orientation", "sparsity" and "opaque"; the trainer adds them to its loss.
    """
    weights = config.weights(step, total_steps)
    losses: dict[str, Tensor] = {}
    if weights["orientation"] > 0:
        losses["orientation"] = weights["orientation"] * orientation_loss(output)
    if weights["sparsity"] > 0:
        losses["sparsity"] = weights["sparsity"] * opacity_sparsity_loss(output.opacity)
    if weights["opaque"] > 0:
        losses["opaque"] = weights["opaque"] * opacity_entropy_loss(output.opacity)
    return losses
