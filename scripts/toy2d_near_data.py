"""MSD's gradient-estimation error near the data, exact versus learned denoiser.

``msd3d toy2d``'s efficiency study draws its points uniformly on the canvas, so most lie far from the
data, where a learned denoiser at small sigma is extrapolating. Late in an optimisation the particles
sit near the data instead; this measures the same errors at points ``y + w n`` with ``y`` exact samples
of the prompt's distribution and ``w`` the median component width (one "width" off the ridge).

    python scripts/toy2d_near_data.py results/toy2d-learned > results/toy2d-near-data.md

Uses each dataset's ``<dir>/<dataset>/denoiser.safetensors`` written by ``msd3d toy2d --denoiser learned``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from msd3d.experiments.datasets2d import DATASETS, load_dataset
from msd3d.experiments.metrics2d import estimator_efficiency
from msd3d.experiments.toy2d import DEFAULT_KERNEL_INTERVAL, toy_guidance_defaults
from msd3d.priors.learned2d import LearnedMixturePrior

KERNELS = ("posterior", "exp", "exp-iv", "diffused")
STEPS = (1, 4, 16)
FACTORS = (0.5, 2.0, 8.0)


def main(folder: Path, points: int = 64) -> str:
    torch.set_num_threads(1)
    g = toy_guidance_defaults()
    lines = [
        f"MSD's relative error against the exact mean shift at {points} points one component width from the data "
        "(1 product sample; λ in multiples of the median component width).",
        "",
    ]
    for name in DATASETS:
        path = folder / name / "denoiser.safetensors"
        if not path.is_file():
            continue
        ds = load_dataset(name, None)
        prior, learned = ds.prior, LearnedMixturePrior.load(path)
        mask = prior.component_log_weights(ds.prompt).isfinite()
        width = float(torch.linalg.eigvalsh(prior.covs[mask])[:, 0].sqrt().median())
        gen = torch.Generator().manual_seed(7)
        x = prior.sample(points, gen, prompt=ds.prompt).double()
        x = x + width * torch.randn(x.shape, generator=gen, dtype=torch.float64)
        lambdas = [f * width for f in FACTORS]
        table = {}
        for label, den in (("exact", prior), ("learned", learned)):
            rows = estimator_efficiency(prior, x, ds.prompt, lambdas, g.msd, g.sds, g.sdi, kernels=KERNELS,
                                        msd_sampler_steps=STEPS, msd_samples=(1,), draws=(1,), methods=("msd",),
                                        generator=torch.Generator().manual_seed(3), denoiser=den,
                                        kernel_interval=DEFAULT_KERNEL_INTERVAL)
            for r in rows:
                table[(label, r["kernel"], r["sampler_steps"], round(r["lambda"] / width, 3))] = r["rel_error"]
        lines += [f"### {name} (prompt {ds.prompt!r})", "",
                  "| kernel | steps | " + " | ".join(f"λ={f:g}× exact | λ={f:g}× learned" for f in FACTORS) + " |",
                  "|---|---|" + "---|---|" * len(FACTORS)]
        for kernel in KERNELS:
            for steps in STEPS:
                cells = []
                for f in FACTORS:
                    cells += [f"{table[('exact', kernel, steps, round(f, 3))]:.3f}",
                              f"{table[('learned', kernel, steps, round(f, 3))]:.3f}"]
                lines.append(f"| {kernel} | {steps} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/toy2d_near_data.py LEARNED_SUITE_DIR")
    sys.stdout.write(main(Path(sys.argv[1])))
