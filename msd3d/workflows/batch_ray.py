"""The Ray executor of ``msd3d batch``: every entry is one Ray task that trains, exports and renders
its run, on whichever GPU (or CPUs) of a workstation or cluster is free.

The semantics are the local executor's (:func:`msd3d.workflows.batch_runner.run_batch`): both call
:func:`msd3d.workflows.batch_runner.run_entry` for the work of one entry, so an entry is skipped when finished,
resumed from its checkpoint when interrupted, and a failure is recorded with its one-line error
while the others go on. The driver (the ``msd3d batch`` process) plans and validates every entry
before submitting anything, writes ``batch_summary.json``/``.csv`` itself, and shows a live table
fed by a small progress actor the tasks report to.

Lost workers: a task whose worker process or node dies is retried by Ray (``max_retries``; system
failures only, an entry's own error is a recorded result, never retried). ``run_entry`` decides
skip/resume/train from the run directory when the retry starts, so it resumes from the last
checkpoint the lost attempt wrote (every ``train.checkpoint_every`` steps).

Storage: run directories are read and written by the workers in place, so the batch root must be
on a filesystem every node mounts at the same path (NFS, a cluster filesystem; trivially true on
one machine). Run folders are not copied back to the driver. The driver writes a token file into
the root; a task on a node that cannot read it fails its entry with a one-line error instead of
training into a folder the driver never sees.

Ray is an optional dependency (``pip install "msd3d[ray]"``); this module imports it lazily.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from msd3d.atomic_io import atomic_write_text
from msd3d.errors import Msd3dError
from msd3d.workflows.batch_runner import (
    BatchResult,
    EntryResult,
    PlannedEntry,
    PriorCache,
    not_run,
    run_dir_action,
    run_entry,
)

__all__ = ["RayOptions", "RayBatchResult", "ProgressBoard", "import_ray", "check_ray_options", "run_ray_batch"]

RAY_MISSING = (
    'the Ray executor needs Ray, which is not installed: pip install "msd3d[ray]" (or drop --ray to run locally)'
)

LOCAL = "local"
"""``--ray`` without an address: start Ray embedded in this process, on this machine only."""


def import_ray():
    """The ``ray`` module, or a one-line :class:`Msd3dError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise Msd3dError(RAY_MISSING) from None
    return ray


@dataclass
class RayOptions:
    """How the batch uses Ray."""

    address: str = LOCAL
    """``local`` (embedded Ray on this machine), ``auto`` (the cluster ``ray start`` made here) or
    an address (``host:6379``, ``ray://host:10001``)."""
    gpus_per_run: float | None = None
    """GPUs each entry holds; None: 1 when the cluster has GPUs, else 0."""
    cpus_per_run: float = 1.0
    """CPUs each entry holds (on a CPU-only machine, entries at once = CPUs / cpus_per_run); also
    the entry's number of torch threads."""
    max_retries: int = 3
    """Times an entry is restarted after its worker or node is lost."""
    num_cpus: int | None = None
    """CPUs of an embedded Ray (None: all of this machine's); ignored when joining a cluster."""
    poll_seconds: float = 0.5
    """How often the driver refreshes the table."""


def check_ray_options(options: RayOptions) -> None:
    """Fail fast, before Ray starts, on options that can never work (also in a dry run)."""
    import_ray()
    if options.gpus_per_run is not None and options.gpus_per_run < 0:
        raise Msd3dError(f"--gpus-per-run {options.gpus_per_run:g} must be >= 0")
    if options.cpus_per_run <= 0:
        raise Msd3dError(f"--cpus-per-run {options.cpus_per_run:g} must be > 0 (e.g. 1)")
    if options.max_retries < 0:
        raise Msd3dError(f"--max-retries {options.max_retries} must be >= 0")
    address = options.address.strip()
    if not address:
        raise Msd3dError("--ray needs an address: local (Ray on this machine), auto or HOST:PORT (a running cluster)")
    if address.endswith((".yaml", ".yml")):
        raise Msd3dError(
            f"--ray took {address!r} as the cluster address; --ray needs one: local, auto or HOST:PORT"
        )


# ------------------------------------------------------------------------------------------------
# the progress board (an actor) and what the tasks do


class ProgressBoard:
    """Per-entry state reported by the tasks, read by the driver: ``{index: {state, node, pid,
    gpus, attempts, step, steps, it_per_s, started, ended}}``. Runs as a Ray actor holding no CPU."""

    def __init__(self) -> None:
        self.rows: dict[int, dict[str, Any]] = {}

    def started(self, index: int, node: str, pid: int, gpus: list[str]) -> None:
        row = self.rows.setdefault(index, {"attempts": 0})
        row.update(state="running", node=node, pid=pid, gpus=gpus, started=time.time(), step=None, it_per_s=None)
        row["attempts"] += 1

    def progress(self, index: int, step: int, steps: int, it_per_s: float | None) -> None:
        row = self.rows.setdefault(index, {"attempts": 0})
        row.update(step=step, steps=steps, it_per_s=it_per_s)
        if step >= steps:
            row["state"] = "finishing"  # scoring, mesh and video

    def ended(self, index: int, status: str) -> None:
        self.rows.setdefault(index, {"attempts": 0}).update(state=status, ended=time.time())

    def snapshot(self) -> dict[int, dict[str, Any]]:
        return self.rows


class _StepReporter:
    """``on_step`` of a task: sends the step and the recent it/s to the board, at most every
    ``interval`` seconds (and at the last step), without waiting for the actor."""

    def __init__(self, board: Any, index: int, steps: int, interval: float = 0.5) -> None:
        self.board, self.index, self.steps, self.interval = board, index, steps, interval
        self._last: tuple[float, int] | None = None

    def __call__(self, step: int) -> None:
        now = time.perf_counter()
        if self._last is None:
            self._last = (now, step)
            self.board.progress.remote(self.index, step, self.steps, None)
            return
        t, s = self._last
        if now - t >= self.interval or step >= self.steps:
            self.board.progress.remote(self.index, step, self.steps, (step - s) / (now - t) if now > t else None)
            self._last = (now, step)


_WORKER_PRIORS = PriorCache()
"""One prior cache per worker process: a CPU worker that runs several entries loads the prior once.
(GPU tasks get a fresh worker each, so each loads its own.)"""


MARKER = ".msd3d-ray-driver"
"""A file the driver writes into the batch root: a worker that cannot read it is not on the same filesystem."""


def _shared_root_error(item: PlannedEntry, marker: Path, token: str) -> str | None:
    try:
        if marker.read_text() == token:
            return None
    except OSError:
        pass
    return (
        f"entry {item.index}: node {socket.gethostname()} cannot see the batch root {str(marker.parent)!r} "
        "the driver wrote; put --out on a filesystem every Ray node mounts at the same path"
    )


def _entry_task(
    item: PlannedEntry, board: Any, threads: int, marker: Path, token: str
) -> tuple[EntryResult, list[str]]:
    """The body of one Ray task: :func:`run_entry` with progress sent to ``board``; returns the
    result and the entry's log lines (the driver prints them)."""
    import ray
    import torch

    torch.set_num_threads(threads)
    lines: list[str] = []
    board.started.remote(item.index, socket.gethostname(), os.getpid(), [str(g) for g in ray.get_gpu_ids()])
    problem = _shared_root_error(item, marker, token)
    if problem is not None:  # training here would write the run where the driver never sees it
        board.ended.remote(item.index, "failed")
        return EntryResult(index=item.index, prompt=item.prompt, status="failed", seed=item.seed,
                           run_dir=str(item.run_dir), error=problem), [f"failed: {problem}"]
    steps = item.config.train.steps if item.config is not None else 0
    result = run_entry(item, _WORKER_PRIORS, show_progress=False, log=lines.append,
                       on_step=_StepReporter(board, item.index, steps))
    board.ended.remote(item.index, result.status)
    return result, lines


# ------------------------------------------------------------------------------------------------
# the driver


@dataclass
class RayBatchResult(BatchResult):
    progress: dict[int, dict[str, Any]] = field(default_factory=dict)
    """The board's last snapshot (node, pid, attempts, started/ended times per entry)."""


def _connect(ray: Any, options: RayOptions) -> bool:
    """Start or join Ray unless this process already did; True when this call started it."""
    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "logging_level": "warning", "configure_logging": True}
    try:
        if options.address.strip() == LOCAL:
            ray.init(num_cpus=options.num_cpus, include_dashboard=False, **quiet)
        else:
            ray.init(address=options.address.strip(), **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Msd3dError(
            f"cannot connect to Ray at {options.address!r} ({first}); start a cluster with `ray start --head` "
            "or use --ray local"
        ) from None
    return True


def _gpus_per_run(ray: Any, options: RayOptions) -> float:
    if options.gpus_per_run is not None:
        return options.gpus_per_run
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def _check_fits(ray: Any, cpus: float, gpus: float) -> None:
    """An entry that no node can hold would wait forever: say so instead."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes):
        return
    have = ", ".join(f"{r.get('CPU', 0):g} CPU/{r.get('GPU', 0):g} GPU" for r in nodes) or "no nodes"
    raise Msd3dError(
        f"no Ray node has {cpus:g} CPUs and {gpus:g} GPUs for one entry (nodes: {have}); "
        "lower --cpus-per-run / --gpus-per-run"
    )


def _absolute(item: PlannedEntry) -> PlannedEntry:
    """Workers do not share the driver's working directory: send them absolute run directories."""
    if item.run_dir is None or item.config is None:
        return item
    run_dir = item.run_dir.absolute()
    return dataclasses.replace(item, run_dir=run_dir, config=dataclasses.replace(item.config, out=str(run_dir)))


def _lost_line(item: PlannedEntry, exc: BaseException, retries: int) -> str:
    text = str(exc).strip().splitlines()
    first = next((line.strip() for line in text if line.strip()), type(exc).__name__)
    return (
        f"entry {item.index}: its Ray worker was lost on each of {retries + 1} attempt(s) ({type(exc).__name__}: "
        f"{first}); rerun the batch to resume it from its checkpoint"
    )


def run_ray_batch(
    plan: Sequence[PlannedEntry],
    root: str | Path,
    options: RayOptions | None = None,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
    fail_fast: bool = False,
    on_result: Callable[[EntryResult], None] | None = None,
    on_progress: Callable[[dict[int, dict[str, Any]]], None] | None = None,
) -> RayBatchResult:
    """Run the planned entries (of the batch root ``root``) as Ray tasks, as many at once as the
    cluster's resources allow.

    Invalid and finished entries are recorded by the driver without a task. ``on_result`` is called
    as each entry ends (in the order they end); ``on_progress`` with the board's snapshot at every
    poll. ``KeyboardInterrupt`` cancels the tasks (a running entry checkpoints and is recorded as
    "interrupted", queued ones as "not run") and sets ``interrupted``. The returned entries are in
    plan order.
    """
    from msd3d.run_dir import RunDir

    options = options or RayOptions()
    check_ray_options(options)
    ray = import_ray()
    t_batch = time.perf_counter()
    results: dict[int, EntryResult] = {}
    interrupted = False
    snapshot: dict[int, dict[str, Any]] = {}

    def record(result: EntryResult) -> None:
        results[result.index] = result
        if on_result is not None:
            on_result(result)

    to_run: list[PlannedEntry] = []
    for item in plan:
        if item.action == "invalid" or item.config is None or item.run_dir is None:
            record(run_entry(item, log=log))
        elif run_dir_action(item.config, RunDir(item.run_dir)) == "skip":
            record(run_entry(item, log=log))
        else:
            to_run.append(item)
    if not to_run:
        return RayBatchResult(entries=[results[p.index] for p in plan], seconds=time.perf_counter() - t_batch)

    started_here = _connect(ray, options)
    live = None
    marker: Path | None = None
    try:
        gpus = _gpus_per_run(ray, options)
        _check_fits(ray, options.cpus_per_run, gpus)
        threads = max(1, int(options.cpus_per_run))
        task_options: dict[str, Any] = {
            "num_cpus": options.cpus_per_run, "num_gpus": gpus, "max_retries": options.max_retries,
            "retry_exceptions": False,  # an entry's own error is a result; only lost workers are retried
        }
        if gpus > 0:
            task_options["max_calls"] = 1  # a fresh worker per GPU entry: memory freed, the right GPU visible
        task = ray.remote(**task_options)(_entry_task)
        board = ray.remote(num_cpus=0)(ProgressBoard).remote()
        ray.get(board.snapshot.remote())  # the board is up before any task reports to it
        token = uuid.uuid4().hex
        marker = Path(root).absolute() / f"{MARKER}-{token[:12]}"  # one per batch: shards may share a root
        marker.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(marker, token)
        refs = {task.remote(_absolute(item), board, threads, marker, token): item for item in to_run}
        pending = list(refs)
        log(
            f"ray: {len(to_run)} entries submitted ({options.cpus_per_run:g} CPU, {gpus:g} GPU each; "
            f"cluster {ray.cluster_resources().get('CPU', 0):g} CPU, {ray.cluster_resources().get('GPU', 0):g} GPU)"
        )
        if show_progress:
            from rich.console import Console
            from rich.live import Live

            live = Live(console=Console(stderr=True), refresh_per_second=4, transient=False)
            live.start()
            emit = live.console.print

            def log_line(message: str) -> None:
                from rich.markup import escape

                emit(escape(message), highlight=False, soft_wrap=True)
        else:
            log_line = log

        def finish(ref: Any) -> None:
            item = refs[ref]
            try:
                result, lines = ray.get(ref)
            except ray.exceptions.TaskCancelledError:
                reason = "batch interrupted" if interrupted else "not run (--fail-fast after a failure)"
                result, lines = not_run(item, reason), []
            except ray.exceptions.RayError as exc:
                result = EntryResult(
                    index=item.index, prompt=item.prompt, status="failed", seed=item.seed,
                    run_dir=str(item.run_dir), error=_lost_line(item, exc, options.max_retries),
                )
                lines = [f"failed: {result.error}"]
            for line in lines:
                log_line(line)
            record(result)

        stopping = False
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=options.poll_seconds)
                for ref in ready:
                    finish(ref)
                    if fail_fast and results[refs[ref].index].status == "failed" and not stopping:
                        stopping = True  # no new entry starts; the running ones finish
                        for other in pending:
                            if refs[other].index not in snapshot:
                                ray.cancel(other)
                snapshot = ray.get(board.snapshot.remote())
                if on_progress is not None:
                    on_progress(snapshot)
                if live is not None:
                    live.update(progress_table(plan, results, snapshot))
        except KeyboardInterrupt:
            interrupted = True
            log_line("interrupted: stopping the running entries (they write a checkpoint); rerun to resume")
            for ref in pending:
                ray.cancel(ref)
            deadline = time.monotonic() + 60
            while pending and time.monotonic() < deadline:
                ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
                for ref in ready:
                    finish(ref)
            for ref in pending:
                record(not_run(refs[ref], "batch interrupted"))
        snapshot = ray.get(board.snapshot.remote())
        if live is not None:
            live.update(progress_table(plan, results, snapshot))
    finally:
        if live is not None:
            live.stop()
        if marker is not None:
            marker.unlink(missing_ok=True)
        if started_here:
            ray.shutdown()
    interrupted = interrupted or any(r.status == "interrupted" for r in results.values())
    return RayBatchResult(
        entries=[results[p.index] for p in plan], seconds=time.perf_counter() - t_batch,
        interrupted=interrupted, progress=snapshot,
    )


# ------------------------------------------------------------------------------------------------
# the live table

STATE_STYLES = {
    "queued": "dim", "running": "yellow", "finishing": "yellow", "ok": "green", "skipped": "cyan",
    "failed": "bold red", "interrupted": "yellow", "not run": "dim",
}


def progress_table(plan: Sequence[PlannedEntry], results: dict[int, EntryResult], board: dict[int, dict[str, Any]]):
    """A rich table: one row per entry with its state, node (and GPUs), step, it/s and tries."""
    from rich.markup import escape
    from rich.table import Table

    done = sum(1 for r in results.values() if r.status in ("ok", "skipped"))
    failed = sum(1 for r in results.values() if r.status == "failed")
    running = sum(1 for i, row in board.items() if i not in results and row.get("state") in ("running", "finishing"))
    table = Table(
        title=f"ray batch: {running} running, {done} done, {failed} failed, {len(plan)} entries",
        title_justify="left", header_style="bold",
    )
    for name in ("#", "prompt", "state", "node", "step", "it/s", "tries"):
        table.add_column(name, no_wrap=name != "prompt", overflow="fold",
                         justify="right" if name in ("step", "it/s", "tries") else "left")
    for item in plan:
        row = board.get(item.index, {})
        result = results.get(item.index)
        state = result.status if result is not None else row.get("state", "queued")
        node = row.get("node", "")
        if row.get("gpus"):
            node += f" gpu {','.join(row['gpus'])}"
        steps = row.get("steps") or (item.config.train.steps if item.config is not None else None)
        step = result.steps if result is not None and result.steps is not None else row.get("step")
        it = row.get("it_per_s")
        table.add_row(
            str(item.index), escape(item.prompt), f"[{STATE_STYLES.get(state, '')}]{state}[/]", escape(node),
            "" if step is None else f"{step}/{steps}", "" if it is None or result is not None else f"{it:.2f}",
            str(row.get("attempts", "")),
        )
    return table
