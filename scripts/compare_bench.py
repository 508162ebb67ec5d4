#!/usr/bin/env python
"""Side-by-side table of several ``scripts/oracle_bench.py`` results: one row per (prompt, seed), for each
method its nearest variant (✓ / ✗ against the variant an attribute prompt names), mode PSNR and Chamfer,
then per-method means and hit counts, and (``--by-family``) each family's means over its seeds with the
families where MSD's mean mode PSNR is at least 1 dB above each other method's.

    python scripts/compare_bench.py results/learned_attr/results.json results/learned_attr_anneal/results.json \\
        --out docs/results/learned_attributes.md --title "Attribute prompts on the learned prior"
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from msd3d.atomic_io import atomic_write_text


def compare(results: Sequence[dict]) -> str:
    rows: dict[tuple[str, int], dict[str, dict]] = {}
    methods: list[str] = []
    for result in results:
        for r in result["rows"]:
            key = (r.get("prompt") or f"a {r['family']}", int(r.get("seed", 0)))
            rows.setdefault(key, {})[r["method"]] = r
            if r["method"] not in methods:
                methods.append(r["method"])
    head = "| prompt | seed | named | " + " | ".join(f"{m}: nearest, mode dB, Chamfer" for m in methods) + " |"
    lines = [head, "|---|---|---|" + "---|" * len(methods)]
    for (prompt, seed), by in rows.items():
        named = next((r.get("named_variant") for r in by.values() if r.get("named_variant")), None)
        cells = []
        for m in methods:
            r = by.get(m)
            if r is None:
                cells.append("-")
                continue
            mark = "" if named is None else (" ✓" if r["nearest_variant"] == named else " ✗")
            cells.append(f"{r['nearest_variant']}{mark}, {r['mode_psnr']:.1f}, {r['chamfer']:.3f}")
        lines.append(f"| {prompt} | {seed} | {named or '-'} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| method | runs | hits | mean mode PSNR (dB) | mean Chamfer | mean wall s |")
    lines.append("|---|---|---|---|---|---|")
    for m in methods:
        rs = [by[m] for by in rows.values() if m in by]
        named = [r for r in rs if r.get("named_variant")]
        hits = f"{sum(r['nearest_variant'] == r['named_variant'] for r in named)}/{len(named)}" if named else "-"
        chamfers = [r["chamfer"] for r in rs if not math.isnan(r["chamfer"])]
        lines.append(f"| {m} | {len(rs)} | {hits} | {statistics.fmean(r['mode_psnr'] for r in rs):.2f} | "
                     f"{statistics.fmean(chamfers) if chamfers else float('nan'):.4f} | "
                     f"{statistics.fmean(r['wall_s'] for r in rs):.0f} |")
    return "\n".join(lines) + "\n"


def by_family(results: Sequence[dict], margin_db: float = 1.0) -> str:
    """Per family and method: mean mode PSNR and mean Chamfer over the seeds; then MSD's wins by ``margin_db``."""
    cells: dict[str, dict[str, list[dict]]] = {}
    methods: list[str] = []
    for result in results:
        for r in result["rows"]:
            cells.setdefault(r["family"], {}).setdefault(r["method"], []).append(r)
            if r["method"] not in methods:
                methods.append(r["method"])

    def mean(rs: list[dict], key: str) -> float:
        values = [r[key] for r in rs if not math.isnan(r[key])]
        return statistics.fmean(values) if values else float("nan")

    seeds = sorted({int(r.get("seed", 0)) for result in results for r in result["rows"]})
    lines = [f"Means over seeds {', '.join(map(str, seeds))} (mode PSNR dB / Chamfer):", "",
             "| family | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for family, by in cells.items():
        row = [f"{mean(by[m], 'mode_psnr'):.1f} / {mean(by[m], 'chamfer'):.3f}" if m in by else "-" for m in methods]
        lines.append(f"| {family} | " + " | ".join(row) + " |")
    row = []
    for m in methods:
        rs = [r for by in cells.values() for r in by.get(m, [])]
        row.append(f"**{mean(rs, 'mode_psnr'):.2f} / {mean(rs, 'chamfer'):.3f}**")
    lines.append("| **mean** | " + " | ".join(row) + " |")
    if "msd" in methods:
        lines.append("")
        for other in (m for m in methods if m != "msd"):
            both = [by for by in cells.values() if "msd" in by and other in by]
            wins = [f for f, by in cells.items() if by in both
                    and mean(by["msd"], "mode_psnr") >= mean(by[other], "mode_psnr") + margin_db]
            lines.append(f"* MSD >= {other} + {margin_db:g} dB (family means): {len(wins)}/{len(both)}"
                         + (f" ({', '.join(wins)})" if wins else ""))
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", type=Path, help="results.json files written by oracle_bench.py")
    p.add_argument("--out", type=Path, default=None, help="also write the Markdown here")
    p.add_argument("--title", default="Benchmark comparison")
    p.add_argument("--by-family", action="store_true", help="also the per-family means over seeds")
    args = p.parse_args(argv)
    loaded = [json.loads(path.read_text()) for path in args.results]
    commands = "\n".join(f"    {r['command']}" for r in loaded)
    text = f"# {args.title}\n\nMeasured by:\n\n{commands}\n\n"
    if args.by_family:
        text += by_family(loaded) + "\n"
    text += compare(loaded)
    print(text)
    if args.out is not None:
        atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
