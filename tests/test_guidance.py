"""SDS, MSD and SDI against exact quantities of Gaussian (mixture) priors, and the shared schedules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import GMM_COVS as COVS
from conftest import GMM_MEANS as MEANS
from conftest import GMM_WEIGHTS as WEIGHTS

from msd3d.guidance import MSD, SDI, SDS, MSDConfig, SDIConfig, SDSConfig
from msd3d.guidance.msd import mean_shift_target
from msd3d.guidance.sdi import ddim_invert, inversion_times
from msd3d.guidance.sds import sds_weight
from msd3d.priors.gmm import GaussianMixturePrior
from msd3d.schedules import interpolate
from msd3d.schedules import run_fraction as progress


@pytest.fixture
def gmm() -> GaussianMixturePrior:
    return GaussianMixturePrior(MEANS, COVS, WEIGHTS)


def gaussian(mean=(0.5, -0.3), var=0.2) -> GaussianMixturePrior:
    return GaussianMixturePrior([list(mean)], [(var * np.eye(2)).tolist()])


# -- MSD ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lam", [0.1, 0.3])
def test_msd_posterior_kernel_estimates_exact_mean_shift(gmm, lam):
    """The batched MSD estimate (S product samples) against ``m(x) = D(x, lam) - x``.

    lambda is at or below the component scale (sqrt of the largest covariance eigenvalues: 0.58,
    0.63, 0.39). Tolerance per point and coordinate: ``4.5 SE + 0.03 |m|``.

    * ``SE = std(samples) / sqrt(S)`` is the Monte-Carlo standard error of the mean of the S chains
      (independent given x). 4.5 SE: with 16 comparisons per lambda the chance that an unbiased
      estimator exceeds it is about 16 * 7e-6 ~ 1e-4.
    * ``0.03 |m|`` bounds the sampler's only systematic error with an exact denoiser: chains start
      at ``x + sigma_start n`` instead of the noisy product ``q_sigma_start`` (whose mean is
      ``x + m``), and the probability-flow map shrinks that offset by about ``std(q) / sigma_start
      <= lam / sigma_start <= 0.3 / 13 = 2.3 %`` (measured: 0.5-1.7 % of |m| at lam = 0.3 with 10^5
      chains). More sampler steps do not remove it; a larger start noise does.
    """
    x = torch.tensor([[0.0, 0.0], [-1.5, 0.6], [1.2, -0.4], [0.3, 1.5]], dtype=torch.float64)
    samples = 2000
    cfg = MSDConfig(kernel="posterior", sampler_steps=8, samples=samples, guidance_scale=1.0)
    gmm.counter.reset()
    target, ys = mean_shift_target(gmm, x, gmm.condition([""] * 4), lam, cfg, torch.Generator().manual_seed(0))
    assert ys.shape == (samples, 4, 2) and target.shape == (4, 2)
    # one batched (S*B) denoiser call per sampler step, no CFG branch at scale 1
    assert gmm.counter.calls == 8 and gmm.counter.evaluations == 8 * samples * 4
    exact = gmm.mean_shift(x, lam)
    se = ys.std(0) / math.sqrt(samples)
    err = (target - x - exact).abs()
    assert (err <= 4.5 * se + 0.03 * exact.abs()).all(), (err, se, exact)
    # and the estimate is informative: far closer to m than the trivial guess 0
    assert err.norm() < 0.1 * exact.norm()


def test_msd_one_step_posterior_is_tweedie(gmm):
    """With one sampler step the posterior kernel returns ``D(z_eff, sigma_eff)`` with
    ``z_eff = x + n lam^2 sigma0 / (sigma0^2 + lam^2)`` and ``sigma_eff -> lam``: Tweedie's exact mean
    shift up to a perturbation of size ``lam^2 / sigma0`` (3e-3 here), which averages out to second
    order over chains."""
    x = torch.tensor([[0.0, 0.0], [1.2, -0.4]], dtype=torch.float64)
    lam = 0.2
    cfg = MSDConfig(kernel="posterior", sampler_steps=1, samples=1, guidance_scale=1.0)
    target, _ = mean_shift_target(gmm, x, gmm.condition([""] * 2), lam, cfg, torch.Generator().manual_seed(0))
    # replay: the chain starts at x + sigma0 n and takes one posterior-kernel step to sigma = 0
    sigma0 = float(gmm.sigma_from_time(torch.tensor([cfg.t_start]))[0])
    n = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).double()
    precision = 1 / sigma0**2 + 1 / lam**2
    z_eff = ((x + sigma0 * n) / sigma0**2 + x / lam**2) / precision
    expected = gmm.denoise(z_eff, precision**-0.5, gmm.condition([""] * 2))
    torch.testing.assert_close(target, expected, rtol=1e-6, atol=1e-6)
    # averaged over chains, the one-step estimate is the exact mean shift
    cfg = MSDConfig(kernel="posterior", sampler_steps=1, samples=256, guidance_scale=1.0)
    target, _ = mean_shift_target(gmm, x, gmm.condition([""] * 2), lam, cfg, torch.Generator().manual_seed(1))
    torch.testing.assert_close(target - x, gmm.mean_shift(x, lam), atol=1e-3, rtol=0)


def test_msd_start_sigma_scale_starts_the_chain_at_a_multiple_of_lambda(gmm):
    """``start_sigma_scale = k``: the chain starts at noise ``k * lam`` (capped at ``t_start``), found by
    inverting the prior's schedule, and the posterior step sees ``z_eff`` at ``sigma_eff^-2 = (k lam)^-2 + lam^-2``."""
    from msd3d.guidance.msd import time_at_sigma

    for sigma in (0.05, 0.4, 2.0, 9.0):
        assert float(gmm.sigma_from_time(torch.tensor(time_at_sigma(gmm, sigma)))) == pytest.approx(sigma, rel=1e-6)
    assert time_at_sigma(gmm, 1e6) == 1.0
    x = torch.tensor([[0.3, -0.2]], dtype=torch.float64)
    lam, k = 0.5, 2.0
    cfg = MSDConfig(kernel="posterior", sampler_steps=1, samples=1, guidance_scale=1.0, start_sigma_scale=k)
    target, _ = mean_shift_target(gmm, x, gmm.condition([""]), lam, cfg, torch.Generator().manual_seed(0))
    n = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).double()
    sigma0 = k * lam
    precision = 1 / sigma0**2 + 1 / lam**2
    z_eff = ((x + sigma0 * n) / sigma0**2 + x / lam**2) / precision
    expected = gmm.denoise(z_eff, precision**-0.5, gmm.condition([""]))
    torch.testing.assert_close(target, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="start_sigma_scale"):
        MSDConfig(start_sigma_scale=-1.0).validate()


