"""Mean-shift distillation (MSD): mode seeking with a product-distribution sampler.

The mean-shift vector ``m(x) = E_{y~q}[y] - x`` with ``q(y|x) ∝ p(y|c) G_lambda(x - y)`` equals
``lambda^2 grad log (p * G_lambda)(x)``; its zeros approach the modes of ``p`` as ``lambda -> 0``.
MSD draws ``y ~ q`` with the prior's own reverse process plus the kernel's score and returns
``target = mean_k y_k`` for the loss ``1/2 ||x - target||^2``, so the gradient is ``-m(x)`` (estimated).

Sampler (VE coordinates, docs/design.md §1): start at ``z = x + s_noise * sigma_start * n``; for each
step ``sigma -> sigma'`` take a DDIM step ``z' = D + (sigma'/sigma)(z - D)`` (with optional eta noise),
then integrate the kernel term exactly over the step (operator splitting):

* ``kernel="exp"`` (the paper): ``z' <- x + (z' - x) exp(-Delta / lambda^2)``,
  ``Delta = (sigma^2 - sigma'^2) / 2``;
* ``kernel="diffused"``: the kernel convolved with the current noise,
  ``z' <- x + (z' - x) sqrt((lambda^2 + sigma'^2) / (lambda^2 + sigma^2))``.

* ``kernel="posterior"``: the exact score of the noisy product ``q_sigma``. A clean ``y`` seen through
  two Gaussian observations, ``x`` (noise lambda) and ``z`` (noise sigma), is seen through one:
  ``z_eff = (z/sigma^2 + x/lambda^2) / (1/sigma^2 + 1/lambda^2)`` at ``sigma_eff^-2 = sigma^-2 + lambda^-2``,
  so ``E[y | z, x] = D(z_eff, sigma_eff)``. The DDIM step uses that denoiser; nothing is split off.
  With an exact denoiser the estimate's mean is the exact mean shift (tests check this on GMMs).

The kernel acts only while the diffusion time of the step lies in ``[kernel_t_min, kernel_t_max]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from msd3d.guidance.base import Guidance, GuidanceOutput, interpolate, progress, randn_like, stat
from msd3d.priors.base import Condition, DiffusionPrior

KERNELS = ("exp", "diffused", "posterior")


@dataclass
class MSDConfig:
    """Mean-shift distillation settings (lambda is in the prior's data units)."""

    guidance_scale: float = 7.5
    """Classifier-free guidance inside the sampler (standard convention, 1 = off)."""
    sampler_steps: int = 4
    """Denoising steps per product sample (one batched denoiser call each)."""
    samples: int = 1
    """Product samples averaged per estimate; they run as one batch."""
    eta: float = 0.0
    """0 = deterministic DDIM steps, 1 = fully stochastic (ancestral) steps."""
    kernel: str = "posterior"
    """How the kernel enters the sampler: "exp" (paper), "diffused" or "posterior" (exact product score)."""
    t_start: float = 0.98
    """Diffusion time (fraction of the schedule) where each product sampler chain starts."""
    start_noise_scale: float = 1.0
    """Scale of the start noise: ``z0 = x + start_noise_scale * sigma_start * n``."""
    kernel_t_min: float = 0.0
    """The kernel term acts only on sampler steps whose diffusion time is at least this ..."""
    kernel_t_max: float = 1.0
    """... and at most this (the paper applies the kernel on a limited sigma interval)."""
    lambda_start: float = 2.0
    """Kernel bandwidth at the first step, in the prior's data units (large = smooth, global)."""
    lambda_end: float = 0.2
    """Kernel bandwidth at the last step (small = sharp, mode-local)."""
    lambda_schedule: str = "log_linear"
    """Bandwidth annealing over the run: constant, linear, log_linear or cosine."""
    weight: float = 1.0
    """Loss weight ``w`` of ``1/2 w ||x - target||^2``."""

    def validate(self) -> None:
        if self.sampler_steps < 1:
            raise ValueError("msd.sampler_steps must be at least 1")
        if self.samples < 1:
            raise ValueError("msd.samples must be at least 1")
        if self.lambda_start <= 0 or self.lambda_end <= 0:
            raise ValueError("msd.lambda_start and msd.lambda_end must be positive")
        if self.kernel not in KERNELS:
            raise ValueError(f"msd.kernel must be one of {', '.join(KERNELS)}, got {self.kernel!r}")
        if not 0 < self.t_start <= 1:
            raise ValueError("msd.t_start must be in (0, 1]")
        if not 0 <= self.eta <= 1:
            raise ValueError("msd.eta must be in [0, 1]")
        if self.start_noise_scale < 0:
            raise ValueError("msd.start_noise_scale must be non-negative")
        if self.kernel_t_min > self.kernel_t_max:
            raise ValueError("msd.kernel_t_min must not exceed msd.kernel_t_max")


def kernel_factor(kernel: str, lam: float, sigma: Tensor, sigma_next: Tensor) -> Tensor:
    """Exact contraction of ``z - x`` over one step ``sigma -> sigma_next`` under the kernel score."""
    if kernel == "exp":
        delta = 0.5 * (sigma**2 - sigma_next**2)
        return torch.exp(-delta / lam**2)
    return torch.sqrt((lam**2 + sigma_next**2) / (lam**2 + sigma**2))


def mean_shift_target(
    prior: DiffusionPrior,
    x: Tensor,
    cond: Condition,
    lam: float,
    config: MSDConfig,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Estimate ``E_q[y]`` for ``q(y|x) ∝ p(y|c) G_lambda(x - y)``.

    x: (B, *data); returns (target (B, *data), samples (S, B, *data)) with S = ``config.samples``.
    All S chains run in one batch; each sampler step is one (CFG-batched) denoiser call.
    """
    batch, samples = x.shape[0], config.samples
    x = x.detach()
    xs = x.repeat(samples, *([1] * (x.ndim - 1)))  # (S*B, *data), sample-major
    cond_s = cond.repeat(samples) if samples > 1 else cond
    times = torch.linspace(config.t_start, 0.0, config.sampler_steps + 1)
    sigmas = prior.sigma_from_time(times[:-1]).tolist() + [0.0]  # decreasing to 0
    z = xs + config.start_noise_scale * sigmas[0] * randn_like(xs, generator)
    for i in range(config.sampler_steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        kernel_on = config.kernel_t_min <= float(times[i]) <= config.kernel_t_max
        if kernel_on and config.kernel == "posterior":
            precision = 1.0 / sigma**2 + 1.0 / lam**2
            z_eff = (z / sigma**2 + xs / lam**2) / precision
            d = prior.denoise(z_eff, precision**-0.5, cond_s, config.guidance_scale)
        else:
            d = prior.denoise(z, sigma, cond_s, config.guidance_scale)
        if config.eta > 0 and sigma_next > 0:
            sigma_up = config.eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)
            sigma_down = math.sqrt(max(sigma_next**2 - sigma_up**2, 0.0))
            z = d + (sigma_down / sigma) * (z - d) + sigma_up * randn_like(z, generator)
        else:
            z = d + (sigma_next / sigma) * (z - d)
        if kernel_on and config.kernel != "posterior":
            f = kernel_factor(config.kernel, lam, torch.tensor(sigma), torch.tensor(sigma_next))
            z = xs + (z - xs) * f.to(z.dtype)
    ys = z.reshape(samples, batch, *x.shape[1:])
    return ys.mean(0), ys


class MSD(Guidance):
    """Mean-shift distillation with bandwidth annealing ``lambda(step)``."""

    name = "msd"
    config_class = MSDConfig
    config: MSDConfig


    def bandwidth(self, step: int, total_steps: int) -> float:
        c = self.config
        return interpolate(c.lambda_start, c.lambda_end, progress(step, total_steps), c.lambda_schedule)

    def __call__(
        self,
        x: Tensor,
        cond: Condition,
        step: int = 0,
        total_steps: int = 1,
        generator: torch.Generator | None = None,
    ) -> GuidanceOutput:
        lam = self.bandwidth(step, total_steps)
        target, ys = mean_shift_target(self.prior, x, cond, lam, self.config, generator)
        shift = (target - x.detach()).flatten(1).norm(dim=1)
        weight = torch.full((x.shape[0],), self.config.weight, device=x.device)
        stats = {
            "lambda": lam,
            "mean_shift_norm": stat(shift.mean(), self.defer_stats),
            "sample_spread": stat(ys.std(0).mean(), self.defer_stats) if ys.shape[0] > 1 else 0.0,
        }
        return GuidanceOutput(target=target.detach(), weight=weight, stats=stats)
