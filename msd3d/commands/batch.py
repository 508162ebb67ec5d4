"""``msd3d batch FILE.yaml``: train every prompt of a batch file into its own run directory.

Exit codes: 0 when no entry failed (ok or skipped), 1 when any entry failed (each failure is
recorded in ``batch_summary.json`` / ``.csv`` with its error line), 2 when the batch file or an
option is unusable (nothing runs), 130 when interrupted (rerun the same command to resume).
``--ray ADDRESS`` / ``--executor ray`` run the entries as Ray tasks (:mod:`msd3d.workflows.batch_ray`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

STATUS_STYLES = {"ok": "green", "skipped": "cyan", "failed": "bold red", "interrupted": "yellow", "not run": "dim"}
ACTION_STYLES = {"train": "green", "resume": "yellow", "skip": "cyan", "invalid": "bold red"}


def batch(
    file: Path = typer.Argument(
        ..., help="Batch YAML: 'prompts' (+ optional 'defaults'); see configs/batches/example.yaml."
    ),
    out: Optional[Path] = typer.Option(None, help="Batch root folder (default: outputs/<FILE stem>)."),
    shard: Optional[str] = typer.Option(
        None,
        metavar="I/N",
        help="Run only the entries with index % N == I (0-based), e.g. 0/4 ... 3/4 on four machines.",
    ),
    device: Optional[str] = typer.Option(
        None, help="Device for every entry, overriding the file: auto, cpu, cuda, cuda:N."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="List the resolved entries and run directories; train nothing."
    ),
    fail_fast: bool = typer.Option(False, "--fail-fast", help="Stop after the first failed entry."),
    allow_outside_root: bool = typer.Option(
        False,
        "--allow-outside-root",
        help="Let entries' 'out' be absolute, ~ or climb out of the batch root with '..'.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    threads: int = typer.Option(
        0, min=0,
        help="Torch threads per entry with the local executor (0: torch's default, one per core). Use 1 when "
        "the machine is shared, e.g. several shards at once: oversubscribed threads wait on each other.",
    ),
    ray: Optional[str] = typer.Option(
        None, "--ray", metavar="ADDRESS", rich_help_panel="Ray executor",
        help="Run entries as Ray tasks (needs the ray extra): --ray local starts Ray on this machine (one entry per "
        "GPU); --ray auto or --ray HOST:PORT joins a running cluster.",
    ),
    executor: Optional[str] = typer.Option(
        None, metavar="local|ray", rich_help_panel="Ray executor",
        help="local (default: one entry after another in this process) or ray (Ray on this machine, as --ray local).",
    ),
    gpus_per_run: Optional[float] = typer.Option(
        None,
        min=0,
        rich_help_panel="Ray executor",
        help="GPUs per entry with Ray (default: 1 if the cluster has GPUs, else 0).",
    ),
    cpus_per_run: float = typer.Option(
        1.0, rich_help_panel="Ray executor",
        help="CPUs (and torch threads) per entry with Ray; on a CPU-only machine entries at once = CPUs / this.",
    ),
    max_retries: int = typer.Option(
        3,
        min=0,
        rich_help_panel="Ray executor",
        help="Restarts of an entry whose Ray worker or node is lost (it resumes from its checkpoint).",
    ),
) -> None:
    """Train every prompt of FILE; finished entries are skipped and interrupted ones resume.

    Writes <out>/batch_summary.json and .csv. Exit code 0 if no entry failed, 1 if any failed.
    """
    from msd3d.commands import fail, user_errors

    with user_errors():
        from datetime import datetime, timezone

        from msd3d.workflows.batch_runner import (
            default_batch_root,
            load_batch_file,
            parse_shard,
            plan_batch,
            run_batch,
            summary_stem,
            write_batch_summary,
        )

        shard_range = parse_shard(shard)
        ray_options = _ray_options(executor, ray, gpus_per_run, cpus_per_run, max_retries)
        batch_file = load_batch_file(file)
        root = out if out is not None else default_batch_root(file)
        plan = plan_batch(batch_file, root, shard=shard_range, device=device, allow_outside_root=allow_outside_root)
        if dry_run:
            _print_plan(plan, root, shard)
            raise typer.Exit(1 if any(p.action == "invalid" for p in plan) else 0)

        from msd3d.run_lock import RunLock

        stem = summary_stem(shard_range)
        # one process per batch root (and shard): held until this command returns
        summary_lock = RunLock(Path(root) / f".{stem}.lock", what=f"batch root {str(root)!r}").acquire()

        counts = {a: sum(p.action == a for p in plan) for a in ("train", "resume", "skip", "invalid")}
        _log(
            f"batch {file}: {len(plan)} entries{f' (shard {shard})' if shard else ''} -> {root}: "
            f"{counts['train']} to train, {counts['resume']} to resume, "
            f"{counts['skip']} finished, {counts['invalid']} invalid"
        )
        for item in plan:
            if item.action == "invalid":
                _log(f"  {item.error}")
        meta: dict[str, Any] = {
            "batch_file": str(file),
            "root": str(root),
            "shard": shard,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        done: list = []

        def save_progress(result) -> None:  # keep the summary current, so a crash still leaves one
            done.append(result)
            done.sort(key=lambda e: e.index)  # Ray finishes entries in any order
            write_batch_summary(done, root, stem, meta)

        try:
            if ray_options is None:
                result = run_batch(
                    plan, show_progress=not quiet, log=_log, fail_fast=fail_fast, on_result=save_progress,
                    threads=threads,
                )
            else:
                from msd3d.workflows.batch_ray import run_ray_batch

                meta["executor"] = f"ray {ray_options.address}"
                result = run_ray_batch(
                    plan, root, ray_options, show_progress=not quiet, log=_log, fail_fast=fail_fast,
                    on_result=save_progress,
                )
        finally:
            summary_lock.release()
        json_path, csv_path = write_batch_summary(result, root, stem, meta)
        _print_results(result, root)
        _write_index(root)
        typer.echo(f"summary: {json_path} and {csv_path}")
        if result.interrupted:
            fail(f"batch interrupted; rerun the same command to resume (summary in {json_path})", 130)
        if result.failed:
            _log(f"{result.failed} of {len(result.entries)} entries failed; see the error column of {csv_path}")
            raise typer.Exit(1)


def _ray_options(
    executor: Optional[str],
    address: Optional[str],
    gpus_per_run: Optional[float],
    cpus_per_run: float,
    max_retries: int,
):
    """The Ray executor's options (checked; Ray must be installed), or None for the local executor."""
    from msd3d.errors import Msd3dError

    if executor not in (None, "local", "ray"):
        raise Msd3dError(f"--executor {executor!r} is not local or ray")
    if executor == "local" and address is not None:
        raise Msd3dError("--executor local and --ray contradict each other; drop one")
    if executor != "ray" and address is None:
        return None
    from msd3d.workflows.batch_ray import RayOptions, check_ray_options

    options = RayOptions(
        address=address or "local", gpus_per_run=gpus_per_run, cpus_per_run=cpus_per_run, max_retries=max_retries
    )
    check_ray_options(options)
    return options