def test_msd_product_start_removes_the_start_bias():
    """Chains started at ``x`` miss the noisy product's mean ``x + m``; the first DDIM step keeps part of
    that offset, so with several steps the estimate is biased towards x (issue 9). For a Gaussian prior
    the flow is affine, so the bias is deterministic: measured 2.1 % (4 steps) and 3.2 % (16 steps) of |m|
    from "x", 0.4 % and 0.7 % (the Monte-Carlo noise of 2000 chains) from "product"."""
    prior = gaussian(var=0.3)
    x = torch.tensor([[2.5, 1.0], [-1.5, 0.5], [0.0, -2.0]], dtype=torch.float64)
    lam = 1.0
    m = prior.mean_shift(x, lam)
    bias = {}
    for start in ("x", "product"):
        for steps in (1, 4):
            cfg = MSDConfig(kernel="posterior", sampler_steps=steps, samples=2000, guidance_scale=1.0, start=start)
            prior.counter.reset()
            target, _ = mean_shift_target(prior, x, prior.condition([""] * 3), lam, cfg,
                                          torch.Generator().manual_seed(0))
            assert prior.counter.calls == steps + (start == "product")  # D(x, lambda) for the start
            bias[start, steps] = float((target - x - m).norm() / m.norm())
    assert bias["x", 4] > 0.015 and bias["product", 4] < 0.4 * bias["x", 4], bias
    assert bias["product", 1] <= bias["x", 1] < 0.005, bias  # and one step is not hurt
    assert MSD(prior, MSDConfig(sampler_steps=4, start="product")).denoiser_calls() == 5
    with pytest.raises(ValueError, match=r"guidance\.msd\.start must be one of x, product"):
        MSDConfig(start="wide").validate()


