"""Score distillation via DDIM inversion (SDI, Lukoianov et al. 2024), in VE coordinates.

SDS adds fresh noise ``n`` to ``x``; SDI instead finds the noise the model itself would associate
with ``x``. The equations, numbered as the code cites them:

(1) inversion step, sigma increasing from ``sigma_min`` to ``sigma_t``: ``eps_hat = (z - D(z, sigma)) / sigma``,
    ``z' = D + sigma_next eps_hat`` (DDIM run backwards), starting at ``z = x``;
(2) with ``inversion_eta``, fresh noise mixed in at the same level:
    ``z' = D + sigma_next (sqrt(1 - eta^2) eps_hat + eta n)`` (0 = pure inversion, 1 = SDS noise);
(3) target ``D(z_t, sigma_t)`` (one denoiser call at the inverted point) with SDS's weight
    ``w(t) / sigma_t``, so the gradient is ``w(t) (eps_hat(z_t) - eps_inv)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from msd3d.guidance.base import Guidance, GuidanceOutput, stat
from msd3d.guidance.sds import WEIGHTINGS, TimestepConfig, sample_times, sds_weight
from msd3d.priors.base import Condition, DiffusionPrior
from msd3d.rng import draw_device, randn_like
from msd3d.validation import check_choice, check_range, join


@dataclass
class SDIConfig(TimestepConfig):
    t_schedule: str = "anneal"
    """SDI anneals t from t_max to t_min over the run (or "random", as SDS)."""
    guidance_scale: float = 7.5
    """Standard CFG scale of the final one-step estimate."""
    inversion_steps: int = 10
    """DDIM steps from x up to the level t (the step costs inversion_steps + 1 denoiser calls)."""
    inversion_guidance_scale: float = 1.0
    """CFG scale of the denoiser calls inside the inversion (1 = conditional, unguided)."""
    inversion_eta: float = 0.0
    """Fresh noise mixed into each inversion step: 0 = pure inversion, 1 = SDS's random noise."""
    weighting: str = "sds"
    """"sds": w = 1 - alpha_bar (as SDS); "uniform": w = 1."""
    weight: float = 1.0
    """Extra loss multiplier."""

    def validate(self, path: str = "guidance.sdi") -> None:
        super().validate(path)
        check_range(join(path, "inversion_steps"), self.inversion_steps, 1)
        check_range(join(path, "inversion_eta"), self.inversion_eta, 0, 1)
        check_choice(join(path, "weighting"), self.weighting, WEIGHTINGS)


def ddim_invert(
    prior: DiffusionPrior,
    x: Tensor,
    cond: Condition,
    t: float,
    steps: int,
    guidance_scale: float,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, float]:
    """DDIM-invert clean ``x`` (B, *data) to diffusion time ``t``; returns (z_t, sigma_t)."""
    times = torch.linspace(0.0, t, steps + 1)
    sigmas = prior.sigma_from_time(times).tolist()  # increasing, sigmas[0] = sigma_min
    z = x
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        d = prior.denoise(z, sigma, cond, guidance_scale)
        eps = (z - d) / sigma  # (1)
        if eta > 0:
            eps = math.sqrt(1 - eta**2) * eps + eta * randn_like(eps, generator)  # (2)
        z = d + sigma_next * eps  # (1)
    return z, sigmas[-1]


class SDI(Guidance):
    """SDS with inverted instead of random noise: ``inversion_steps + 1`` denoiser calls."""

    name = "sdi"
    config_class = SDIConfig
    config: SDIConfig


    def denoiser_calls(self) -> int:
        return self.config.inversion_steps + 1

    def __call__(
        self,
        x: Tensor,
        cond: Condition,
        step: int = 0,
        total_steps: int = 1,
        generator: torch.Generator | None = None,
    ) -> GuidanceOutput:
        c = self.config
        x = x.detach()
        # one shared time per step: the inversion walks the whole batch through the same levels
        t = float(sample_times(c, 1, step, total_steps, generator, draw_device(generator, x))[0])
        z, sigma_t = ddim_invert(
            self.prior, x, cond, t, c.inversion_steps, c.inversion_guidance_scale, c.inversion_eta, generator
        )
        target = self.prior.denoise(z, sigma_t, cond, c.guidance_scale)  # (3)
        sigma = torch.full((x.shape[0],), sigma_t, device=x.device)
        weight = c.weight * sds_weight(sigma, c.weighting)
        noise_norm = ((z - x) / sigma_t).flatten(1).norm(dim=1) / math.sqrt(x[0].numel())
        stats = {"t": t, "sigma": sigma_t, "inverted_noise_rms": stat(noise_norm.mean(), self.defer_stats)}
        return GuidanceOutput(target=target.detach(), weight=weight, stats=stats)
