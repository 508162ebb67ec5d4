"""The CPU demo end to end, this checkout against a baseline commit, side by side in one run (issue 25).

Each run is a fresh ``python -m msd3d generate PROMPT --prior P`` process (imports, training, scoring,
mesh, turntable and report: what a newcomer waits for), alternating baseline and current so both see
the same machine load. The baseline is a ``git worktree`` of the commit ``--baseline`` (e.g. the last
landed main), put first on ``PYTHONPATH``.

    python scripts/bench_cpu.py --baseline cef09d9 --repeats 2 --priors oracle,learned \
        --out results/bench_cpu --markdown docs/results/cpu_speed.md

Prints a table (median wall seconds per stage, speed-up) and writes ``results.json`` (every run) in
``--out``; with ``--markdown`` also a page with the table, the command and the machine's load.
Stages: ``train`` (the training loop), ``finish`` (scoring, validation render, ``mesh`` with its
geometry scores, ``video``: the turntable) and ``other``: the rest of the wall time, i.e. process
start, imports, building the prior and scene, the first optimiser step's imports, and the report page.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = {"oracle": "a red mushroom", "learned": "a red mushroom"}


def _worktree(ref: str, where: Path) -> Path:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(where), ref],
                   check=True, capture_output=True, text=True)
    return where


def run_demo(tree: Path, prior: str, out: Path, threads: int | None) -> dict[str, Any]:
    """One ``msd3d generate`` in a fresh process with ``tree`` first on the path; wall time and stages."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "msd3d", "generate", PROMPTS[prior], "--prior", prior, "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=tempfile.gettempdir(), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed in {tree}:\n{proc.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    stages = dict(summary.get("stage_seconds") or {})
    train = float(summary["train_seconds"])
    finish = float(summary.get("finish_seconds", 0.0))
    row = {
        "wall": wall,
        "train": train,
        "finish": finish,
        "other": wall - train - finish,
        "it_per_s": summary.get("it_per_s"),
        "mode_psnr": (summary.get("scores") or {}).get("mode_psnr"),
        "chamfer": ((summary.get("scores") or {}).get("geometry") or {}).get("chamfer"),
        "mesh": float((summary.get("mesh") or {}).get("seconds", 0.0)),
        "video": stages.get("video"),
        "stages": stages,
    }
    return row


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="", help="git commit to compare with (empty: only this checkout)")
    parser.add_argument("--priors", default="oracle", help="comma-separated: oracle,learned")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for the runs (0: torch's default)")
    parser.add_argument("--out", default="results/bench_cpu")
    parser.add_argument("--markdown", default="", help="also write this page (table, command, load)")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="msd3d-bench-cpu-"))
    trees = {"current": ROOT}
    if args.baseline:
        trees = {"baseline": _worktree(args.baseline, scratch / "baseline"), "current": ROOT}
    load_before = os.getloadavg()
    runs: list[dict[str, Any]] = []
    try:
        for prior in [p for p in args.priors.split(",") if p]:
            for repeat in range(args.repeats):
                for version, tree in trees.items():
                    run_out = scratch / f"{prior}-{version}-{repeat}"
                    row = run_demo(tree, prior, run_out, args.threads)
                    row.update(prior=prior, version=version, repeat=repeat)
                    runs.append(row)
                    print(f"{prior} {version} #{repeat}: {row['wall']:.1f} s (train {row['train']:.1f} s, "
                          f"{row['it_per_s'] or 0:.1f} it/s), mode {_fmt(row['mode_psnr'], 2)} dB", flush=True)
    finally:
        if args.baseline:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(trees["baseline"])],
                           capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)
    load_after = os.getloadavg()

    columns = ["wall", "other", "train", "finish", "mesh", "video", "it_per_s", "mode_psnr", "chamfer"]
    table = Table(title=f"CPU demo, median of {args.repeats} (seconds)")
    for name in ["prior", "version", *columns, "speed-up"]:
        table.add_column(name, justify="right" if name not in ("prior", "version") else "left")
    lines = ["| prior | version | " + " | ".join(columns) + " | speed-up (wall) |", "|" + "---|" * (len(columns) + 3)]
    summary: dict[str, Any] = {}
    for prior in dict.fromkeys(r["prior"] for r in runs):
        base = _median([r for r in runs if r["prior"] == prior and r["version"] == "baseline"], "wall")
        for version in trees:
            rows = [r for r in runs if r["prior"] == prior and r["version"] == version]
            med = {c: _median(rows, c) for c in columns}
            speedup = base / med["wall"] if base and version == "current" else None
            summary[f"{prior}/{version}"] = {**med, "speedup": speedup}
            cells = [_fmt(med[c], 4 if c == "chamfer" else 2 if c == "mode_psnr" else 1) for c in columns]
            ratio = _fmt(speedup, 2) + ("×" if speedup else "")
            table.add_row(prior, version, *cells, ratio)
            lines.append(f"| {prior} | {version} | " + " | ".join(cells) + f" | {ratio} |")
    Console().print(table)
    command = "python scripts/bench_cpu.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    record = {"command": command, "load_before": load_before, "load_after": load_after, "cpus": os.cpu_count(),
              "baseline": args.baseline, "runs": runs, "summary": summary}
    (out / "results.json").write_text(json.dumps(record, indent=2))
    if args.markdown:
        page = [
            "# CPU demo speed (issue 25)", "",
            f"`{command}` — each run a fresh `msd3d generate` process, baseline and current alternating;",
            f"{os.cpu_count()} CPUs, load average {load_before[0]:.2f} before and {load_after[0]:.2f} after.",
            "Medians in seconds; `other` = wall − train − finish (process start, imports, prior and scene,",
            "the report page); `mesh` includes the geometry scores against the true shapes.", "", *lines, "",
        ]
        Path(args.markdown).write_text("\n".join(page))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
