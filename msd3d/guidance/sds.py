"""Score distillation sampling (SDS), threestudio-equivalent, in VE coordinates.

threestudio applies ``grad = w(t) (eps_hat - eps)`` with ``w = 1 - alpha_bar_t`` to the latents.
With ``z = x + sigma n`` and ``eps_hat = (z - D) / sigma`` this is ``w(t) (x - D) / sigma``, i.e. the
target ``D(z, sigma)`` with VE weight ``(1 - alpha_bar) / sigma = sigma / (1 + sigma^2)``.

Guidance scale convention: standard CFG, ``D = D_u + s (D_c - D_u)``. threestudio combines
``noise_pred_text + guidance_scale * (noise_pred_text - noise_pred_uncond)``
(threestudio/models/guidance/stable_diffusion_guidance.py, ``compute_grad_sds``), i.e.
``eps_u + (g + 1)(eps_c - eps_u)``: its ``guidance_scale: g`` is ``s = g + 1`` here (its 100 is 101 here,
our 100 its 99).

Weightings (``w(t)`` of threestudio's ``w (eps_hat - eps)``): "sds" ``w = 1 - alpha_bar``, "uniform"
``w = 1`` (both VE weight ``w / sigma``), and "constant": VE weight 1 on ``x - D``, the loss
``1/2 ||x - D||^2`` on the clean estimate that SDI's official code uses (no ``w(t)`` at all).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from msd3d.guidance.base import Guidance, GuidanceOutput, stat
from msd3d.priors.base import Condition, DiffusionPrior
from msd3d.rng import draw_device, rand, randn_like, to_device
from msd3d.schedules import anneal
from msd3d.validation import check_choice, join

WEIGHTINGS = ("sds", "uniform", "constant")
T_SCHEDULES = ("random", "anneal")


@dataclass
class TimestepConfig:
    """Which diffusion times (fractions of the schedule) a method samples."""

    t_min: float = 0.02
    """Smallest diffusion time drawn (fraction of the schedule; threestudio 0.02)."""
    t_max: float = 0.98
    """Largest diffusion time drawn (threestudio 0.98)."""
    t_schedule: str = "random"
    """"random": uniform in [t_min, t_max] each step; "anneal": t_max -> t_min linearly over the run."""

    def validate(self, path: str) -> None:
        if not 0 <= self.t_min < self.t_max <= 1:
            raise ValueError(f"{path}.t_min and {path}.t_max must satisfy 0 <= t_min < t_max <= 1")
        check_choice(join(path, "t_schedule"), self.t_schedule, T_SCHEDULES)


def sample_times(
    config: TimestepConfig, batch: int, step: int, total_steps: int, generator: torch.Generator | None, device
) -> Tensor:
    """(B,) diffusion times for this optimisation step."""
    if config.t_schedule == "anneal":
        t = anneal(config.t_max, config.t_min, step, total_steps)
        return torch.full((batch,), t, device=device)
    return config.t_min + (config.t_max - config.t_min) * rand(batch, generator, device)


def noised_render(
    prior: DiffusionPrior, config: TimestepConfig, x: Tensor, step: int, total_steps: int,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """SDS's noisy render: times t (B,) and sigma_t (B,) drawn where the generator draws (the CPU: no
    device round trip), sigma (B,) on x's device, and ``z = x + sigma n`` (B, *data)."""
    t = sample_times(config, x.shape[0], step, total_steps, generator, draw_device(generator, x))
    sigma_t = prior.sigma_from_time(t)
    sigma = to_device(sigma_t, x.device)
    z = x + sigma.view(-1, *([1] * (x.ndim - 1))).to(x.dtype) * randn_like(x, generator)
    return t, sigma_t, sigma, z


def sds_weight(sigma: Tensor, weighting: str) -> Tensor:
    """VE weight of ``x - D`` (B,) for sigma (B,): ``w(t) / sigma`` for a threestudio weighting, 1 for "constant"."""
    if weighting == "constant":
        return torch.ones_like(sigma)
    if weighting == "sds":
        return sigma / (1 + sigma**2)  # w = 1 - alpha_bar = sigma^2 / (1 + sigma^2)
    if weighting == "uniform":
        return 1.0 / sigma
    raise ValueError(f"unknown weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")


@dataclass
class SDSConfig(TimestepConfig):
    guidance_scale: float = 100.0
    """Standard CFG scale (threestudio's guidance_scale g is g + 1 here: its 100 is 101)."""
    weighting: str = "sds"
    """"sds": w = 1 - alpha_bar (threestudio); "uniform": w = 1; "constant": weight 1 on x - D."""
    weight: float = 1.0
    """Extra loss multiplier."""

    def validate(self, path: str = "guidance.sds") -> None:
        super().validate(path)
        check_choice(join(path, "weighting"), self.weighting, WEIGHTINGS)


class SDS(Guidance):
    """``target = D(x + sigma n, sigma)``, weight ``w(t)/sigma``: one (CFG-batched) denoiser call."""

    name = "sds"
    config_class = SDSConfig
    config: SDSConfig


    def denoiser_calls(self) -> int:
        return 1

    def __call__(
        self,
        x: Tensor,
        cond: Condition,
        step: int = 0,
        total_steps: int = 1,
        generator: torch.Generator | None = None,
    ) -> GuidanceOutput:
        x = x.detach()
        t, sigma_t, sigma, z = noised_render(self.prior, self.config, x, step, total_steps, generator)
        target = self.prior.denoise(z, sigma, cond, self.config.guidance_scale)
        weight = self.config.weight * sds_weight(sigma, self.config.weighting)
        stats = {"t": stat(t.mean(), self.defer_stats), "sigma": stat(sigma_t.mean(), self.defer_stats)}
        return GuidanceOutput(target=target.detach(), weight=weight, stats=stats)