def test_msd_guidance_bandwidth_schedule_and_output(gmm):
    cfg = MSDConfig(lambda_start=1.0, lambda_end=0.01, lambda_schedule="log_linear", sampler_steps=2, weight=2.0)
    msd = MSD(gmm, cfg)
    assert msd.bandwidth(0, 11) == pytest.approx(1.0)
    assert msd.bandwidth(5, 11) == pytest.approx(0.1)  # geometric midpoint
    assert msd.bandwidth(10, 11) == pytest.approx(0.01)
    x = torch.zeros(3, 2)
    out = msd(x, gmm.condition([""] * 3), step=10, total_steps=11, generator=torch.Generator().manual_seed(0))
    assert out.target.shape == (3, 2) and out.stats["lambda"] == pytest.approx(0.01)
    torch.testing.assert_close(out.weight, torch.full((3,), 2.0))
    # the loss gradient is w (x - target) / B
    xp = x.clone().requires_grad_(True)
    out.loss(xp).backward()
    torch.testing.assert_close(xp.grad, out.gradient(x) / 3)


# -- SDS ------------------------------------------------------------------------------------------
def test_sds_gradient_equals_threestudio_formula(gmm):
    """At the same t and noise, the applied gradient is threestudio's ``w(t) (eps_hat - eps)`` with
    ``w = 1 - alpha_bar``, computed here in VP coordinates from an epsilon-prediction view of D."""
    x = torch.tensor([[0.3, -0.2], [-1.0, 0.8], [2.0, 2.0]], dtype=torch.float64)
    cond = gmm.condition([""] * 3)
    sds = SDS(gmm, SDSConfig(guidance_scale=1.0))
    out = sds(x, cond, generator=torch.Generator().manual_seed(7))
    # replay the generator: SDS draws t ~ U[t_min, t_max] then eps ~ N(0, I)
    gen = torch.Generator().manual_seed(7)
    c = sds.config
    t = c.t_min + (c.t_max - c.t_min) * torch.rand(3, generator=gen)
    eps = torch.randn(x.shape, generator=gen).double()
    sigma = gmm.sigma_from_time(t).double()[:, None]
    alpha_bar = 1.0 / (1.0 + sigma**2)
    z_vp = alpha_bar.sqrt() * x + (1 - alpha_bar).sqrt() * eps
    x0_hat = gmm.denoise(z_vp / alpha_bar.sqrt(), sigma[:, 0], cond)
    eps_hat = (z_vp - alpha_bar.sqrt() * x0_hat) / (1 - alpha_bar).sqrt()
    grad = (1 - alpha_bar) * (eps_hat - eps)
    torch.testing.assert_close(out.gradient(x), grad, rtol=1e-5, atol=1e-7)


def test_sds_target_mean_matches_closed_form_gaussian():
    """Single Gaussian N(mu, s^2 I): E_n[D(x + sigma n, sigma)] = mu + s^2 / (s^2 + sigma^2) (x - mu).
    Fixed t via the "anneal" schedule at step 0 (t = t_max). Tolerance: 5 standard errors."""
    prior = gaussian(var=0.2)
    n = 20_000
    x = torch.tensor([[1.5, -1.0]], dtype=torch.float64).repeat(n, 1)
    sds = SDS(prior, SDSConfig(guidance_scale=1.0, t_schedule="anneal", t_min=0.1, t_max=0.4))
    out = sds(x, prior.condition([""] * n), step=0, total_steps=10, generator=torch.Generator().manual_seed(0))
    sigma = float(prior.sigma_from_time(torch.tensor([0.4]))[0])
    mu = torch.tensor([0.5, -0.3], dtype=torch.float64)
    expected = mu + 0.2 / (0.2 + sigma**2) * (x[0] - mu)
    se = out.target.std(0) / math.sqrt(n)
    assert ((out.target.mean(0) - expected).abs() <= 5 * se).all()
    torch.testing.assert_close(out.weight, torch.full((n,), sigma / (1 + sigma**2)), rtol=1e-5, atol=0)


