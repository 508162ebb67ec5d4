"""Bias of MSD's posterior-kernel estimate against the exact mean shift, per chain start (issue 9).

For a Gaussian mixture the exact mean shift is one call, ``m(x) = D(x, lambda) - x``. This averages
many independent chains per point so that what remains is the sampler's bias, and prints
``|mean(y) - x - m| / |m|`` (root mean square over points) for each start, lambda and step count.

    python scripts/msd_start_bias.py [--chains 20000] [--learned SECONDS]

``--learned`` also trains the small 2-D MLP denoiser of ``toy2d --denoiser learned`` on the mixture for
that many seconds and measures the estimate made with it against the same exact mean shift.
"""

from __future__ import annotations

import argparse
import time

import torch

from msd3d.guidance.msd import MSD_STARTS, MSDConfig, mean_shift_target
from msd3d.priors.gmm import GaussianMixturePrior

# the test-suite mixture (tests/conftest.py): three anisotropic components in 2-D
MEANS = [[-1.0, 0.0], [1.0, 0.5], [0.0, -1.2]]
COVS = [[[0.3, 0.1], [0.1, 0.1]], [[0.1, 0.0], [0.0, 0.4]], [[0.15, 0.0], [0.0, 0.15]]]
WEIGHTS = [0.5, 0.3, 0.2]
POINTS = [[0.0, 0.0], [-1.5, 0.6], [1.2, -0.4], [0.3, 1.5], [2.5, 2.0], [-3.0, -1.0]]


def relative_bias(
    prior, x, lam: float, steps: int, start: str, chains: int, seed: int = 0, denoiser=None
) -> tuple[float, float]:
    """(bias, standard error): ``RMS |mean(y) - x - m| / RMS |m|`` over points, ``chains`` chains per point,
    and the same ratio for the Monte-Carlo standard error of the mean (the noise floor of the bias)."""
    cfg = MSDConfig(kernel="posterior", sampler_steps=steps, samples=chains, guidance_scale=1.0, start=start)
    model = prior if denoiser is None else denoiser
    target, ys = mean_shift_target(model, x, model.condition([""] * len(x)), lam, cfg,
                                   torch.Generator().manual_seed(seed))
    exact = prior.mean_shift(x, lam)
    scale = exact.pow(2).sum(1).mean().sqrt()
    bias = (target - x - exact).pow(2).sum(1).mean().sqrt() / scale
    se = (ys.var(0) / chains).sum(1).mean().sqrt() / scale
    return float(bias), float(se)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=20000)
    parser.add_argument("--learned", type=float, default=0.0, help="also with a learned denoiser trained this long (s)")
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.3, 1.0, 2.0])
    args = parser.parse_args()
    prior = GaussianMixturePrior(MEANS, COVS, WEIGHTS)
    x = torch.tensor(POINTS, dtype=torch.float64)
    denoisers = {"exact": None}
    if args.learned > 0:
        from msd3d.priors.learned2d import Denoiser2DConfig, train_mixture_denoiser

        denoisers["learned"] = train_mixture_denoiser(prior, Denoiser2DConfig(max_seconds=args.learned))
        print(f"learned denoiser: {denoisers['learned'].metadata}")
    for name, denoiser in denoisers.items():
        print(f"\n{name} denoiser")
        table(prior, x, args, denoiser)


def table(prior, x, args, denoiser) -> None:
    began = time.perf_counter()
    print(f"relative bias RMS|mean(y) - x - m| / RMS|m| over {len(x)} points, {args.chains} chains each"
          " (+- Monte-Carlo standard error)")
    print(f"{'lambda':>6} {'steps':>5} " + " ".join(f"{s:>16}" for s in MSD_STARTS))
    for lam in args.lambdas:
        for steps in (1, 4, 16):
            row = [relative_bias(prior, x, lam, steps, start, args.chains, denoiser=denoiser) for start in MSD_STARTS]
            print(f"{lam:6.2f} {steps:5d} " + " ".join(f"{b:8.4f} +-{e:6.4f}" for b, e in row))
    print(f"({time.perf_counter() - began:.1f} s)")


if __name__ == "__main__":
    main()