def _write_index(root) -> None:
    """The batch's index.html (and each run's report.html); a page never fails a finished batch."""
    from msd3d.report import write_batch_index

    try:
        _log(f"report: {write_batch_index(root)}")
    except Exception as exc:
        _log(f"index.html not written ({type(exc).__name__}: {exc}); retry with: msd3d report {root}")


def _log(message: str) -> None:
    typer.echo(message, err=True)


def _table(title: str):
    from rich.markup import escape
    from rich.table import Table

    return Table(title=escape(title), title_justify="left", show_lines=False, header_style="bold")


def _add_column(table, name: str) -> None:
    """Short columns never wrap; the prompt and the last (path / error) column fold."""
    numeric = name in ("steps", "seconds", "PSNR mode/blend")
    if name in ("prompt", "run directory / error"):
        table.add_column(name, overflow="fold", min_width=10)
    elif name in ("#", "seed", "status", "action", "steps", "seconds"):
        table.add_column(name, no_wrap=True, justify="right" if numeric else "left")
    else:
        table.add_column(name, overflow="fold", justify="right" if numeric else "left")


def _print_plan(plan, root: Path, shard: Optional[str]) -> None:
    from rich.console import Console
    from rich.markup import escape

    table = _table(f"batch plan -> {root}{f' (shard {shard})' if shard else ''}")
    for name in ("#", "prompt", "seed", "steps", "prior/guidance", "action", "run directory / error"):
        _add_column(table, name)
    for item in plan:
        action = f"[{ACTION_STYLES[item.action]}]{item.action}[/]"
        if item.config is None or item.action == "invalid":
            table.add_row(str(item.index), _text(item.prompt), "", "", "", action, _text(_clip(item.error or "")))
            continue
        cfg = item.config
        table.add_row(
            str(item.index), _text(item.prompt), str(cfg.seed), str(cfg.train.steps),
            f"{cfg.prior.name}/{cfg.guidance.name}", action, escape(_short(item.run_dir, root)),
        )
    Console(soft_wrap=False).print(table)


def _text(text: str) -> str:
    """User text for a rich table: control characters as escapes (never raw), markup escaped."""
    from rich.markup import escape

    from msd3d.config import printable

    return escape(printable(text))


def _short(path: Any, root: Path) -> str:
    """``path`` relative to the batch root when inside it (the tables' titles name the root)."""
    if path is None:
        return ""
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def _clip(text: str, limit: int = 160) -> str:
    """Long error lines are cut in the table; the summary files keep them whole."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _psnr(scores: dict[str, Any]) -> str:
    """``"17.57/19.54"`` (dB) when the prior scored the run (the oracle), else empty."""
    if scores.get("mode_psnr") is None:
        return ""
    return f"{scores['mode_psnr']:.2f}/{_fmt(scores.get('blend_psnr'), '.2f')}"


def _fmt(value: Any, spec: str) -> str:
    return "" if value is None else format(value, spec)


def _print_results(result, root: Path) -> None:
    from rich.console import Console

    counts = ", ".join(f"{n} {status}" for status, n in result.counts().items())
    table = _table(f"batch finished in {result.seconds:.1f} s: {counts} -> {root}")
    for name in ("#", "prompt", "seed", "status", "steps", "seconds", "PSNR mode/blend", "run directory / error"):
        _add_column(table, name)
    for e in result.entries:
        scores = e.scores or {}
        table.add_row(
            str(e.index), _text(e.prompt), _fmt(e.seed, "d"), f"[{STATUS_STYLES.get(e.status, '')}]{e.status}[/]",
            _fmt(e.steps, "d"), f"{e.seconds:.1f}", _psnr(scores),
            _text(
                _clip(e.error or "") if e.status in ("failed", "interrupted", "not run") else _short(e.run_dir, root)
            ),
        )
    Console(soft_wrap=False).print(table)
