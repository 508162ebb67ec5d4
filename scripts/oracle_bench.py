#!/usr/bin/env python
"""Text-to-3D benchmark on the offline oracle prior: MSD versus SDS (and SDI) on every catalogue family.

Each (family, method) pair is one real run of :func:`msd3d.workflows.text_to_3d.generate` with the shipped recipe
``configs/<method>-oracle.yaml`` on the CPU, prompt ``"a <family>"``. The oracle scores the finished
NeRF on a turntable (``OraclePrior.evaluate``): **mode PSNR** is the PSNR to the nearest catalogue
variant (what a mode-seeking method should reach), **blend PSNR** the PSNR to the variants' per-view
average (what a mean-seeking method converges to). ``mode - blend`` > 0 means the run landed on one
variant rather than on their blend.

The table (also ``table.md``) has one row per run: family, method, steps, wall time (training +
scoring + exports), training it/s, mode PSNR, blend PSNR, mode - blend, nearest variant, and the
geometry of the exported mesh (default export) against the nearest variant's true surface
(``msd3d.catalogue.scoring``): Chamfer distance (world units), F-score at 0.02 and 0.05, normal
consistency, height as a percentage of the true height, connected components, watertight; and summary
rows: mean per method and the number of families where MSD's mode PSNR beats SDS's (and SDI's).
``results.json`` holds the rows, the summary and the command. Every run keeps its directory under
``--out`` (``<family>-<method>/``: ``summary.json``, ``validation/*.png``, ``turntable.mp4``, mesh,
checkpoint), so the renders can be inspected.

    python scripts/oracle_bench.py                               # all families, MSD and SDS
    python scripts/oracle_bench.py --families mushroom,donut --methods msd,sds,sdi --steps 100
    python scripts/oracle_bench.py --skip-existing               # resume a partially done bench

On the learned catalogue prior (``--prior learned``: the trained pixel-space UNet that stands in for
Stable Diffusion) each run is the oracle recipe's scene, render, camera, shading and training with the
**guidance section of ``configs/<method>-sd.yaml``** (the Stable Diffusion defaults under test) and
the prior swapped; ``--methods`` may also name the settings in :data:`SETTINGS` (kernels, sampler
steps, lambda schedules, CFG scales), each a method plus overrides:

    python scripts/oracle_bench.py --prior learned --methods msd,msd-exp,msd-diffused,sds-cfg7.5,sds,sdi
    python scripts/oracle_bench.py --prior learned --families mushroom --prompt "a red mushroom"
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import shutil
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from msd3d.atomic_io import atomic_write_text
from msd3d.catalogue.families import CATALOGUE
from msd3d.config import RunConfig, load_config, recipe_dir
from msd3d.errors import Msd3dError
from msd3d.registry import GUIDANCE
from msd3d.run_dir import RunDir, read_json, write_json
from msd3d.workflows.text_to_3d import generate

METHODS = GUIDANCE.names()
DEFAULT_OUT = Path("results") / "oracle_bench"
#: Named settings for sweeps: setting -> (guidance method, overrides on top of its recipe).
SETTINGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "msd-s4": ("msd", ("guidance.msd.sampler_steps=4",)),
    "msd-exp": ("msd", ("guidance.msd.kernel=exp",)),
    "msd-exp-iv": ("msd", ("guidance.msd.kernel=exp", "guidance.msd.kernel_t_max=0.5")),
    "msd-diffused": ("msd", ("guidance.msd.kernel=diffused",)),
    "msd-lam-wide": ("msd", ("guidance.msd.lambda_start=6.0", "guidance.msd.lambda_end=0.5")),
    "msd-lam-narrow": ("msd", ("guidance.msd.lambda_start=0.5", "guidance.msd.lambda_end=0.05")),
    "msd-lam-global": ("msd", ("guidance.msd.lambda_start=20.0", "guidance.msd.lambda_end=0.2")),
    "msd-anneal": ("msd", ("guidance.msd.lambda_end=0.2",)),  # the default before issue 21: lambda 2 -> 0.2
    "msd-cfg1": ("msd", ("guidance.msd.guidance_scale=1.0",)),
    "msd-cfg3": ("msd", ("guidance.msd.guidance_scale=3.0",)),
    "sds-cfg7.5": ("sds", ("guidance.sds.guidance_scale=7.5",)),
}


#: One everyday prompt per catalogue variant (as people write them, not the catalogue's wording):
#: (family, variant) -> prompt. ``--attributes`` runs these; a run "hits" when it lands on the named variant.
ATTRIBUTE_PROMPTS: dict[tuple[str, str], str] = {
    ("donut", "strawberry"): "a pink donut", ("donut", "chocolate"): "a chocolate donut",
    ("donut", "upright_glazed"): "a blue donut",
    ("mushroom", "fly_agaric"): "a red mushroom", ("mushroom", "porcini"): "a brown mushroom",
    ("mushroom", "purple_cone"): "a purple mushroom",
    ("snowman", "top_hat"): "a snowman with a top hat", ("snowman", "two_ball"): "a snowman with a red beanie",
    ("snowman", "slim_blue"): "a snowman with a blue hat",
    ("table", "wooden_dining"): "a wooden table", ("table", "round_cafe"): "a round table",
    ("table", "low_coffee"): "a red coffee table",
    ("mug", "red_coffee"): "a red mug", ("mug", "blue_teacup"): "a blue teacup",
    ("mug", "green_travel"): "a green mug",
    ("lamp", "floor"): "a floor lamp", ("lamp", "desk"): "a desk lamp",
    ("lamp", "table"): "a lamp with an orange shade",
    ("rocket", "classic"): "a grey rocket", ("rocket", "tall_silver"): "a silver rocket",
    ("rocket", "stubby_orange"): "an orange rocket",
    ("tree", "pine"): "a pine tree", ("tree", "oak"): "an oak tree", ("tree", "autumn"): "an autumn tree",
    ("chair", "wooden"): "a wooden chair", ("chair", "bar_stool"): "a red bar stool",
    ("chair", "lounge"): "a blue lounge chair",
    ("house", "cottage"): "a cottage with a red roof", ("house", "townhouse"): "a blue townhouse",
    ("house", "barn"): "a red barn",
}


@dataclass(frozen=True)
class BenchEntry:
    """One run to make: a family, its prompt, the variant the prompt names (None: unqualified), a seed."""

    family: str
    prompt: str
    named_variant: str | None
    seed: int

    def folder(self, method: str, seeds: int) -> str:
        """``<family>-<method>`` (one seed, family prompts: the historical layout), else with the variant and seed."""
        stem = f"{self.family}-{self.named_variant}" if self.named_variant else self.family
        return f"{stem}-{method}" + (f"-s{self.seed}" if seeds > 1 or self.named_variant else "")


def bench_entries(args: argparse.Namespace) -> list[BenchEntry]:
    """The runs a bench makes: every family (or every attribute prompt of the families) at every seed."""
    out = []
    for seed in args.seeds:
        for family in args.families:
            if args.attributes:
                out += [BenchEntry(f, p, v, seed) for (f, v), p in ATTRIBUTE_PROMPTS.items() if f == family]
            else:
                out.append(BenchEntry(family, args.prompt or family_prompt(family), None, seed))
    return out


def setting_method(name: str) -> tuple[str, tuple[str, ...]]:
    """(guidance method, overrides) of a plain method name or a named setting."""
    return SETTINGS.get(name, (name, ()))


@dataclass
class BenchRow:
    """One finished run, as the table shows it."""

    family: str
    method: str
    steps: int
    wall_s: float
    """Seconds of the whole run: training, scoring and exports (summed over resumed sessions' training)."""
    train_s: float
    it_per_s: float
    mode_psnr: float
    blend_psnr: float
    nearest_variant: str
    run_dir: str
    validation_png: str | None = None
    video: str | None = None
    chamfer: float = float("nan")
    """Two-sided Chamfer distance of the exported mesh to the nearest variant's true surface (world units)."""
    fscore_02: float = float("nan")
    fscore_05: float = float("nan")
    normal_consistency: float = float("nan")
    height_ratio: float = float("nan")
    """Mesh height over the true variant's."""
    components: int = 0
    watertight: bool = False
    prompt: str = ""
    seed: int = 0
    named_variant: str | None = None
    """The variant an attribute prompt names (None for an unqualified prompt)."""
    turntable_png: str | None = None

    @property
    def hit(self) -> bool | None:
        """Whether the run landed on the variant its prompt names (None: the prompt names none)."""
        return None if self.named_variant is None else self.nearest_variant == self.named_variant

    @property
    def mode_minus_blend(self) -> float:
        return self.mode_psnr - self.blend_psnr


def recipe_path(method: str) -> Path:
    """``configs/<method>-oracle.yaml``; a clear error when it is not shipped."""
    path = recipe_dir() / f"{method}-oracle.yaml"
    if not path.is_file():
        raise Msd3dError(
            f"no recipe {path.name} in {recipe_dir()}; choose --methods among the shipped *-oracle recipes"
        )
    return path


def family_prompt(family: str) -> str:
    return f"a {family}"


def sd_guidance_values(method: str) -> dict[str, Any]:
    """The guidance section of ``configs/<method>-sd.yaml`` as dotted keys (``guidance.msd.kernel``)."""
    from omegaconf import OmegaConf

    from msd3d.config import load_yaml

    path = recipe_dir() / f"{method}-sd.yaml"
    if not path.is_file():
        raise Msd3dError(f"no recipe {path.name} in {recipe_dir()}; the learned-prior bench needs it")
    section = OmegaConf.to_container(load_yaml(path).get("guidance", {}))
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}.{key}")
        else:
            out[prefix] = node

    walk(section, "guidance")
    return out


