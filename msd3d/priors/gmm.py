"""A Gaussian mixture as an exact diffusion prior: exact denoiser, density and mean shift.

For ``p = sum_k w_k N(mu_k, S_k)`` every quantity MSD needs has a closed form, which makes this the
ground truth for the 2-D experiments and for the estimator tests:

* noisy density ``p_sigma = sum_k w_k N(mu_k, S_k + sigma^2 I)``;
* denoiser ``D(z, sigma) = sum_k r_k(z) [mu_k + S_k (S_k + sigma^2 I)^-1 (z - mu_k)]`` with ``r_k`` the
  posterior responsibilities under ``p_sigma``;
* the product ``q(y|x) ∝ p(y) G_lambda(x - y)`` is the posterior of ``y`` given a noisy observation
  ``x`` at noise level ``lambda``, so it is again a mixture (:meth:`product`) and the exact mean-shift
  vector is ``m(x) = E_q[y] - x = D(x, lambda) - x`` (Tweedie).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

from msd3d.priors.base import Condition, DiffusionPrior
from msd3d.priors.schedule import VPSchedule


class GaussianMixturePrior(DiffusionPrior):
    """Exact mixture prior in any dimension, optionally class-conditional.

    means: (K, D); covs: (K, D, D) symmetric positive definite; weights: (K,) (normalised here).
    labels: optional (K,) integer class of each component, with ``class_names[label]`` the prompt
    that selects it. The empty prompt means the unconditional mixture.
    """

    def __init__(
        self,
        means: Tensor | Sequence,
        covs: Tensor | Sequence,
        weights: Tensor | Sequence | None = None,
        labels: Tensor | Sequence | None = None,
        class_names: Sequence[str] | None = None,
        schedule: VPSchedule | None = None,
    ) -> None:
        super().__init__()
        self.means = torch.as_tensor(means, dtype=torch.float64)
        self.covs = torch.as_tensor(covs, dtype=torch.float64)
        if self.means.ndim != 2:
            raise ValueError(f"means must be (K, D), got shape {tuple(self.means.shape)}")
        k, d = self.means.shape
        if self.covs.shape != (k, d, d):
            raise ValueError(f"covs must be (K, D, D) = ({k}, {d}, {d}), got {tuple(self.covs.shape)}")
        if not torch.allclose(self.covs, self.covs.transpose(1, 2), atol=1e-9):
            raise ValueError("covs must be symmetric")
        if torch.linalg.eigvalsh(self.covs).min() <= 0:
            raise ValueError("covs must be positive definite")
        w = torch.ones(k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if w.shape != (k,) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be {k} non-negative numbers with a positive sum")
        self.weights = w / w.sum()
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
        if self.labels is not None and self.labels.shape != (k,):
            raise ValueError(f"labels must have one entry per component ({k})")
        if class_names is None and self.labels is not None:
            class_names = [str(i) for i in range(int(self.labels.max()) + 1)]
        self.class_names = list(class_names or [])
        self.schedule = schedule or VPSchedule.scaled_linear()
        self.dim = d
        self.num_components = k
        self._eigvals, self._eigvecs = torch.linalg.eigh(self.covs)  # (K, D), (K, D, D)

    # -- conditioning --------------------------------------------------------------------------
    def component_log_weights(self, prompt: str = "") -> Tensor:
        """(K,) log-weights of the mixture a prompt selects (a class name, or "" for all)."""
        prompt = prompt.strip()
        if not prompt:
            return self.weights.log()
        if self.labels is None or prompt not in self.class_names:
            known = ", ".join(self.class_names) or "none (this mixture is unconditional)"
            raise ValueError(f"unknown class {prompt!r}; classes: {known}")
        mask = self.labels == self.class_names.index(prompt)
        w = torch.where(mask, self.weights, torch.zeros_like(self.weights))
        return (w / w.sum()).log()

    def condition(
        self,
        prompts: Sequence[str],
        *,
        negative_prompt: str = "",
        cameras: Any | None = None,
        shading: str | None = None,
        light_positions: Any | None = None,
        ambient_ratio: float = 0.1,
    ) -> Condition:
        cond = torch.stack([self.component_log_weights(p) for p in prompts])
        uncond = self.component_log_weights(negative_prompt).expand_as(cond).clone()
        return Condition(cond=cond, uncond=uncond, batch_size=len(prompts), prompts=list(prompts))

    # -- exact quantities ----------------------------------------------------------------------
    def _noisy_components(self, z: Tensor, sigma: Tensor, log_w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Responsibilities (B, K), per-component posterior means (B, K, D) and log p_sigma (B,).

        Uses the eigendecomposition ``S_k = U_k diag(e_k) U_k^T`` computed once, so that
        ``(S_k + sigma^2 I)^-1`` is a diagonal rescaling in each component's eigenbasis.
        """
        var = sigma.double()[:, None, None] ** 2  # (B, 1, 1)
        diff = z.double()[:, None, :] - self.means[None]  # (B, K, D)
        proj = torch.einsum("kdj,bkd->bkj", self._eigvecs, diff)  # U^T (z - mu)
        total = self._eigvals[None] + var  # (B, K, D) eigenvalues of S + sigma^2 I
        maha = (proj**2 / total).sum(-1)  # (B, K)
        logdet = total.log().sum(-1)
        log_comp = log_w.double() - 0.5 * (maha + logdet + self.dim * math.log(2 * math.pi))
        log_p = torch.logsumexp(log_comp, dim=1)
        resp = (log_comp - log_p[:, None]).exp()
        gain = proj * (self._eigvals[None] / total)  # diag(e / (e + sigma^2)) U^T (z - mu)
        post_means = self.means[None] + torch.einsum("kdj,bkj->bkd", self._eigvecs, gain)
        return resp, post_means, log_p

    def denoise_raw(self, z: Tensor, sigma: Tensor, payload: Tensor) -> Tensor:
        resp, post_means, _ = self._noisy_components(z, sigma, payload)
        return (resp[..., None] * post_means).sum(1).to(z.dtype)

    def _log_weights_for(self, batch: int, prompt: str) -> Tensor:
        return self.component_log_weights(prompt).expand(batch, -1)

    def log_prob(self, y: Tensor, sigma: float = 0.0, prompt: str = "") -> Tensor:
        """Exact ``log p_sigma(y)``; y: (B, D) -> (B,)."""
        s = torch.full((y.shape[0],), float(sigma), dtype=torch.float64)
        return self._noisy_components(y, s, self._log_weights_for(y.shape[0], prompt))[2].to(y.dtype)

    def score(self, z: Tensor, sigma: float, prompt: str = "") -> Tensor:
        """Exact ``grad log p_sigma(z)`` for sigma > 0: ``(D - z) / sigma^2``; (B, D) -> (B, D)."""
        s = torch.full((z.shape[0],), float(sigma), dtype=torch.float64)
        d = self.denoise_raw(z, s, self._log_weights_for(z.shape[0], prompt))
        return (d - z) / sigma**2

    def mean_shift(self, x: Tensor, lam: float, prompt: str = "") -> Tensor:
        """Exact mean-shift vector ``E_q[y] - x`` with ``q ∝ p(y) G_lambda(x - y)``; (B, D) -> (B, D)."""
        s = torch.full((x.shape[0],), float(lam), dtype=torch.float64)
        return self.denoise_raw(x, s, self._log_weights_for(x.shape[0], prompt)) - x

    def product(self, x: Tensor, lam: float, prompt: str = "") -> tuple[Tensor, Tensor, Tensor]:
        """The product mixture ``q(y|x)`` for each x: weights (B, K), means (B, K, D), covs (K, D, D)."""
        s = torch.full((x.shape[0],), float(lam), dtype=torch.float64)
        resp, post_means, _ = self._noisy_components(x, s, self._log_weights_for(x.shape[0], prompt))
        eye = torch.eye(self.dim, dtype=torch.float64)
        gain = self.covs @ torch.linalg.inv(self.covs + lam**2 * eye)  # S (S + l^2 I)^-1
        post_covs = self.covs - gain @ self.covs
        return resp, post_means, post_covs

    def sample(self, n: int, generator: torch.Generator | None = None, prompt: str = "") -> Tensor:
        """n exact samples (n, D) of the (class-conditional) mixture."""
        w = self.component_log_weights(prompt).exp()
        comp = torch.multinomial(w, n, replacement=True, generator=generator)
        chol = torch.linalg.cholesky(self.covs)[comp]  # (n, D, D)
        eps = torch.randn(n, self.dim, 1, dtype=torch.float64, generator=generator)
        return (self.means[comp] + (chol @ eps).squeeze(-1)).float()

    def component_scale(self) -> Tensor:
        """(K,) a length scale per component: sqrt of its largest covariance eigenvalue."""
        return torch.linalg.eigvalsh(self.covs)[:, -1].sqrt()
