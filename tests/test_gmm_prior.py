"""GaussianMixturePrior against independent computations: Monte Carlo, scipy, Bayes' rule, sample moments."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import GMM_COVS as COVS
from conftest import GMM_MEANS as MEANS
from conftest import GMM_WEIGHTS as WEIGHTS
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from msd3d.priors.gmm import GaussianMixturePrior


@pytest.fixture
def prior() -> GaussianMixturePrior:
    return GaussianMixturePrior(MEANS, COVS, WEIGHTS, labels=[0, 0, 1], class_names=["a", "b"])


def _scipy_logpdf(points: np.ndarray, sigma: float, idx=(0, 1, 2)) -> np.ndarray:
    w = np.array(WEIGHTS)[list(idx)]
    w = w / w.sum()
    terms = [
        np.log(w[j]) + multivariate_normal(MEANS[i], np.array(COVS[i]) + sigma**2 * np.eye(2)).logpdf(points)
        for j, i in enumerate(idx)
    ]
    return logsumexp(np.stack(terms), axis=0)


@pytest.mark.parametrize("sigma", [0.0, 0.3, 2.0])
def test_log_prob_matches_scipy(prior, sigma):
    pts = np.array([[0.0, 0.0], [-1.2, 0.3], [2.0, -1.0], [5.0, 5.0]])
    ours = prior.log_prob(torch.tensor(pts), sigma=sigma).numpy()
    np.testing.assert_allclose(ours, _scipy_logpdf(pts, sigma), rtol=1e-10, atol=1e-10)


def test_class_conditional_log_prob(prior):
    pts = np.array([[0.0, 0.0], [-1.2, 0.3]])
    np.testing.assert_allclose(prior.log_prob(torch.tensor(pts), prompt="a").numpy(), _scipy_logpdf(pts, 0.0, (0, 1)))
    np.testing.assert_allclose(prior.log_prob(torch.tensor(pts), prompt="b").numpy(), _scipy_logpdf(pts, 0.0, (2,)))
    with pytest.raises(ValueError, match="unknown class"):
        prior.component_log_weights("c")


def test_denoiser_matches_monte_carlo_posterior_mean(prior):
    """D(z, sigma) = E[y | z] by self-normalised importance sampling with y ~ p as proposal.

    Tolerance: 5 standard errors of the weighted estimate (delta method), per coordinate.
    """
    gen = torch.Generator().manual_seed(0)
    y = prior.sample(200_000, gen).double()
    sigma = 0.5
    z = torch.tensor([[0.0, 0.0], [-1.0, 0.4], [0.8, -0.9]], dtype=torch.float64)
    d = prior.denoise(z, sigma, prior.condition([""] * 3))
    for i in range(3):
        logw = -((y - z[i]) ** 2).sum(1) / (2 * sigma**2)
        w = torch.softmax(logw, 0)
        est = (w[:, None] * y).sum(0)
        se = ((w[:, None] ** 2) * (y - est) ** 2).sum(0).sqrt()
        assert ((est - d[i]).abs() <= 5 * se + 1e-9).all(), (est, d[i], se)


def test_score_is_tweedie_gradient_of_log_prob(prior):
    """score(z, sigma) = (D - z) / sigma^2 must equal autograd of log p_sigma."""
    z = torch.tensor([[0.2, -0.3], [-1.5, 1.0]], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(prior.log_prob(z, sigma=0.4).sum(), z)
    torch.testing.assert_close(prior.score(z.detach(), 0.4), grad, rtol=1e-8, atol=1e-10)


def test_product_is_bayes_posterior_and_matches_mean_shift(prior):
    """q(y|x) ∝ p(y) N(x; y, lam^2): per component the Gaussian posterior, weights ∝ w_k N(x; mu_k, S_k + lam^2 I)."""
    x = torch.tensor([[0.3, -0.2], [-2.0, 1.0]], dtype=torch.float64)
    lam = 0.4
    resp, means, covs = prior.product(x, lam)
    for b in range(2):
        logw = np.array(
            [
                math.log(WEIGHTS[k])
                + multivariate_normal(MEANS[k], np.array(COVS[k]) + lam**2 * np.eye(2)).logpdf(x[b].numpy())
                for k in range(3)
            ]
        )
        np.testing.assert_allclose(resp[b].numpy(), np.exp(logw - logsumexp(logw)), rtol=1e-9)
        for k in range(3):
            prec = np.linalg.inv(COVS[k]) + np.eye(2) / lam**2
            cov = np.linalg.inv(prec)
            mean = cov @ (np.linalg.inv(COVS[k]) @ np.array(MEANS[k]) + x[b].numpy() / lam**2)
            np.testing.assert_allclose(covs[k].numpy(), cov, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(means[b, k].numpy(), mean, rtol=1e-9, atol=1e-12)
    mixture_mean = (resp[..., None] * means).sum(1)
    torch.testing.assert_close(prior.mean_shift(x, lam), mixture_mean - x)


def test_sample_moments(prior):
    """Sample mean and covariance within 5 standard errors of the mixture's exact moments."""
    n = 100_000
    y = prior.sample(n, torch.Generator().manual_seed(1)).double()
    w = torch.tensor(WEIGHTS, dtype=torch.float64)
    mu = torch.tensor(MEANS, dtype=torch.float64)
    cov_k = torch.tensor(COVS, dtype=torch.float64)
    mean = (w[:, None] * mu).sum(0)
    cov = (w[:, None, None] * (cov_k + mu[:, :, None] * mu[:, None, :])).sum(0) - torch.outer(mean, mean)
    se_mean = (cov.diagonal() / n).sqrt()
    assert ((y.mean(0) - mean).abs() <= 5 * se_mean).all()
    emp = torch.cov(y.T)
    # standard error of a sample covariance entry: sqrt(Var[(y_i - m_i)(y_j - m_j)] / n)
    c = y - y.mean(0)
    se_cov = ((c[:, :, None] * c[:, None, :]).var(0) / n).sqrt()
    assert ((emp - cov).abs() <= 5 * se_cov).all()
    # class-conditional samples come only from that class's component (class "b" = component 2)
    yb = prior.sample(20_000, torch.Generator().manual_seed(2), prompt="b").double()
    assert (yb.mean(0) - mu[2]).abs().max() < 5 * math.sqrt(0.15 / 20_000)
