#!/usr/bin/env python
"""GPU speed check: ``msd3d bench --random-weights sd21`` for SDS, MSD and SDI, eager and compiled.

A prepared script for a session with one GPU (H100/H200; about 6-8 minutes including the build of
nerfacc's kernels and of the random SD-2.1-base weights). It runs the same library as
``msd3d bench`` in one process, so the ~1.3 B parameters are built once, directly on the GPU in fp16,
and shared by the variants:

    eager       fp16 UNet + VAE, no compilation (cuDNN autotuning on)
    fast        + torch.compile UNet in reduce-overhead mode (CUDA graphs) + compiled VAE encode
                + channels-last
    unet-only   torch.compile UNet (reduce-overhead) only, eager VAE   [when time remains]

Each variant times every method (64x64 renders, batch 1, the default recipe msd-sd) and prints a
table; ``bench_gpu.json`` (every variant, rewritten after each) goes to ``--out`` or ``$OUT``.
A variant that fails is recorded with its error and the next one runs. The GPU targets (SDS step
<= 40 ms, MSD step <= 3x SDS, MSD peak memory <= 16 GB) are checked for every variant.

    python scripts/bench_gpu.py                          # -> $OUT/bench_gpu.json (or ./bench_gpu.json)
    python scripts/bench_gpu.py --budget-s 420 --steps 10 --variants eager,fast

On this workplace's lent GPU machines (python3 3.12 with torch, transformers, typer, rich, nvcc and
ninja, but no diffusers, nerfacc, omegaconf or trimesh), carry those pure-Python packages from the
local venv in an ignored folder; msd3d itself is found from the checkout (this script puts the repo
root on ``sys.path``):

    echo /.gpu_site/ >> .git/info/exclude
    mkdir -p .gpu_site && cp -r .venv/lib/python3.11/site-packages/{diffusers,nerfacc,omegaconf,trimesh}* .gpu_site/
    find .gpu_site -name __pycache__ -prune -exec rm -rf {} +
    # device run, carry [".gpu_site"], timeout_s 570:
    PYTHONPATH=$PWD/.gpu_site PYTHONUNBUFFERED=1 python3 scripts/bench_gpu.py --out $OUT
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

T0 = time.perf_counter()
REPO = Path(__file__).resolve().parent.parent
if (REPO / "msd3d" / "__init__.py").is_file() and str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout without `pip install -e .`


def say(message: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f} s] {message}", flush=True)


@dataclass
class Variant:
    name: str
    options: dict[str, Any]
    min_s: float
    """Seconds of budget it needs to be started (compilation included)."""
    cli: list[str] = field(default_factory=list)


VARIANTS = {
    "eager": Variant("eager", {}, 45.0),
    "fast": Variant(
        "fast",
        {"compile": True, "compile_mode": "reduce-overhead", "compile_vae": True, "channels_last": True},
        200.0,
        ["--compile", "--compile-mode", "reduce-overhead", "--compile-vae", "--channels-last"],
    ),
    "unet-only": Variant(
        "unet-only", {"compile": True, "compile_mode": "reduce-overhead"}, 150.0,
        ["--compile", "--compile-mode", "reduce-overhead"],
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="output folder (default $OUT, else .)")
    parser.add_argument("--variants", default="eager,fast,unet-only", help=f"comma-separated: {', '.join(VARIANTS)}")
    parser.add_argument("--methods", default="sds,msd,sdi")
    parser.add_argument("--steps", type=int, default=15, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per method (compilation happens here)")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--budget-s", type=float, default=450.0, help="skip variants that would not fit in this")
    parser.add_argument("--arch", default="sd21", choices=["sd21", "tiny"], help="tiny: a dry run of this script")
    parser.add_argument("--device", default="cuda", help="cuda[:N]; cpu only for a dry run (compilation is skipped)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides for every variant")
    args = parser.parse_args(argv)

    out_dir = args.out or Path(os.environ.get("OUT") or ".")
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / "bench_gpu.json"
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        print(f"error: unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}", file=sys.stderr)
        return 2

    say("importing torch, diffusers, msd3d ...")
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA device; this script measures the GPU path (use `msd3d bench --device cpu` on a CPU, "
              "or --arch tiny --device cpu for a dry run of this script)", file=sys.stderr)
        return 2
    import diffusers  # noqa: F401
    import transformers  # noqa: F401
    from rich.console import Console

    from msd3d.errors import Msd3dError
    from msd3d.workflows.benchmark import (
        BenchConfig,
        build_components,
        parse_methods,
        prepare_nerfacc,
        print_report,
        run_bench,
    )

    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    on_cuda = device.type == "cuda"
    console = Console(width=140)
    results: dict[str, Any] = {
        "script": "scripts/bench_gpu.py",
        "device_name": torch.cuda.get_device_name(device) if on_cuda else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": diffusers.__version__,
        "settings": {"methods": args.methods, "steps": args.steps, "warmup": args.warmup,
                     "resolution": args.resolution, "overrides": list(args.overrides), "budget_s": args.budget_s},
        "setup_s": {"imports": time.perf_counter() - T0},
        "variants": {},
    }
    say(f"device: {results['device_name']}, torch {torch.__version__}, CUDA {torch.version.cuda}, arch {args.arch}")

    def save() -> None:
        tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
        os.replace(tmp, out_path)

    overrides = list(args.overrides)
    say("nerfacc CUDA kernels: loading (JIT build on a fresh machine, about a minute) ...")
    try:
        results["setup_s"]["nerfacc"] = prepare_nerfacc(device)
        say(f"nerfacc ready in {results['setup_s']['nerfacc']:.1f} s")
    except Msd3dError as err:
        say(f"nerfacc unavailable ({err}); falling back to batched sampling without the grid")
        results["nerfacc_error"] = str(err)
        overrides.append("render.use_occupancy_grid=false")
    save()

    dtype = "fp16" if on_cuda else "fp32"
    say(f"building {args.arch} with random weights on {device} ({dtype}) ...")
    start = time.perf_counter()
    components = build_components(args.arch, device, dtype)
    if on_cuda:
        torch.cuda.synchronize(device)
    results["setup_s"]["build"] = time.perf_counter() - start
    params = {k: sum(p.numel() for p in components[k].parameters()) for k in ("unet", "vae", "text_encoder")}
    results["parameters"] = params
    memory = f"; {torch.cuda.memory_allocated(device) / 2**30:.2f} GiB allocated" if on_cuda else ""
    say(f"built in {results['setup_s']['build']:.1f} s: " + ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in params.items())
        + memory)
    save()

    methods = parse_methods(args.methods)
    for name in names:
        variant = VARIANTS[name]
        left = args.budget_s - (time.perf_counter() - T0)
        if left < variant.min_s:
            say(f"skipping variant {name}: {left:.0f} s of budget left, it needs about {variant.min_s:.0f} s")
            results["variants"][name] = {"skipped": f"{left:.0f} s of budget left, needs about {variant.min_s:.0f} s"}
            save()
            continue
        cli = ["msd3d", "bench", "--random-weights", args.arch, "--device", str(device),
               "--methods", ",".join(methods), "--resolution", str(args.resolution),
               "--steps", str(args.steps), "--warmup", str(args.warmup), *variant.cli, *overrides]
        say(f"variant {name}: {' '.join(cli)}")
        config = BenchConfig(
            methods=methods, random_weights=args.arch, steps=args.steps, warmup=args.warmup, resolution=args.resolution,
            device=str(device), dtype=dtype, overrides=tuple(overrides), **variant.options,
        )
        start = time.perf_counter()
        try:
            report = run_bench(config, components=components, log=say)
        except Exception as err:  # record and go on to the next variant
            say(f"variant {name} failed: {type(err).__name__}: {err}")
            results["variants"][name] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(),
                                         "command": " ".join(cli)}
        else:
            print_report(report, console)
            data = report.to_dict()
            data["command"] = " ".join(cli)
            data["wall_s"] = time.perf_counter() - start
            results["variants"][name] = data
        finally:
            _reset(torch, components, on_cuda)
        save()
        say(f"variant {name} done in {time.perf_counter() - start:.0f} s; wrote {out_path}")

    _summary(results, say)
    save()
    say(f"finished; results in {out_path}")
    return 0


def _reset(torch: Any, components: dict[str, Any], on_cuda: bool) -> None:
    """Undo a variant's effects on the shared modules: compiled code, memory format, cached memory."""
    torch._dynamo.reset()
    for key in ("unet", "vae"):
        components[key].to(memory_format=torch.contiguous_format)
    gc.collect()
    if on_cuda:
        torch.cuda.empty_cache()


def _summary(results: dict[str, Any], say: Any) -> None:
    best: dict[str, Any] = {}
    for name, data in results["variants"].items():
        t = data.get("targets") if isinstance(data, dict) else None
        if not t or t.get("sds_ms_step") is None:
            continue
        say(
            f"{name:10s} SDS {t['sds_ms_step']:.1f} ms/step (<= 40: {t['sds_step_at_most_40ms']}); "
            + (f"MSD/SDS {t['msd_over_sds']:.2f}x (<= 3: {t['msd_at_most_3x_sds']}), 7000 MSD steps "
               f"{t['msd_7000_steps_minutes']:.1f} min; " if t.get("msd_over_sds") is not None else "")
            + (f"MSD peak {t['msd_peak_memory_gb']:.2f} GB (<= 16: {t['msd_peak_memory_at_most_16gb']})"
               if t.get("msd_peak_memory_gb") is not None else "")
        )
        if not best or t["sds_ms_step"] < best["targets"]["sds_ms_step"]:
            best = {"variant": name, "targets": t}
    results["best"] = best or None


if __name__ == "__main__":
    sys.exit(main())
