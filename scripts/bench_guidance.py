#!/usr/bin/env python
"""Micro-benchmark of the guidance methods: denoiser calls and wall time per target.

For SDS, MSD and SDI with their default settings (``GuidanceConfig()``) on

* a 2-D class-conditional ``GaussianMixturePrior`` (exact, analytic denoiser), and
* Stable Diffusion architectures with random weights (``--arch tiny`` by default; ``--arch sd21`` is
  the real SD-2.1-base architecture, slow on CPU),

it reports, per target: batched denoiser calls and per-sample evaluations (``prior.counter``; CFG
counts two evaluations per sample), and milliseconds (median and min over ``--repeats`` after
``--warmup`` untimed runs). For SD priors it also times encode + backward of a render (VAE), the
rest of one distillation step's prior work.

    python scripts/bench_guidance.py                       # GMM + tiny SD on CPU
    python scripts/bench_guidance.py --arch tiny --arch sd21 --device cuda --json bench.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from msd3d.guidance import GuidanceConfig, build_guidance
from msd3d.priors.base import Condition, DiffusionPrior
from msd3d.priors.gmm import GaussianMixturePrior
from msd3d.registry import GUIDANCE

METHODS = GUIDANCE.names()


@dataclass
class Row:
    prior: str
    method: str
    batch: int
    calls: float
    evaluations: float
    ms_median: float
    ms_min: float
    finite: bool = True

    @property
    def ms_per_call(self) -> float:
        return self.ms_median / self.calls if self.calls else float("nan")

    @property
    def ms_per_evaluation(self) -> float:
        return self.ms_median / self.evaluations if self.evaluations else float("nan")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_it(fn, device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Milliseconds of ``fn()`` over ``repeats`` runs after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(1000.0 * (time.perf_counter() - start))
    return times


def bench_guidance(
    label: str,
    prior: DiffusionPrior,
    x: torch.Tensor,
    cond: Condition,
    config: GuidanceConfig,
    warmup: int,
    repeats: int,
) -> list[Row]:
    rows = []
    device = x.device
    for method in METHODS:
        guidance = build_guidance(method, prior, config)
        generator = torch.Generator(device=device).manual_seed(0)

        def target():
            with torch.no_grad():
                return guidance(x, cond, step=0, total_steps=100, generator=generator)

        prior.counter.reset()
        finite = bool(torch.isfinite(target().target).all())
        calls, evaluations = prior.counter.calls, prior.counter.evaluations
        times = time_it(target, device, warmup, repeats)
        rows.append(
            Row(label, method, x.shape[0], calls, evaluations, statistics.median(times), min(times), finite)
        )
    return rows


def gmm_prior() -> GaussianMixturePrior:
    """Eight anisotropic components on a ring, alternating between two classes ("a", "b")."""
    k = 8
    angles = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
    means = 3.0 * torch.stack([angles.cos(), angles.sin()], dim=1)
    rot = torch.stack([torch.stack([angles.cos(), -angles.sin()], 1), torch.stack([angles.sin(), angles.cos()], 1)], 1)
    covs = rot @ torch.diag(torch.tensor([0.3, 0.05], dtype=torch.float64)) @ rot.transpose(1, 2)
    return GaussianMixturePrior(means, covs, labels=torch.arange(k) % 2, class_names=["a", "b"])


def run_gmm(args) -> list[Row]:
    prior = gmm_prior()
    x = torch.randn(args.gmm_batch, 2, generator=torch.Generator().manual_seed(0)) * 2
    cond = prior.condition(["a"] * args.gmm_batch)
    label = f"gmm-2d (B={args.gmm_batch})"
    return bench_guidance(label, prior, x, cond, guidance_config(args), args.warmup, args.repeats)


def run_sd(arch: str, args, device: torch.device) -> tuple[list[Row], dict]:
    from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: F401  (imported before the build timer)
    from transformers import CLIPTextModel  # noqa: F401

    from msd3d.priors.sd_architectures import build_random_components
    from msd3d.priors.stable_diffusion import StableDiffusionConfig, StableDiffusionPrior, resolve_dtype

    render_size = args.render_size or (64 if arch == "tiny" else 512)
    config = StableDiffusionConfig(
        model=f"<random {arch}>", render_size=render_size, dtype=args.dtype, compile_unet=args.compile,
        channels_last=args.channels_last,
    )
    dtype = resolve_dtype(config.dtype, device)
    start = time.perf_counter()
    components = build_random_components(arch, device, dtype)
    prior = StableDiffusionPrior.from_components(**components, config=config, device=device)
    build_s = time.perf_counter() - start
    generator = torch.Generator(device=device).manual_seed(0)
    image = torch.rand(args.batch, 3, args.image_size, args.image_size, generator=generator, device=device)
    cond = prior.condition(["a photo of a wooden chair, front view"] * args.batch)
    with torch.no_grad():
        x = prior.encode(image)
    label = f"sd-{arch} ({str(dtype).removeprefix('torch.')}, {render_size}px, B={args.batch})"
    rows = bench_guidance(label, prior, x, cond, guidance_config(args), args.warmup, args.repeats)

    render = image.clone().requires_grad_(True)

    def encode_backward():
        latents = prior.encode(render)
        (latents.float() ** 2).sum().backward()

    enc = time_it(encode_backward, device, args.warmup, args.repeats)
    extra = {
        "prior": label,
        "build_s": build_s,
        "encode_backward_ms_median": statistics.median(enc),
        "encode_backward_ms_min": min(enc),
    }
    prior = components = None  # release device memory before the next architecture
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows, extra


def guidance_config(args) -> GuidanceConfig:
    config = GuidanceConfig()
    if args.msd_steps:
        config.msd.sampler_steps = args.msd_steps
    if args.sdi_steps:
        config.sdi.inversion_steps = args.sdi_steps
    return config


def print_table(rows: list[Row], extras: list[dict], title: str) -> None:
    header = ["prior", "method", "calls/target", "evals/target", "ms/target (median)", "ms/target (min)", "ms/call",
              "ms/eval"]
    all_finite = all(r.finite for r in rows)
    header += [] if all_finite else ["target"]
    body = [
        [r.prior, r.method, f"{r.calls:g}", f"{r.evaluations:g}", f"{r.ms_median:.2f}", f"{r.ms_min:.2f}",
         f"{r.ms_per_call:.3f}", f"{r.ms_per_evaluation:.3f}"]
        + ([] if all_finite else ["ok" if r.finite else "NON-FINITE"])
        for r in rows
    ]
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for i, name in enumerate(header):
            table.add_column(name, justify="left" if i < 2 else "right")
        for line in body:
            table.add_row(*line)
        console = Console(width=max(140, Console().width))
        console.print(table)
        for e in extras:
            console.print(
                f"{e['prior']}: VAE encode+backward {e['encode_backward_ms_median']:.2f} ms (median), "
                f"random weights built in {e['build_s']:.1f} s"
            )
    except ImportError:  # pragma: no cover - rich is a dependency, plain text is the fallback
        widths = [max(len(h), *(len(line[i]) for line in body)) for i, h in enumerate(header)]
        print(title)
        print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        for line in body:
            print("  ".join(c.ljust(w) for c, w in zip(line, widths)))
        for e in extras:
            print(f"{e['prior']}: VAE encode+backward {e['encode_backward_ms_median']:.2f} ms (median)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--arch", action="append", choices=["tiny", "sd21"], help="SD architectures (repeatable; default tiny)"
    )
    parser.add_argument("--no-gmm", action="store_true", help="skip the 2-D Gaussian mixture")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp16", "bf16", "fp32"])
    parser.add_argument("--batch", type=int, default=1, help="renders per target for SD")
    parser.add_argument("--image-size", type=int, default=64, help="render resolution before resizing")
    parser.add_argument("--render-size", type=int, default=0, help="VAE input size (default 64 tiny, 512 sd21)")
    parser.add_argument("--gmm-batch", type=int, default=256)
    parser.add_argument("--msd-steps", type=int, default=0, help="override msd.sampler_steps")
    parser.add_argument("--sdi-steps", type=int, default=0, help="override sdi.inversion_steps")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (CUDA only)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    from msd3d.device import resolve_device

    device = resolve_device(args.device)
    rows: list[Row] = []
    extras: list[dict] = []
    if not args.no_gmm:
        rows += run_gmm(args)
    for arch in args.arch or ["tiny"]:
        sd_rows, extra = run_sd(arch, args, device)
        rows += sd_rows
        extras.append(extra)

    cfg = guidance_config(args)
    title = (
        f"guidance targets on {device} ({torch.get_num_threads()} CPU threads), defaults: "
        f"sds CFG {cfg.sds.guidance_scale:g}; msd {cfg.msd.sampler_steps} steps CFG {cfg.msd.guidance_scale:g}; "
        f"sdi {cfg.sdi.inversion_steps} inversion steps + 1, CFG {cfg.sdi.guidance_scale:g}"
    )
    print_table(rows, extras, title)
    if args.json:
        payload = {
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "warmup": args.warmup,
            "repeats": args.repeats,
            "rows": [
                asdict(r) | {"ms_per_call": r.ms_per_call, "ms_per_evaluation": r.ms_per_evaluation} for r in rows
            ],
            "sd": extras,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(f".{args.json.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(payload, indent=2))
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