def test_sds_target_mean_matches_quadrature_gmm(gmm):
    """GMM: E_n[D(x + sigma n, sigma)] by 2-D Gauss-Hermite quadrature (80^2 nodes, exact to ~1e-10
    for this smooth integrand) against the SDS Monte-Carlo mean. Tolerance: 5 standard errors."""
    n = 20_000
    x0 = torch.tensor([0.4, 0.3], dtype=torch.float64)
    sds = SDS(gmm, SDSConfig(guidance_scale=1.0, t_schedule="anneal", t_min=0.1, t_max=0.3))
    out = sds(
        x0.repeat(n, 1), gmm.condition([""] * n), step=0, total_steps=5, generator=torch.Generator().manual_seed(3)
    )
    sigma = float(gmm.sigma_from_time(torch.tensor([0.3]))[0])
    nodes, weights = np.polynomial.hermite.hermgauss(80)
    gx, gy = np.meshgrid(nodes, nodes, indexing="ij")
    w2 = torch.tensor((weights[:, None] * weights[None, :]).ravel() / math.pi)
    noise = torch.tensor(np.stack([gx.ravel(), gy.ravel()], 1) * math.sqrt(2))
    d = gmm.denoise(x0 + sigma * noise, sigma, gmm.condition([""] * len(noise)))
    expected = (w2[:, None] * d).sum(0)
    se = out.target.std(0) / math.sqrt(n)
    assert ((out.target.mean(0) - expected).abs() <= 5 * se).all(), (out.target.mean(0), expected, se)


# -- SDI ------------------------------------------------------------------------------------------
def test_sdi_without_eta_is_deterministic(gmm):
    x = torch.tensor([[0.3, -0.2], [-1.0, 0.8]], dtype=torch.float64)
    cond = gmm.condition([""] * 2)
    sdi = SDI(gmm, SDIConfig(guidance_scale=1.0, inversion_steps=6, inversion_eta=0.0, t_schedule="anneal"))
    a = sdi(x, cond, step=2, total_steps=10, generator=torch.Generator().manual_seed(0))
    b = sdi(x, cond, step=2, total_steps=10, generator=torch.Generator().manual_seed(123))
    torch.testing.assert_close(a.target, b.target, rtol=0, atol=0)
    assert a.stats["t"] == pytest.approx(interpolate(0.98, 0.02, progress(2, 10)))
    noisy = SDI(gmm, SDIConfig(guidance_scale=1.0, inversion_steps=6, inversion_eta=0.5, t_schedule="anneal"))
    c = noisy(x, cond, step=2, total_steps=10, generator=torch.Generator().manual_seed(0))
    d = noisy(x, cond, step=2, total_steps=10, generator=torch.Generator().manual_seed(123))
    assert not torch.allclose(c.target, d.target)


def test_sdi_weightings():
    """"constant" (SDI's official loss 1/2 ||x - D||^2) is weight 1; threestudio's "uniform" w = 1 is 1/sigma."""
    sigma = torch.tensor([0.5, 2.0, 10.0])
    torch.testing.assert_close(sds_weight(sigma, "constant"), torch.ones(3))
    torch.testing.assert_close(sds_weight(sigma, "uniform"), 1 / sigma)
    torch.testing.assert_close(sds_weight(sigma, "sds"), sigma / (1 + sigma**2))
    prior = gaussian()
    x = torch.tensor([[0.3, -0.2], [-1.0, 0.8]], dtype=torch.float64)
    out = SDI(prior, SDIConfig(weighting="constant", weight=2.0, inversion_steps=3))(x, prior.condition([""] * 2))
    torch.testing.assert_close(out.weight, torch.full((2,), 2.0, dtype=out.weight.dtype))


