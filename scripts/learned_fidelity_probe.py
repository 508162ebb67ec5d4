#!/usr/bin/env python
"""Where the learned prior's attribute words act, and what MSD's target does with them (issue 21).

Two measurements on the shipped learned catalogue prior, at 16 random training cameras (seed 0) with the
trainer's view prompts, CFG 1 and 7.5:

1. **Selection by sigma.** From a start image (each variant's render, the variants' blend), the share of
   denoised estimates nearest the variant the prompt names: ``D(x + sigma n, sigma)`` (the denoiser on its
   own noisy inputs) against MSD's one-step posterior target at ``lambda = sigma`` (a chain from
   ``t_start = 0.98``: ``D(z_eff, sigma_eff)``, ``z_eff ~ x``, ``sigma_eff ~ lambda``), and the target's mean
   shift norm ``|m|``.
2. **Fixed point.** With ``x`` the named variant's exact render (the answer), how far MSD's target moves it:
   PSNR(target, answer) and the mean brightness change per pixel. An exact prior returns about ``x`` at small
   lambda; a trained UNet fed a clean image labelled noisy does not.

    python scripts/learned_fidelity_probe.py                               # "a red mushroom", to stdout
    python scripts/learned_fidelity_probe.py --family mug --prompt "a green mug" --out docs/results/x.md
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from msd3d.atomic_io import atomic_write_text
from msd3d.catalogue.families import CATALOGUE
from msd3d.catalogue.learned_prior import load_learned_prior
from msd3d.catalogue.learned_prior_config import SHIPPED_WEIGHTS
from msd3d.catalogue.prompt_attributes import variant_log_weights
from msd3d.render.cameras import CameraConfig, sample_cameras, view_prompts

SIGMAS = (0.3, 0.7, 1.5, 3.0, 6.0, 12.0)
LAMBDAS = (0.2, 0.5, 1.0, 2.0, 4.0)
SCALES = (1.0, 7.5)


def msd_one_step_target(prior, x, cond, lam: float, scale: float, generator: torch.Generator) -> torch.Tensor:
    """MSD's default target (posterior kernel, one step from t_start 0.98, start "x"): (B, 3, R, R)."""
    sigma = float(prior.sigma_from_time(torch.tensor([0.98]))[0])
    z = x + sigma * torch.randn(x.shape, generator=generator)
    precision = 1 / sigma**2 + 1 / lam**2
    return prior.denoise((z / sigma**2 + x / lam**2) / precision, precision**-0.5, cond, scale)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", default="mushroom")
    p.add_argument("--prompt", default="a red mushroom")
    p.add_argument("--weights", default=str(SHIPPED_WEIGHTS))
    p.add_argument("--out", type=Path, default=None, help="also write the tables (Markdown) here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    prior = load_learned_prior(args.weights)
    family = CATALOGUE[args.family]
    weights = variant_log_weights(args.prompt, family)
    named = [i for i in range(len(weights)) if math.isfinite(weights[i])]
    if len(named) != 1:
        p.error(f"{args.prompt!r} must name exactly one {args.family} variant")
    named = named[0]
    cam_cfg = CameraConfig(batch_size=16)
    cams = sample_cameras(cam_cfg, 32, generator=torch.Generator().manual_seed(0))
    cond = prior.condition(view_prompts(args.prompt, cams, cam_cfg))
    variants = family.render(cams, supersample=2) * 2 - 1  # (B, V, 3, R, R) in [-1, 1]

    def share_named(d: torch.Tensor) -> float:
        nearest = (d[:, None] - variants).pow(2).flatten(2).sum(-1).argmin(1)
        return float((nearest == named).float().mean())

    lines = [f"# Learned prior: where {args.prompt!r} acts (named variant {family.variant_names[named]})", "",
             f"`python scripts/learned_fidelity_probe.py --family {args.family} --prompt \"{args.prompt}\"` "
             "(16 random training cameras, seed 0, 1 thread)", "",
             "## 1. Share of estimates nearest the named variant, by sigma", "",
             "| start | sigma | " + " | ".join(f"noisy D, CFG {s}" for s in SCALES) + " | "
             + " | ".join(f"MSD target, CFG {s} (share, mean |m|)" for s in SCALES) + " |",
             "|---|---|" + "---|" * (2 * len(SCALES))]
    starts = {family.variant_names[v]: variants[:, v] for v in range(len(family))} | {"blend": variants.mean(1)}
    for start, x in starts.items():
        for sigma in SIGMAS:
            noisy, target = [], []
            for scale in SCALES:
                z = x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
                noisy.append(f"{share_named(prior.denoise(z, sigma, cond, scale)):.2f}")
                d = msd_one_step_target(prior, x, cond, sigma, scale, torch.Generator().manual_seed(1))
                target.append(f"{share_named(d):.2f}, {float((d - x).flatten(1).norm(dim=1).mean()):.1f}")
            lines.append(f"| {start} | {sigma} | " + " | ".join(noisy) + " | " + " | ".join(target) + " |")
    answer = variants[:, named]
    lines += ["", "## 2. MSD's target from the answer itself (the named variant's exact render)", "",
              "| lambda | " + " | ".join(f"CFG {s}: PSNR(target, answer) dB, brightness change /px"
                                         for s in SCALES) + " |",
              "|---|" + "---|" * len(SCALES)]
    for lam in LAMBDAS:
        cells = []
        for scale in SCALES:
            d = msd_one_step_target(prior, answer, cond, lam, scale, torch.Generator().manual_seed(1))
            psnr = 10 * math.log10(4 / float((d - answer).pow(2).mean()))  # data range [-1, 1]
            cells.append(f"{psnr:.1f}, {float((d - answer).mean()) / 2:+.4f}")
        lines.append(f"| {lam} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
