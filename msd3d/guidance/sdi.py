"""Score distillation via DDIM inversion (SDI, Lukoianov et al. 2024), in VE coordinates.

SDS adds fresh noise ``n`` to ``x``; SDI instead finds the noise the model itself would associate
with ``x``. The equations, numbered as the code cites them:

(1) inversion step, sigma increasing from ``sigma_min`` to ``sigma_end``: ``eps_hat = (z - D(z, sigma)) / sigma``,
    ``z' = D + sigma_next eps_hat`` (DDIM run backwards), starting at ``z = x``. ``inversion_grid``:
    "span" takes ``inversion_steps`` equal steps in time from 0 to ``t_end``; "fixed" (the official code)
    steps through the fixed grid ``k / inversion_steps`` of the whole schedule below ``t`` and then to
    ``t_end`` (fewer steps for small t);
(2) with ``inversion_eta``, fresh noise at each step. ``inversion_noise``:
    "mix": ``z' = D + sigma_next (sqrt(1 - eta^2) eps_hat + eta n)`` (0 = pure inversion, 1 = SDS noise);
    "ddpm" (the official code): ``z' = D + sigma_next eps_hat + eta s n`` with ``s`` the DDPM posterior std
    of the step ``sigma_next -> sigma`` in VE units, ``s^2 = sigma^2 (sigma_next^2 - sigma^2)
    (1 + sigma_next^2) / ((1 + sigma^2) sigma_next^2)`` (VP ``(1 - a_t)/(1 - a_n) (1 - a_n/a_t)`` over
    ``a_n``, with ``a = alpha_bar = 1 / (1 + sigma^2)``);
(3) ``t_end = t``, or with ``inversion_offset`` (the official code) ``t_end = min(t + u / inversion_steps,
    0.999)``, ``u ~ U[0, 1)``: the inversion overshoots by up to one grid step;
(4) target: one denoiser call at level ``sigma_t`` on the inverted point, ``D(z_end a_end^1/2 / a_t^1/2,
    sigma_t)`` (the VP latent at ``t_end`` read as one at ``t``, as the official code feeds it to the UNet;
    ``= D(z_t, sigma_t)`` without offset), with SDS's weight ``w(t) / sigma_t`` (gradient
    ``w(t) (eps_hat(z_t) - eps_inv)``) or, with ``weighting: constant`` (the official code), weight 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from msd3d.guidance.base import Guidance, GuidanceOutput, stat
from msd3d.guidance.sds import WEIGHTINGS, TimestepConfig, sample_times, sds_weight
from msd3d.priors.base import Condition, DiffusionPrior
from msd3d.rng import draw_device, rand, randn_like
from msd3d.validation import check_choice, check_range, join

INVERSION_GRIDS = ("span", "fixed")
INVERSION_NOISES = ("mix", "ddpm")
T_END_MAX = 0.999  # the official offset stops at the schedule's last step (999 of 1000)


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
    """Fresh noise in each inversion step, eq. (2): 0 = pure inversion."""
    inversion_noise: str = "mix"
    """How eta enters, eq. (2): "mix" (variance-preserving; eta = 1 is SDS's noise) or "ddpm" (official code)."""
    inversion_grid: str = "span"
    """Inversion steps, eq. (1): "span" (equal steps from 0 to t) or "fixed" (official: the k/steps grid below t)."""
    inversion_offset: bool = False
    """Invert up to one grid step past t, at random, and denoise there at level t, eq. (3) (official code)."""
    weighting: str = "sds"
    """"sds": w = 1 - alpha_bar (as SDS); "uniform": w = 1; "constant": weight 1 on x - D (official code)."""
    weight: float = 1.0
    """Extra loss multiplier."""

    def validate(self, path: str = "guidance.sdi") -> None:
        super().validate(path)
        check_range(join(path, "inversion_steps"), self.inversion_steps, 1)
        check_range(join(path, "inversion_eta"), self.inversion_eta, 0, 1)
        check_choice(join(path, "inversion_noise"), self.inversion_noise, INVERSION_NOISES)
        check_choice(join(path, "inversion_grid"), self.inversion_grid, INVERSION_GRIDS)
        if not isinstance(self.inversion_offset, bool):
            raise ValueError(f"{join(path, 'inversion_offset')} must be true or false, got {self.inversion_offset!r}")
        check_choice(join(path, "weighting"), self.weighting, WEIGHTINGS)


def inversion_times(t_end: float, steps: int, grid: str = "span", t: float | None = None) -> list[float]:
    """Increasing diffusion times of the inversion, from 0 to ``t_end``, eq. (1).

    "span": ``steps`` equal steps; "fixed": the grid points ``k / steps`` below ``t`` (default ``t_end``),
    then ``t_end``.
    """
    if grid == "span":
        return torch.linspace(0.0, t_end, steps + 1).tolist()
    t = t_end if t is None else t
    return [k / steps for k in range(steps) if k / steps < t] + [t_end]


def ddim_invert(
    prior: DiffusionPrior,
    x: Tensor,
    cond: Condition,
    t: float,
    steps: int,
    guidance_scale: float,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    noise: str = "mix",
    times: list[float] | None = None,
) -> tuple[Tensor, float]:
    """DDIM-invert clean ``x`` (B, *data) to diffusion time ``t`` (or along ``times``); returns (z, sigma_end)."""
    times = torch.linspace(0.0, t, steps + 1).tolist() if times is None else times
    sigmas = prior.sigma_from_time(torch.tensor(times)).tolist()  # increasing, sigmas[0] = sigma_min
    z = x
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        d = prior.denoise(z, sigma, cond, guidance_scale)
        eps = (z - d) / sigma  # (1)
        if eta > 0 and noise == "mix":
            eps = math.sqrt(1 - eta**2) * eps + eta * randn_like(eps, generator)  # (2) "mix"
        z = d + sigma_next * eps  # (1)
        if eta > 0 and noise == "ddpm":  # (2) "ddpm": the DDPM posterior std of the step, VE units
            var = sigma**2 * (sigma_next**2 - sigma**2) * (1 + sigma_next**2) / ((1 + sigma**2) * sigma_next**2)
            z = z + eta * math.sqrt(max(var, 0.0)) * randn_like(z, generator)
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
        t_end = t
        if c.inversion_offset:  # (3)
            t_end = min(t + float(rand(1, generator, draw_device(generator, x))[0]) / c.inversion_steps, T_END_MAX)
            t_end = max(t_end, t)
        times = inversion_times(t_end, c.inversion_steps, c.inversion_grid, t)
        z, sigma_end = ddim_invert(
            self.prior, x, cond, t, c.inversion_steps, c.inversion_guidance_scale, c.inversion_eta, generator,
            noise=c.inversion_noise, times=times,
        )
        sigma_t = float(self.prior.sigma_from_time(torch.tensor([t]))[0])
        # (4) the VP latent at t_end, labelled t: rescale VE by alpha_end / alpha_t
        z = z * math.sqrt((1 + sigma_t**2) / (1 + sigma_end**2))
        target = self.prior.denoise(z, sigma_t, cond, c.guidance_scale)  # (4)
        sigma = torch.full((x.shape[0],), sigma_t, device=x.device)
        weight = c.weight * sds_weight(sigma, c.weighting)
        noise_norm = ((z - x) / sigma_t).flatten(1).norm(dim=1) / math.sqrt(x[0].numel())
        noise_rms = stat(noise_norm.mean(), self.defer_stats)
        stats = {"t": t, "t_end": t_end, "sigma": sigma_t, "inverted_noise_rms": noise_rms}
        return GuidanceOutput(target=target.detach(), weight=weight, stats=stats)