def test_sdi_ddpm_inversion_noise_has_the_official_scale():
    """One inversion step sigma -> sigma': eta = 0 is deterministic; "ddpm" adds eta * s * n with the VE form
    of the DDPM posterior std, "mix" replaces part of eps_hat (total noise sigma' eta n)."""
    prior = gaussian(var=0.3)
    x = torch.randn(20000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cond = prior.condition([""] * len(x))
    times = [0.2, 0.5]
    s, s_next = prior.sigma_from_time(torch.tensor(times)).tolist()
    clean, _ = ddim_invert(prior, x, cond, 0.5, 1, 1.0, eta=0.0, times=times, noise="ddpm")
    again, _ = ddim_invert(prior, x, cond, 0.5, 1, 1.0, eta=0.0, times=times, noise="ddpm",
                           generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(clean, again, rtol=0, atol=0)
    eta = 0.3
    noisy, _ = ddim_invert(prior, x, cond, 0.5, 1, 1.0, eta=eta, times=times, noise="ddpm",
                           generator=torch.Generator().manual_seed(1))
    # VP: var = (1 - a_t)/(1 - a_n) (1 - a_n/a_t), a = 1/(1 + sigma^2); VE: divided by a_n
    a_t, a_n = 1 / (1 + s**2), 1 / (1 + s_next**2)
    expected_std = eta * math.sqrt((1 - a_t) / (1 - a_n) * (1 - a_n / a_t) / a_n)
    measured = float((noisy - clean).std())
    assert measured == pytest.approx(expected_std, rel=0.02), (measured, expected_std)
    assert 0.1 < expected_std < 1.0  # a real, non-trivial scale at these levels (0.33)


def test_sdi_official_grid_offset_and_validation():
    """"fixed" steps on the k/steps grid below t, then to t_end (fewer calls for small t: 6 instead of 11 at
    t = 0.45); the offset inverts up to one grid step past t and still denoises at level t."""
    assert inversion_times(0.45, 10, "fixed") == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.45])
    assert inversion_times(0.5, 4, "span") == pytest.approx([0.0, 0.125, 0.25, 0.375, 0.5])
    assert inversion_times(0.52, 10, "fixed", t=0.45) == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.52])
    prior = gaussian()
    x = torch.tensor([[0.3, -0.2], [-1.0, 0.8]], dtype=torch.float64)
    cfg = SDIConfig(guidance_scale=1.0, inversion_steps=10, inversion_grid="fixed", t_min=0.45, t_max=0.98,
                    t_schedule="anneal", inversion_offset=True)
    sdi = SDI(prior, cfg)
    ends = []
    for seed in range(20):
        prior.counter.reset()
        out = sdi(x, prior.condition([""] * 2), step=9, total_steps=10, generator=torch.Generator().manual_seed(seed))
        assert out.stats["t"] == pytest.approx(0.45)
        assert prior.counter.calls == 6  # grid 0, .1, .2, .3, .4 (below t), then t_end: 5 steps + the target
        ends.append(out.stats["t_end"])
    assert min(ends) >= 0.45 and max(ends) <= 0.55 and max(ends) - min(ends) > 0.05, ends
    for key, value in (("inversion_grid", "even"), ("inversion_noise", "add"), ("weighting", "x0")):
        with pytest.raises(ValueError, match=rf"guidance\.sdi\.{key} must be one of"):
            SDIConfig(**{key: value}).validate()
    with pytest.raises(ValueError, match=r"guidance\.sdi\.inversion_offset must be true or false"):
        SDIConfig(inversion_offset="yes").validate()


