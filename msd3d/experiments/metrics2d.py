"""Metrics for the 2-D experiments: how well particles land on a mixture's modes, and how good each
gradient estimator is per denoiser evaluation.

Particle metrics (:func:`particle_metrics`), all against the true (class-conditional) mixture:

* ``nll``: mean negative log-density of the particles (``nll_median`` too, since a few stragglers
  far from the data dominate the mean);
* ``precision`` / ``recall``: the k-NN manifold estimate of Kynkäänniemi et al. 2019 against exact
  samples (precision: fraction of particles inside the data's manifold; recall: fraction of data
  samples inside the particles' manifold, so collapsed particles score low);
* ``mmd``: unbiased squared MMD with an RBF kernel ``exp(-|a-b|^2 / (2 h^2))`` of stated bandwidth h;
* ``mean_dist_to_mean``: mean Euclidean distance to the nearest component mean;
* ``on_mode``: fraction of particles within Mahalanobis distance 3 of some component of the class.

Estimator efficiency (:func:`estimator_efficiency`): at fixed random points, the error of each
estimator against the exact quantity versus the number of denoiser evaluations per point, counted
with the prior's :class:`~msd3d.priors.base.DenoiserCounter`.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Sequence

import torch
from torch import Tensor

from msd3d.guidance import MSDConfig, SDIConfig, SDSConfig
from msd3d.guidance.msd import mean_shift_target
from msd3d.guidance.sdi import SDI
from msd3d.guidance.sds import SDS
from msd3d.priors.base import DiffusionPrior
from msd3d.priors.gmm import GaussianMixturePrior


# -- particle metrics -----------------------------------------------------------------------------
def class_components(prior: GaussianMixturePrior, prompt: str) -> Tensor:
    """(K,) bool mask of the components a prompt selects (all for "")."""
    return prior.component_log_weights(prompt).isfinite() & (prior.component_log_weights(prompt).exp() > 0)


def mahalanobis_to_components(prior: GaussianMixturePrior, x: Tensor, mask: Tensor) -> Tensor:
    """(N, K') Mahalanobis distance of each point to each selected component."""
    diff = x.double()[:, None, :] - prior.means[mask][None]  # (N, K', D)
    prec = torch.linalg.inv(prior.covs[mask])  # (K', D, D)
    return torch.einsum("nkd,kde,nke->nk", diff, prec, diff).clamp_min(0).sqrt()


def knn_radii(points: Tensor, k: int) -> Tensor:
    """(N,) distance of each point to its k-th nearest neighbour in the same set (itself excluded)."""
    d = torch.cdist(points, points)
    return d.kthvalue(k + 1, dim=1).values  # the 0-th is the point itself


def precision_recall(generated: Tensor, real: Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN balls as manifolds."""
    generated, real = generated.double(), real.double()
    r_real = knn_radii(real, k)
    r_gen = knn_radii(generated, k)
    d = torch.cdist(generated, real)  # (G, R)
    precision = (d <= r_real[None, :]).any(dim=1).double().mean()
    recall = (d <= r_gen[:, None]).any(dim=0).double().mean()
    return float(precision), float(recall)


def mmd_rbf(a: Tensor, b: Tensor, bandwidth: float) -> float:
    """Unbiased squared MMD between point sets a (N, D) and b (M, D), RBF kernel of width ``bandwidth``."""
    a, b = a.double(), b.double()
    gamma = 1.0 / (2 * bandwidth**2)
    kaa = torch.exp(-gamma * torch.cdist(a, a) ** 2)
    kbb = torch.exp(-gamma * torch.cdist(b, b) ** 2)
    kab = torch.exp(-gamma * torch.cdist(a, b) ** 2)
    n, m = len(a), len(b)
    term_a = (kaa.sum() - kaa.diagonal().sum()) / (n * (n - 1))
    term_b = (kbb.sum() - kbb.diagonal().sum()) / (m * (m - 1))
    return float(term_a + term_b - 2 * kab.mean())


def particle_metrics(
    prior: GaussianMixturePrior,
    particles: Tensor,
    reference: Tensor,
    prompt: str = "",
    knn_k: int = 3,
    mmd_bandwidth: float = 0.25,
) -> dict[str, float]:
    """All particle metrics of ``particles`` (N, 2) against exact ``reference`` samples (M, 2)."""
    particles = particles.detach().double()
    finite = particles.isfinite().all(dim=1)
    mask = class_components(prior, prompt)
    x = particles[finite]
    logp = prior.log_prob(x, prompt=prompt)
    maha = mahalanobis_to_components(prior, x, mask)
    dist = torch.cdist(x, prior.means[mask]).min(dim=1).values
    precision, recall = precision_recall(x, reference, knn_k)
    return {
        "nll": float(-logp.mean()),
        "nll_median": float(-logp.median()),
        "precision": precision,
        "recall": recall,
        "mmd": mmd_rbf(x, reference, mmd_bandwidth),
        "mean_dist_to_mean": float(dist.mean()),
        "on_mode": float((maha.min(dim=1).values <= 3.0).double().sum() / len(particles)),
        "finite": float(finite.double().mean()),
    }


# -- exact reference quantities -------------------------------------------------------------------
def exact_score(prior: GaussianMixturePrior, x: Tensor, prompt: str = "") -> Tensor:
    """Exact ``grad log p(x | prompt)`` of the clean mixture (sigma = 0); (N, D) -> (N, D) float64."""
    x = x.detach().double().requires_grad_(True)
    (grad,) = torch.autograd.grad(prior.log_prob(x, prompt=prompt).sum(), x)
    return grad


def product_variance(prior: GaussianMixturePrior, x: Tensor, lam: float, prompt: str = "") -> Tensor:
    """(N,) total variance ``tr Cov_q`` of the exact product distribution ``q(y|x)``."""
    resp, means, covs = prior.product(x.double(), lam, prompt)
    second = (resp * (covs.diagonal(dim1=-2, dim2=-1).sum(-1)[None] + (means**2).sum(-1))).sum(1)
    mean = (resp[..., None] * means).sum(1)
    return (second - (mean**2).sum(-1)).clamp_min(0)


def cosine_error(estimate: Tensor, reference: Tensor) -> Tensor:
    """(N,) ``1 - cos`` between each estimate and its reference direction (0 = aligned, 2 = opposite)."""
    cos = torch.nn.functional.cosine_similarity(estimate.double(), reference.double(), dim=1, eps=1e-30)
    return 1.0 - cos


# -- gradient estimation efficiency ---------------------------------------------------------------
def kernel_settings(spec: str, interval: tuple[float, float] = (0.0, 1.0)) -> dict:
    """MSD settings of a kernel spec: ``"exp"`` -> ``{"kernel": "exp"}``; ``"exp-iv"`` -> the same,
    with the kernel acting only for diffusion times in ``interval``."""
    if spec.endswith("-iv"):
        return {"kernel": spec[:-3], "kernel_t_min": float(interval[0]), "kernel_t_max": float(interval[1])}
    return {"kernel": spec}


def _msd_rows(
    prior: GaussianMixturePrior,
    denoiser: DiffusionPrior,
    x: Tensor,
    prompt: str,
    lambdas: Sequence[float],
    kernels: Sequence[str],
    sampler_steps: Sequence[int],
    samples: Sequence[int],
    base: MSDConfig,
    score: Tensor,
    generator: torch.Generator,
    kernel_interval: tuple[float, float],
) -> list[dict]:
    rows = []
    cond = denoiser.condition([prompt] * len(x))
    for lam in lambdas:
        exact = prior.mean_shift(x, lam, prompt)  # (N, D)
        rms_exact = float(exact.pow(2).sum(1).mean().sqrt())
        ideal_var = product_variance(prior, x, lam, prompt)  # (N,)
        for kernel in kernels:
            for n_steps in sampler_steps:
                for n_samples in samples:
                    cfg = replace(base, **kernel_settings(kernel, kernel_interval), sampler_steps=n_steps,
                                  samples=n_samples, guidance_scale=1.0)
                    denoiser.counter.reset()
                    target, _ = mean_shift_target(denoiser, x, cond, lam, cfg, generator)
                    evals = denoiser.counter.evaluations / len(x)
                    est = target.double() - x
                    err = (est - exact).pow(2).sum(1)
                    rows.append(
                        {
                            "method": "msd",
                            "kernel": kernel,
                            "lambda": lam,
                            "sampler_steps": n_steps,
                            "draws": n_samples,
                            "evaluations": evals,
                            "rel_error": float(err.mean().sqrt()) / rms_exact,
                            "ideal_rel_error": float((ideal_var / n_samples).mean().sqrt()) / rms_exact,
                            "cos_error": float(cosine_error(est, score).mean()),
                        }
                    )
    return rows


def _average_target(guidance, x: Tensor, cond, draws: int, generator: torch.Generator) -> Tensor:
    """Mean over ``draws`` independent calls of ``w (target - x)``, the descent direction."""
    total = torch.zeros_like(x)
    for _ in range(draws):
        out = guidance(x, cond, step=0, total_steps=1, generator=generator)
        total += out.weight[:, None].double() * (out.target.double() - x)
    return total / draws


def estimator_efficiency(
    prior: GaussianMixturePrior,
    points: Tensor,
    prompt: str,
    lambdas: Sequence[float],
    msd: MSDConfig,
    sds: SDSConfig,
    sdi: SDIConfig,
    kernels: Sequence[str] = ("exp", "diffused", "posterior"),
    msd_sampler_steps: Sequence[int] = (1, 4, 16),
    msd_samples: Sequence[int] = (1, 4, 16, 64),
    draws: Sequence[int] = (1, 4, 16, 64),
    methods: Sequence[str] = ("sds", "msd", "sdi"),
    generator: torch.Generator | None = None,
    denoiser: DiffusionPrior | None = None,
    kernel_interval: tuple[float, float] = (0.0, 1.0),
) -> list[dict]:
    """Error of each estimator against the exact quantity versus denoiser evaluations per point.

    * MSD (each kernel, each ``lambda``): ``rel_error = sqrt(mean |m_hat - m|^2) / sqrt(mean |m|^2)``
      with ``m(x) = D(x, lambda) - x`` the exact mean shift, for ``msd_samples`` product samples per
      estimate and ``msd_sampler_steps`` sampler steps; ``ideal_rel_error`` is what exact,
      independent samples of ``q`` would give (``sqrt(tr Cov_q / S)``), the floor of any unbiased
      sampler.
    * Every method: ``cos_error = mean (1 - cos(estimate, grad log p(x)))`` against the exact score
      of the clean class-conditional density. SDS and SDI average ``draws`` independent calls
      (fresh time and noise each; SDI's time is drawn uniformly in its range here).

    All estimators run without classifier-free guidance (scale 1) so that the exact references are
    the conditional density's own. points: (N, D). ``denoiser``: the prior the estimators use
    (default ``prior``; a learned one is measured against ``prior``'s exact quantities).
    ``kernels`` may name ``<kernel>-iv``: that kernel only for diffusion times in ``kernel_interval``.
    """
    generator = generator or torch.Generator().manual_seed(0)
    denoiser = prior if denoiser is None else denoiser
    x = points.detach().double()
    score = exact_score(prior, x, prompt)
    rows: list[dict] = []
    if "msd" in methods:
        rows += _msd_rows(prior, denoiser, x, prompt, lambdas, kernels, msd_sampler_steps, msd_samples, msd, score,
                          generator, kernel_interval)
    cond = denoiser.condition([prompt] * len(x))
    baselines = {
        "sds": lambda: SDS(denoiser, replace(sds, guidance_scale=1.0, t_schedule="random")),
        "sdi": lambda: SDI(
            denoiser, replace(sdi, guidance_scale=1.0, inversion_guidance_scale=1.0, t_schedule="random")
        ),
    }
    for name, make in baselines.items():
        if name not in methods:
            continue
        guidance = make()
        for n in draws:
            denoiser.counter.reset()
            est = _average_target(guidance, x, cond, n, generator)
            rows.append(
                {
                    "method": name,
                    "kernel": "",
                    "lambda": math.nan,
                    "sampler_steps": getattr(guidance.config, "inversion_steps", 0),
                    "draws": n,
                    "evaluations": denoiser.counter.evaluations / len(x),
                    "rel_error": math.nan,
                    "ideal_rel_error": math.nan,
                    "cos_error": float(cosine_error(est, score).mean()),
                }
            )
    return rows
