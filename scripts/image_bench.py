#!/usr/bin/env python
"""Text to image on the learned catalogue prior: every family prompt ("a <family>") x methods x seeds.

Each (family, method, seed) is one :func:`msd3d.workflows.text_to_2d.generate_images` run, exactly what
``msd3d image "a <family>" --prior learned --guidance <method> --seed <seed>`` does (the shipped recipe's
guidance section; defaults of :class:`~msd3d.workflows.text_to_2d.ImageConfig` unless ``--steps`` /
``--n`` / ``--set image.*`` say otherwise), sharing one loaded prior. The table has, per run, the
mean over its images of mode PSNR, blend PSNR, mode - blend, saturation and RMS contrast (and the
nearest renders' saturation and contrast for reference), the nearest variant of its first image and
the mode PSNR of a blank white image (the floor; see :mod:`msd3d.catalogue.image_scores`), and mean
rows per method. The picture has one row per family and one column per method and seed (the first
image of each run, upscaled 4x).

    python scripts/image_bench.py                                    # 10 families x msd, sds x seed 0
    python scripts/image_bench.py --families mushroom,mug --methods msd,sds,sdi --seeds 0,1 --steps 300
    python scripts/image_bench.py --markdown docs/results/learned_image.md --png docs/results/learned_image.png
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from msd3d.atomic_io import atomic_path, atomic_write_text
from msd3d.catalogue.families import CATALOGUE
from msd3d.config import apply_overrides
from msd3d.workflows.text_to_2d import ImageConfig, generate_images, load_image_run_config

COLUMNS = ("mode_psnr", "blend_psnr", "mode_minus_blend_db", "saturation", "contrast",
           "reference_saturation", "reference_contrast")


def run_one(prior: Any, family: str, method: str, seed: int, image: ImageConfig, out: Path,
            overrides: list[str]) -> dict[str, Any]:
    folder = out / f"{family}-{method}-{seed}"
    if (folder / "summary.json").is_file():
        return json.loads((folder / "summary.json").read_text())
    values = {"prompt": f"a {family}", "prior.name": "learned", "guidance.name": method, "seed": seed,
              "device": "cpu"}
    cfg = load_image_run_config(None, "learned", method, overrides, values)
    return generate_images(cfg, image, folder, prior=prior, show_progress=False, log=lambda m: None)


def markdown(rows: list[dict[str, Any]], methods: list[str], command: str, wall: float) -> str:
    head = ["family", "method", "seed", "mode PSNR", "blend PSNR", "mode − blend", "saturation", "contrast",
            "ref. saturation", "ref. contrast", "nearest variant", "blank PSNR", "it/s"]
    lines = [
        "# Text to image on the learned catalogue prior (`msd3d image`)",
        "",
        f"`{command}` — {wall / 60:.1f} min on the CPU.",
        "",
        "Per run: the mean over its images (`image.n` each) of the scores of `msd3d/catalogue/image_scores.py`:",
        "mode PSNR to the nearest training render of the family (nearest over a 5×5×3×3 grid of front-view",
        "cameras in the prior's training ranges × its three looks: the prior is conditioned on text,",
        "\"a <family>, front view\", not on a camera), blend PSNR to the variants' mean image (nearest over the",
        "same set), mean HSV saturation and RMS contrast of the image and of its nearest render (ref.).",
        "*Blank PSNR* is the mode PSNR of an all-white image: the object covers a small part of the 32×32",
        "frame, so PSNRs must be read against it.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        m = r["scores"]["mean"]
        first = r["scores"]["images"][0]
        lines.append("| " + " | ".join([
            r["prompt"].removeprefix("a "), r["guidance"], str(r["seed"]),
            *(f"{m[k]:.2f}" if "psnr" in k or "db" in k else f"{m[k]:.3f}" for k in COLUMNS),
            first["nearest_variant"], f"{r['scores']['scoring']['blank_mode_psnr']:.2f}", f"{r['it_per_s']:.1f}",
        ]) + " |")
    lines += ["", "Mean over families:", "", "| method | " + " | ".join(COLUMNS) + " |",
              "|---|" + "---|" * len(COLUMNS)]
    for method in methods:
        mine = [r["scores"]["mean"] for r in rows if r["guidance"] == method]
        if mine:
            cells = [f"{statistics.fmean(m[k] for m in mine):.3f}" for k in COLUMNS]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def picture(rows: list[dict[str, Any]], out: Path, families: list[str], columns: list[tuple[str, int]],
            path: Path, scale: int = 4) -> None:
    from PIL import Image, ImageDraw

    by_key = {(r["prompt"].removeprefix("a "), r["guidance"], r["seed"]): r for r in rows}
    size = rows[0]["size"] * scale
    label_w, head_h, pad = 70, 16, 4
    canvas = Image.new("RGB", (label_w + len(columns) * (size + pad), head_h + len(families) * (size + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, (method, seed) in enumerate(columns):
        draw.text((label_w + j * (size + pad) + 4, 2), f"{method} s{seed}", fill="black")
    for i, family in enumerate(families):
        y = head_h + i * (size + pad)
        draw.text((4, y + size // 2 - 6), family, fill="black")
        for j, (method, seed) in enumerate(columns):
            r = by_key.get((family, method, seed))
            if r is None:
                continue
            folder = out / f"{family}-{method}-{seed}"
            with Image.open(folder / r["files"]["images"][0]) as im:
                canvas.paste(im.convert("RGB").resize((size, size), Image.NEAREST), (label_w + j * (size + pad), y))
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", default=",".join(CATALOGUE), help="comma-separated families (default: all)")
    p.add_argument("--methods", default="msd,sds", help="comma-separated guidance methods")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--steps", type=int, default=None, help="image.steps (default ImageConfig's)")
    p.add_argument("--n", type=int, default=1, help="images per run (image.n)")
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE: config or image.* override")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=Path("results/image_bench"), help="run folders (reused if present)")
    p.add_argument("--markdown", type=Path, default=None, help="write the table here (default OUT/table.md)")
    p.add_argument("--png", type=Path, default=None, help="write the picture here (default OUT/grid.png)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    families = [f for f in args.families.split(",") if f]
    methods = [m for m in args.methods.split(",") if m]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    image_set = [s for s in args.set if s.startswith("image.")]
    run_set = [s for s in args.set if not s.startswith("image.")]
    image = ImageConfig(n=args.n, **({"steps": args.steps} if args.steps else {}))
    image = apply_overrides(image, image_set, section="image")

    from msd3d.catalogue.learned_prior import build_learned_prior
    from msd3d.catalogue.learned_prior_config import LearnedPriorConfig

    t0 = time.perf_counter()
    prior = build_learned_prior(LearnedPriorConfig(), device="cpu")
    rows = []
    for family in families:
        for method in methods:
            for seed in seeds:
                r = run_one(prior, family, method, seed, image, args.out, run_set)
                m = r["scores"]["mean"]
                print(f"{family:9s} {method:4s} seed {seed}: mode {m['mode_psnr']:.2f} blend {m['blend_psnr']:.2f} "
                      f"sat {m['saturation']:.3f} contrast {m['contrast']:.3f} ({r['train_seconds']:.1f} s)",
                      file=sys.stderr)
                rows.append(r)
    wall = time.perf_counter() - t0
    command = "python scripts/image_bench.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    md = args.markdown or args.out / "table.md"
    png = args.png or args.out / "grid.png"
    atomic_write_text(md, markdown(rows, methods, command.strip(), wall))
    picture(rows, args.out, families, [(m, s) for m in methods for s in seeds], png)
    print(f"wrote {md} and {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