def _ddim_sample(prior, z, cond, t, steps):
    """DDIM from time t back to the inversion's start level, on the inversion's own grid."""
    sigmas = prior.sigma_from_time(torch.linspace(0.0, t, steps + 1)).tolist()
    for i in range(steps, 0, -1):
        d = prior.denoise(z, sigmas[i], cond)
        z = d + (sigmas[i - 1] / sigmas[i]) * (z - d)
    return z


def test_sdi_inversion_reproduces_x_under_ddim_for_a_gaussian():
    """Inverting x to t = 0.6 and sampling back with DDIM on the same grid returns x.

    Each inversion step evaluates D at the start of the step, the matching sampling step at its end,
    so the round trip is exact only as the steps shrink: O(h^2) per step, first order overall.
    Checked: 30 times more steps give at least 20 times less error, and 300 steps are within 3e-2
    (the points lie up to 2 units from the mean).
    """
    prior = gaussian(var=0.3)
    x = torch.tensor([[1.0, -0.5], [-0.2, 0.9], [2.5, 1.0]], dtype=torch.float64)
    cond = prior.condition([""] * 3)
    errors = []
    for steps in (10, 300):
        z, sigma_t = ddim_invert(prior, x, cond, t=0.6, steps=steps, guidance_scale=1.0)
        assert sigma_t == pytest.approx(float(prior.sigma_from_time(torch.tensor([0.6]))[0]))
        errors.append(float((_ddim_sample(prior, z, cond, 0.6, steps) - x).abs().max()))
    assert errors[1] < 3e-2 and errors[1] < errors[0] / 20, errors
    # the inverted latent is the deterministic encoding: noise-like in scale
    eps = (z - x) / sigma_t
    assert 0.2 < float(eps.pow(2).mean().sqrt()) < 3


# -- schedules ------------------------------------------------------------------------------------
def test_interpolate_schedules():
    for kind in ("linear", "log_linear", "cosine", "constant"):
        assert interpolate(2.0, 0.5, 0.0, kind) == pytest.approx(2.0)
        assert interpolate(2.0, 0.5, 1.0, kind) == pytest.approx(0.5 if kind != "constant" else 2.0)
        assert interpolate(2.0, 0.5, -1.0, kind) == interpolate(2.0, 0.5, 0.0, kind)  # clamped
        assert interpolate(2.0, 0.5, 3.0, kind) == interpolate(2.0, 0.5, 1.0, kind)
    assert interpolate(2.0, 0.5, 0.5, "linear") == pytest.approx(1.25)
    assert interpolate(2.0, 0.5, 0.5, "log_linear") == pytest.approx(1.0)  # geometric mean
    assert interpolate(2.0, 0.5, 0.5, "cosine") == pytest.approx(1.25)
    assert interpolate(2.0, 0.5, 0.25, "cosine") == pytest.approx(0.5 + 1.5 * 0.5 * (1 + math.cos(math.pi / 4)))
    with pytest.raises(ValueError, match="unknown schedule"):
        interpolate(1.0, 0.1, 0.5, "step")
    with pytest.raises(ValueError, match="positive"):
        interpolate(0.0, 0.1, 0.5, "log_linear")
    assert progress(0, 10) == 0.0 and progress(9, 10) == 1.0 and progress(0, 1) == 0.0


def test_one_schedule_type_over_the_run():
    """anneal() (lambda, t, lr decay) is the Schedule over the whole run: 0 at step 0, 1 at the last step."""
    from msd3d.schedules import Schedule, anneal

    for total in (1, 2, 10):
        for step in range(total + 1):
            for kind in ("constant", "linear", "log_linear", "cosine"):
                assert anneal(2.0, 0.5, step, total, kind) == interpolate(2.0, 0.5, progress(step, total), kind)
    assert anneal(2.0, 0.5, 9, 10) == 0.5 and anneal(2.0, 0.5, 0, 1) == 2.0
    second_half = Schedule(start=0.0, end=1.0, start_step=0.5, end_step=1.0, unit="run")
    assert [second_half.value(s, 11) for s in (0, 5, 10)] == [0.0, 0.0, 1.0]
    assert second_half.value(8, 11) == pytest.approx(0.6)