def run_config(method: str, entry: BenchEntry, args: argparse.Namespace, run_dir: Path) -> RunConfig:
    """The shipped recipe for ``method`` (a method or a named setting) with the bench's overrides
    (steps, seed, resolution, prior, --set)."""
    guidance, setting_overrides = setting_method(method)
    values: dict[str, Any] = {}
    if args.prior == "learned":
        values.update(sd_guidance_values(guidance))
        values.update({"prior.name": "learned", "prior.learned.weights": args.weights})
    values.update({
        "prompt": entry.prompt,
        "device": "cpu",
        "out": str(run_dir),
        "guidance.name": guidance,
        "seed": entry.seed,
        "train.steps": args.steps,
        "render.resolution": args.resolution,
    })
    return load_config(scene_recipe(guidance, args), [*setting_overrides, *(args.set or [])], values)


def scene_recipe(guidance: str, args: argparse.Namespace) -> Path:
    """The *-oracle recipe a run starts from. They all describe the same scene, so on the learned prior a
    method the oracle cannot run (vsd: no *-oracle recipe) takes msd's."""
    if args.prior == "learned" and not (recipe_dir() / f"{guidance}-oracle.yaml").is_file():
        return recipe_path("msd")
    return recipe_path(guidance)


def row_from_summary(entry: BenchEntry, method: str, summary: dict[str, Any], wall_s: float | None) -> BenchRow:
    scores = summary.get("scores") or {}
    if "mode_psnr" not in scores:
        raise Msd3dError(f"{summary.get('run_dir')}: summary.json has no oracle scores; was it an oracle run?")
    train_s = float(summary.get("train_seconds") or 0.0)
    if wall_s is None:  # a run finished by an earlier bench invocation
        wall_s = float(summary.get("bench_wall_seconds") or train_s + float(summary.get("finish_seconds") or 0.0))
    steps = int(summary["steps"])
    geometry = scores.get("geometry") or {}
    nan = float("nan")
    stills = sorted((Path(summary.get("run_dir", "")) / "report").glob("turntable_*.png"))
    return BenchRow(
        family=entry.family,
        prompt=entry.prompt,
        seed=entry.seed,
        named_variant=entry.named_variant,
        turntable_png=str(stills[0]) if stills else None,
        method=method,
        steps=steps,
        wall_s=wall_s,
        train_s=train_s,
        it_per_s=steps / train_s if train_s > 0 else float("nan"),
        mode_psnr=float(scores["mode_psnr"]),
        blend_psnr=float(scores["blend_psnr"]),
        nearest_variant=str(scores.get("nearest_variant", "")),
        run_dir=str(summary.get("run_dir", "")),
        validation_png=summary.get("validation_png"),
        video=(summary.get("video") or {}).get("file"),
        chamfer=float(geometry.get("chamfer", nan)),
        fscore_02=float(geometry.get("fscore@0.02", nan)),
        fscore_05=float(geometry.get("fscore@0.05", nan)),
        normal_consistency=float(geometry.get("normal_consistency", nan)),
        height_ratio=float(geometry.get("height_ratio", nan)),
        components=int(geometry.get("components", 0)),
        watertight=bool(geometry.get("watertight", False)),
    )


