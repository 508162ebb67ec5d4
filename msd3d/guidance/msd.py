"""Mean-shift distillation (MSD): mode seeking with a product-distribution sampler.

The equations, numbered as the code cites them:

(1) ``q(y|x) ∝ p(y|c) G_lambda(x - y)``: the product of the prior and a Gaussian kernel of width lambda;
(2) ``m(x) = E_{y~q}[y] - x = lambda^2 grad log (p * G_lambda)(x)``: the mean shift, whose zeros approach
    the modes of ``p`` as ``lambda -> 0``;
(3) ``target = mean_k y_k`` with ``y_k ~ q`` drawn by the sampler below; the loss ``1/2 ||x - target||^2``
    then has gradient ``-m(x)`` (estimated).

Sampler (VE coordinates, docs/design.md §1):

(4) start of each chain, ``start`` (``s_noise`` = ``start_noise_scale``):
    ``"x"``: ``z = x + s_noise * sigma_start * n``;
    ``"product"``: ``z = D(x, lambda) + s_noise * sqrt(sigma_start^2 + lambda^2) * n`` (one extra denoiser call).
    The chains should start in the noisy product ``q_sigma = q * N(0, sigma^2)``, whose mean is ``x + m(x)``
    and whose covariance is ``Cov_q + sigma^2 I``. Where ``p`` is broad near ``x``, ``q ≈ N(x, lambda^2)``,
    so ``q_sigma ≈ N(x + m, (sigma^2 + lambda^2) I)``; ``"x"`` misses both the mean ``m`` and the variance
    ``lambda^2``. The first DDIM step (5) keeps the fraction ``sigma'/sigma`` of the start's offset from the
    product mean, so starting at ``x`` biases the estimate by about ``-(sigma_1/sigma_start) m`` before the
    later steps shrink it (none with one step: ``sigma_1 = 0``). ``D(x, lambda) = x + m(x)`` is the one-call
    posterior estimate (7) at ``sigma -> inf``: exact with an exact denoiser, so ``"product"`` starts at the
    right mean and (for broad ``p``) the right variance. Measured on the test GMM (scripts/msd_start_bias.py,
    20000 chains): bias / |m| at lambda = 1, 2 falls from 2.8 / 5.4 % to 1.1 / 1.2 % at 4 steps and from
    0.16 / 0.46 % to 0.04 / 0.04 % at 1 step; widening the noise alone (``x + sqrt(sigma^2 + lambda^2) n``)
    changes nothing, so the bias is the start's missing mean. With a small learned MLP denoiser (60 s of
    training, ``--learned 60``) the same at 4 / 16 steps: 4.1 / 4.9 % -> 2.1 / 1.9 % (lambda = 1) and
    5.9 / 6.6 % -> 1.6 / 0.9 % (lambda = 2); 1 step 3.0 -> 2.9 % and 1.0 -> 0.9 %. Default "x": at 1 step
    "product" costs twice the calls for a small gain; with several steps it costs one call more and wins;
(5) each step ``sigma -> sigma'``: DDIM ``z' = D + (sigma'/sigma)(z - D)``, or with eta noise
    ``z' = D + (sigma_down/sigma)(z - D) + sigma_up n`` with
    ``sigma_up = eta sqrt(sigma'^2 (sigma^2 - sigma'^2) / sigma^2)``, ``sigma_down = sqrt(sigma'^2 - sigma_up^2)``;
(6) then the kernel term integrated exactly over the step (operator splitting):
    ``kernel="exp"`` (the paper): ``z' <- x + (z' - x) exp(-Delta / lambda^2)``, ``Delta = (sigma^2 - sigma'^2) / 2``;
    ``kernel="diffused"`` (the kernel convolved with the current noise):
    ``z' <- x + (z' - x) sqrt((lambda^2 + sigma'^2) / (lambda^2 + sigma^2))``;
(7) or, ``kernel="posterior"``, the exact score of the noisy product ``q_sigma`` instead of (6): a clean ``y``
    seen through two Gaussian observations, ``x`` (noise lambda) and ``z`` (noise sigma), is seen through one,
    ``z_eff = (z/sigma^2 + x/lambda^2) / (1/sigma^2 + 1/lambda^2)`` at ``sigma_eff^-2 = sigma^-2 + lambda^-2``,
    so ``E[y | z, x] = D(z_eff, sigma_eff)`` and the DDIM step (5) uses that denoiser. With an exact
    denoiser the estimate's mean is the exact mean shift (tests check this on GMMs).

The kernel acts only while the diffusion time of the step lies in ``[kernel_t_min, kernel_t_max]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from msd3d.guidance.base import Guidance, GuidanceOutput, stat
from msd3d.priors.base import Condition, DiffusionPrior
from msd3d.registry import MSD_KERNELS
from msd3d.rng import randn_like
from msd3d.schedules import SCHEDULE_KINDS, anneal
from msd3d.validation import check_choice, check_range, join

KERNELS = MSD_KERNELS
MSD_STARTS = ("x", "product")


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
    """Scale of the start noise: ``z0 = x + start_noise_scale * sigma_start * n`` (start "x")."""
    start: str = "x"
    """Where chains start, eq. (4): "x" (the paper) or "product" (the noisy product's mean ``D(x, lambda)``
    and width: one extra denoiser call, less bias with several sampler steps)."""
    start_sigma_scale: float = 0.0
    """0: chains start at ``t_start``; > 0: at the noise ``start_sigma_scale * lambda`` instead (capped at
    ``t_start``), so the denoiser sees the render with about the noise it is labelled with, not a clean
    image labelled noisy (one step from start ``x``: ``z_eff = x + (lambda^2/sigma) n`` at ``sigma_eff ~ lambda``)."""
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

    def validate(self, path: str = "guidance.msd") -> None:
        k = lambda name: join(path, name)  # noqa: E731 - the full dotted key of a setting
        check_range(k("sampler_steps"), self.sampler_steps, 1)
        check_range(k("samples"), self.samples, 1)
        check_range(k("lambda_start"), self.lambda_start, 0, low_open=True)
        check_range(k("lambda_end"), self.lambda_end, 0, low_open=True)
        check_choice(k("lambda_schedule"), self.lambda_schedule, SCHEDULE_KINDS)
        check_choice(k("kernel"), self.kernel, KERNELS)
        check_range(k("t_start"), self.t_start, 0, 1, low_open=True)
        check_range(k("eta"), self.eta, 0, 1)
        check_range(k("start_noise_scale"), self.start_noise_scale, 0)
        check_range(k("start_sigma_scale"), self.start_sigma_scale, 0)
        check_choice(k("start"), self.start, MSD_STARTS)
        if self.kernel_t_min > self.kernel_t_max:
            raise ValueError(f"{k('kernel_t_min')} must not exceed {k('kernel_t_max')}")


def kernel_factor(kernel: str, lam: float, sigma: Tensor, sigma_next: Tensor) -> Tensor:
    """Exact contraction of ``z - x`` over one step ``sigma -> sigma_next`` under the kernel score, eq. (6)."""
    if kernel == "exp":
        delta = 0.5 * (sigma**2 - sigma_next**2)
        return torch.exp(-delta / lam**2)
    return torch.sqrt((lam**2 + sigma_next**2) / (lam**2 + sigma**2))


def time_at_sigma(prior: DiffusionPrior, sigma: float, iterations: int = 40) -> float:
    """The diffusion time in (0, 1] whose noise level is ``sigma`` (bisection: ``sigma_from_time`` increases)."""
    lo, hi = 0.0, 1.0
    if float(prior.sigma_from_time(torch.tensor(hi))) <= sigma:
        return hi
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if float(prior.sigma_from_time(torch.tensor(mid))) < sigma else (lo, mid)
    return hi


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
    All S chains run in one batch; each sampler step is one (CFG-batched) denoiser call, and
    ``start="product"`` one more.
    """
    batch, samples = x.shape[0], config.samples
    x = x.detach()
    xs = x.repeat(samples, *([1] * (x.ndim - 1)))  # (S*B, *data), sample-major
    cond_s = cond.repeat(samples) if samples > 1 else cond
    t_start = config.t_start
    if config.start_sigma_scale > 0:
        t_start = min(t_start, time_at_sigma(prior, config.start_sigma_scale * lam))
    times = torch.linspace(t_start, 0.0, config.sampler_steps + 1)
    sigmas = prior.sigma_from_time(times[:-1]).tolist() + [0.0]  # decreasing to 0
    if config.start == "product":  # (4): the noisy product's mean x + m and (broad p) variance
        centre = prior.denoise(xs, lam, cond_s, config.guidance_scale)
        start_sigma = math.sqrt(sigmas[0] ** 2 + lam**2)
    else:
        centre, start_sigma = xs, sigmas[0]
    z = centre + config.start_noise_scale * start_sigma * randn_like(xs, generator)  # (4)
    for i in range(config.sampler_steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        kernel_on = config.kernel_t_min <= float(times[i]) <= config.kernel_t_max
        if kernel_on and config.kernel == "posterior":  # (7): denoise the combined observation
            precision = 1.0 / sigma**2 + 1.0 / lam**2
            z_eff = (z / sigma**2 + xs / lam**2) / precision
            d = prior.denoise(z_eff, precision**-0.5, cond_s, config.guidance_scale)
        else:
            d = prior.denoise(z, sigma, cond_s, config.guidance_scale)
        if config.eta > 0 and sigma_next > 0:  # (5) with eta noise
            sigma_up = config.eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)
            sigma_down = math.sqrt(max(sigma_next**2 - sigma_up**2, 0.0))
            z = d + (sigma_down / sigma) * (z - d) + sigma_up * randn_like(z, generator)
        else:
            z = d + (sigma_next / sigma) * (z - d)  # (5) DDIM
        if kernel_on and config.kernel != "posterior":  # (6) the kernel's exact contraction
            f = kernel_factor(config.kernel, lam, torch.tensor(sigma), torch.tensor(sigma_next))
            z = xs + (z - xs) * f.to(z.dtype)
    ys = z.reshape(samples, batch, *x.shape[1:])
    return ys.mean(0), ys  # (3)


class MSD(Guidance):
    """Mean-shift distillation with bandwidth annealing ``lambda(step)``."""

    name = "msd"
    config_class = MSDConfig
    config: MSDConfig


    def denoiser_calls(self) -> int:
        extra = 1 if self.config.start == "product" else 0  # D(x, lambda) for the start, eq. (4)
        return self.config.sampler_steps + extra  # all samples run in one batch

    def bandwidth(self, step: int, total_steps: int) -> float:
        c = self.config
        return anneal(c.lambda_start, c.lambda_end, step, total_steps, c.lambda_schedule)

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