def run_one(entry: BenchEntry, method: str, args: argparse.Namespace, console: Console | None = None) -> BenchRow:
    """Train (or reuse, with --skip-existing) one run and return its row."""
    console = console or Console(width=150)
    family = entry.family
    run_dir = Path(args.out) / entry.folder(method, len(args.seeds))
    run = RunDir(run_dir)
    if run_dir.exists() and not (args.skip_existing or args.overwrite):
        raise Msd3dError(
            f"{run_dir} already exists; pass --skip-existing to keep finished runs (and resume unfinished ones) "
            "or --overwrite to start again"
        )
    if args.overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    config = run_config(method, entry, args, run_dir)
    if args.skip_existing and run.summary.is_file():
        summary = read_json(run.summary)
        if int(summary.get("steps", -1)) == config.train.steps:
            console.print(f"[dim]{family}/{method}: kept (summary.json exists)[/dim]")
            return row_from_summary(entry, method, summary, None)
        console.print(f"[yellow]{family}/{method}: summary has {summary.get('steps')} steps, wanted "
                      f"{config.train.steps}: rerunning[/yellow]")
        shutil.rmtree(run_dir)
    resume = args.skip_existing and run.checkpoint.is_file()
    if resume:
        # continue with the run's own config.yaml (plus the bench's step count)
        config = load_config(run.config, [], {"train.steps": config.train.steps})
    console.print(f"{family}/{method} {entry.prompt!r} seed {entry.seed}: "
                  f"{'resuming' if resume else 'training'} {config.train.steps} steps ...")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    summary = generate(config, run_dir, resume=resume, show_progress=args.progress, log=lambda _: None)
    wall = time.perf_counter() - start
    if resume:  # earlier sessions' training seconds count too
        wall += max(float(summary.get("train_seconds", 0.0)) - float(summary.get("seconds_this_session", 0.0)), 0.0)
    summary["bench_wall_seconds"] = wall
    write_json(run.summary, summary)
    row = row_from_summary(entry, method, summary, wall)
    console.print(
        f"  {family}/{method}: mode {row.mode_psnr:.2f} dB, blend {row.blend_psnr:.2f} dB, "
        f"{row.nearest_variant}, {row.wall_s:.0f} s, {row.it_per_s:.2f} it/s"
    )
    return row


# -- summary ----------------------------------------------------------------------------------------
def summarise(rows: Sequence[BenchRow]) -> dict[str, Any]:
    """Per-method means and, for every other method, the families where MSD's mode PSNR is higher."""
    methods = list(dict.fromkeys(r.method for r in rows))
    per_method: dict[str, dict[str, float]] = {}
    for m in methods:
        rs = [r for r in rows if r.method == m]
        per_method[m] = {
            "runs": len(rs),
            "mean_mode_psnr": statistics.fmean(r.mode_psnr for r in rs),
            "mean_blend_psnr": statistics.fmean(r.blend_psnr for r in rs),
            "mean_mode_minus_blend": statistics.fmean(r.mode_minus_blend for r in rs),
            "mean_wall_s": statistics.fmean(r.wall_s for r in rs),
            "mean_it_per_s": statistics.fmean(r.it_per_s for r in rs),
            "max_wall_s": max(r.wall_s for r in rs),
            "mode_psnr_at_least_20": sum(r.mode_psnr >= 20.0 for r in rs),
            "mean_chamfer": _nanmean(r.chamfer for r in rs),
            "max_chamfer": _nanmax(r.chamfer for r in rs),
            "mean_fscore_02": _nanmean(r.fscore_02 for r in rs),
            "mean_normal_consistency": _nanmean(r.normal_consistency for r in rs),
            "height_within_5_percent": sum(abs(r.height_ratio - 1.0) <= 0.05 for r in rs),
            "one_component": sum(r.components == 1 for r in rs),
            "named_runs": sum(r.hit is not None for r in rs),
            "hits": sum(bool(r.hit) for r in rs),
        }
    wins: dict[str, dict[str, Any]] = {}
    if "msd" in methods:
        msd = {(r.family, r.prompt, r.seed): r for r in rows if r.method == "msd"}
        for other in methods:
            if other == "msd":
                continue
            theirs = {(r.family, r.prompt, r.seed): r for r in rows if r.method == other}
            common = [k for k in msd if k in theirs]
            won = [k for k in common if msd[k].mode_psnr > theirs[k].mode_psnr]
            wins[other] = {"families": len(common), "msd_wins": len(won), "won": [list(k) for k in won]}
    return {"per_method": per_method, "msd_beats": wins}


def _nanmean(values) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return statistics.fmean(kept) if kept else float("nan")


def _nanmax(values) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return max(kept) if kept else float("nan")


def _fmt(value: float, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


HEADERS = (
    "family", "method", "steps", "wall s", "it/s", "mode PSNR", "blend PSNR", "mode-blend", "nearest variant",
    "Chamfer", "F@0.02", "F@0.05", "normal cons.", "height %", "parts", "closed", "prompt", "seed", "named variant",
)


def table_rows(rows: Sequence[BenchRow], summary: dict[str, Any]) -> list[list[str]]:
    """Rows of strings for both the rich table and the Markdown one (runs, then summary rows)."""
    out = [
        [r.family, r.method, str(r.steps), _fmt(r.wall_s, 0), _fmt(r.it_per_s), _fmt(r.mode_psnr),
         _fmt(r.blend_psnr), _fmt(r.mode_minus_blend), r.nearest_variant, _fmt(r.chamfer, 4),
         _fmt(r.fscore_02, 3), _fmt(r.fscore_05, 3), _fmt(r.normal_consistency, 3), _fmt(100 * r.height_ratio, 1),
         str(r.components), "yes" if r.watertight else "no", r.prompt, str(r.seed),
         "" if r.named_variant is None else f"{r.named_variant} ({'hit' if r.hit else 'miss'})"]
        for r in rows
    ]
    for m, s in summary["per_method"].items():
        out.append([f"mean ({s['runs']} runs)", m, "", _fmt(s["mean_wall_s"], 0), _fmt(s["mean_it_per_s"]),
                    _fmt(s["mean_mode_psnr"]), _fmt(s["mean_blend_psnr"]), _fmt(s["mean_mode_minus_blend"]), "",
                    f"{_fmt(s['mean_chamfer'], 4)} (max {_fmt(s['max_chamfer'], 4)})", _fmt(s["mean_fscore_02"], 3), "",
                    _fmt(s["mean_normal_consistency"], 3), f"{s['height_within_5_percent']} within 5 %",
                    f"{s['one_component']} one", "", "", "",
                    f"{s['hits']}/{s['named_runs']} hits" if s["named_runs"] else ""])
    for other, w in summary["msd_beats"].items():
        out.append([f"MSD > {other.upper()} (mode PSNR)", "", "", "", "", f"{w['msd_wins']}/{w['families']}"]
                   + [""] * (len(HEADERS) - 6))
    return out


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join("---" for _ in HEADERS) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def print_table(console: Console, rows: list[list[str]], n_runs: int) -> None:
    table = Table(title="msd3d text-to-3D benchmark (CPU)")
    for i, h in enumerate(HEADERS):
        table.add_column(h, justify="left" if i in (0, 1, 8, 16, 18) else "right")
    for i, r in enumerate(rows):
        table.add_row(*r, end_section=(i == n_runs - 1))
    console.print(table)


# -- pictures ---------------------------------------------------------------------------------------
def write_picture_grid(path: Path, rows: Sequence[BenchRow], methods: Sequence[str], cell: int = 96) -> None:
    """A PNG with one row per (prompt, seed) and one column per method: each run's first turntable still,
    labelled with its nearest variant and mode PSNR (red label: an attribute prompt's miss)."""
    from io import BytesIO

    from PIL import Image, ImageDraw

    from msd3d.atomic_io import atomic_write_bytes

    keys = list(dict.fromkeys((r.family, r.prompt, r.seed) for r in rows))
    by_key = {(r.family, r.prompt, r.seed, r.method): r for r in rows}
    label_w, text_h = 190, 24
    sheet = Image.new("RGB", (label_w + cell * len(methods), text_h + (cell + text_h) * len(keys)), "white")
    draw = ImageDraw.Draw(sheet)
    for j, m in enumerate(methods):
        draw.text((label_w + j * cell + 4, 6), m, fill="black")
    for i, (family, prompt, seed) in enumerate(keys):
        y = text_h + i * (cell + text_h)
        draw.text((4, y + cell // 2 - 6), f"{prompt} (seed {seed})"[:30], fill="black")
        for j, m in enumerate(methods):
            r = by_key.get((family, prompt, seed, m))
            if r is None:
                continue
            x = label_w + j * cell
            if r.turntable_png and Path(r.turntable_png).is_file():
                sheet.paste(Image.open(r.turntable_png).convert("RGB").resize((cell, cell)), (x, y))
            colour = "red" if r.hit is False else ("green" if r.hit else "black")
            draw.text((x + 2, y + cell + 2), f"{r.nearest_variant[:11]} {r.mode_psnr:.1f}", fill=colour)
    buffer = BytesIO()
    sheet.save(buffer, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


# -- main -------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", default="all", help="comma-separated catalogue families (default: all)")
    p.add_argument("--methods", default="msd,sds",
                   help=f"comma-separated methods among {','.join(METHODS)} or settings among "
                        f"{','.join(SETTINGS)} (default: msd,sds)")
    p.add_argument("--prior", choices=("oracle", "learned"), default="oracle",
                   help="oracle (exact, the *-oracle.yaml recipes) or learned (the trained catalogue UNet "
                        "with the guidance of the *-sd.yaml recipes)")
    p.add_argument("--weights", default="", help="learned prior weights (default: the shipped ones)")
    p.add_argument("--prompt", default="", help="one prompt for every run instead of \"a <family>\"")
    p.add_argument("--steps", type=int, default=None, help="train.steps for every run (default: the recipe's)")
    p.add_argument("--seed", "--seeds", dest="seeds", default="0",
                   help="seed of every run, or a comma-separated list run in turn (default 0)")
    p.add_argument("--attributes", action="store_true",
                   help="run the everyday attribute prompt of every variant of the families (ATTRIBUTE_PROMPTS; "
                        "'a red mushroom', ...) instead of \"a <family>\", and count the runs that land on it")
    p.add_argument("--workers", type=int, default=1,
                   help="runs at once, each in its own process with --threads torch threads (default 1)")
    p.add_argument("--grid", type=Path, default=None,
                   help="also write a picture grid (PNG: one turntable still per run, methods as columns) here")
    p.add_argument("--resolution", type=int, default=None, help="render.resolution (default: the recipe's)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="extra config override for every run (repeatable)")
    p.add_argument("--skip-existing", action="store_true", help="keep finished runs, resume unfinished ones")
    p.add_argument("--overwrite", action="store_true", help="delete existing run folders and start again")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--progress", action="store_true", help="show each run's progress bar")
    args = p.parse_args(argv)
    if args.families == "all":
        args.families = list(CATALOGUE)
    else:
        args.families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in args.families if f not in CATALOGUE]
    if unknown:
        p.error(f"unknown families {unknown}; choose from {', '.join(CATALOGUE)}")
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if setting_method(m)[0] not in METHODS]
    if bad:
        p.error(f"unknown methods {bad}; choose from {', '.join([*METHODS, *SETTINGS])}")
    try:
        args.seeds = [int(v) for v in str(args.seeds).split(",") if v.strip()]
    except ValueError:
        p.error(f"--seeds must be integers separated by commas, got {args.seeds!r}")
    if args.attributes and args.prompt:
        p.error("--attributes and --prompt exclude each other")
    if args.workers < 1:
        p.error("--workers must be at least 1")
    if args.skip_existing and args.overwrite:
        p.error("--skip-existing and --overwrite exclude each other")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 150)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    jobs = [(entry, method) for entry in bench_entries(args) for method in args.methods]
    try:
        if args.workers == 1:
            rows = [run_one(entry, method, args, console) for entry, method in jobs]
        else:  # fresh processes (spawn): each sets its own torch threads, none inherits the parent's state
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                rows = list(pool.map(run_one, *zip(*jobs), [args] * len(jobs)))
    except Msd3dError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    summary = summarise(rows)
    strings = table_rows(rows, summary)
    print_table(console, strings, len(rows))
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    results = {
        "command": command,
        "device": "cpu",
        "torch_threads": args.threads,
        "cpu_count": os.cpu_count(),
        "seeds": args.seeds,
        "workers": args.workers,
        "attributes": args.attributes,
        "bench_seconds": time.perf_counter() - start,
        "prior": args.prior,
        "weights": args.weights,
        "recipes": {m: str(scene_recipe(setting_method(m)[0], args)) for m in args.methods},
        "settings": {m: list(setting_method(m)[1]) for m in args.methods},
        "overrides": list(args.set or []),
        "rows": [asdict(r) | {"mode_minus_blend": r.mode_minus_blend} for r in rows],
        "summary": summary,
    }
    write_json(out / "results.json", results)
    atomic_write_text(out / "table.md", f"`{command}`\n\n" + markdown_table(strings))
    console.print(f"wrote {out / 'results.json'} and {out / 'table.md'}")
    if args.grid is not None:
        write_picture_grid(args.grid, rows, args.methods)
        console.print(f"wrote {args.grid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
