"""Batch runs: many prompts from one YAML file, each trained into its own run directory.

The batch file's schema is :mod:`msd3d.workflows.batch_file`, the summary files
:mod:`msd3d.workflows.batch_summary`; this module plans the entries (run folders, skip / resume /
train) and runs them. Its public names include theirs, so callers import from here.

What fails where:

* The file itself (not YAML, no ``prompts`` list, unknown top-level or ``defaults`` key, a
  ``defaults.config`` that does not resolve) raises :class:`BatchFileError` before any work.
* A bad entry (unknown key, wrong type, a config key or value that ``load_config`` rejects, a run
  directory shared with an earlier entry) is recorded as failed with a one-line error naming the
  entry, and the others still run. So is an entry whose training or export raises.

Run folders stay inside the batch root: an ``out`` that is absolute, starts with ``~`` or climbs
with ``..`` is an invalid entry unless ``allow_outside_root`` (``--allow-outside-root``) is set, and
an existing folder that holds files but is not an msd3d run is never written into.

Resuming: an entry whose ``summary.json`` reports ``steps >= train.steps`` is skipped; one with a
checkpoint but no finished summary continues from it (``generate(..., resume=True)``); otherwise
it trains from scratch. Sharding (``shard=(i, n)``) runs the entries with ``index % n == i``.

Executors: :func:`run_batch` runs the entries one after another in this process;
:func:`msd3d.workflows.batch_ray.run_ray_batch` runs them as Ray tasks. Both call :func:`run_entry`.
"""

from __future__ import annotations

import contextlib
import json
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from msd3d.config import RunConfig, check_text, load_config, resolve_recipe
from msd3d.errors import Msd3dError
from msd3d.naming import run_name
from msd3d.workflows.batch_file import (  # noqa: F401 - re-exported
    DEFAULTS_KEYS,
    ENTRY_KEYS,
    FLAG_KEYS,
    BatchEntry,
    BatchFile,
    BatchFileError,
    EntryError,
    default_batch_root,
    load_batch_file,
    parse_shard,
)
from msd3d.workflows.batch_summary import (  # noqa: F401 - re-exported
    SUMMARY_COLUMNS,
    BatchResult,
    EntryResult,
    summary_stem,
    write_batch_summary,
)

if TYPE_CHECKING:
    from msd3d.run_dir import RunDir

__all__ = [
    "ENTRY_KEYS",
    "DEFAULTS_KEYS",
    "BatchFileError",
    "EntryError",
    "BatchEntry",
    "BatchFile",
    "PlannedEntry",
    "EntryResult",
    "BatchResult",
    "load_batch_file",
    "parse_shard",
    "plan_batch",
    "run_batch",
    "run_entry",
    "run_dir_action",
    "not_run",
    "PriorCache",
    "write_batch_summary",
    "summary_stem",
    "finished_summary",
    "SUMMARY_COLUMNS",
    "default_batch_root",
]


# ------------------------------------------------------------------------------------------------
# the plan


@dataclass
class PlannedEntry:
    """An entry resolved to a full config and a run directory, and what running it will do."""

    index: int
    prompt: str
    action: str
    """"train", "resume" (a checkpoint is there), "skip" (finished) or "invalid"."""
    config: RunConfig | None = None
    run_dir: Path | None = None
    error: str | None = None

    @property
    def seed(self) -> int | None:
        return self.config.seed if self.config is not None else None


def _run_dir_for(out: str, root: Path, allow_outside_root: bool, who: str) -> Path:
    """The run folder of an entry's ``out``: relative to the root and inside it (unless allowed)."""
    path = Path(out)
    outside = path.is_absolute() or out.startswith("~") or ".." in path.parts
    if outside and not allow_outside_root:
        raise EntryError(
            f"{who}: out {out!r} leaves the batch root {str(root)!r}; use a relative path inside it, "
            "or pass --allow-outside-root"
        )
    path = path.expanduser()
    return path if path.is_absolute() else root / path


def _resolve_entry(
    batch: BatchFile, entry: BatchEntry, root: Path, device: str | None, allow_outside_root: bool = False
) -> tuple[RunConfig, Path]:
    settings = {**batch.defaults, **entry.settings}
    recipe = resolve_recipe(settings.get("config"), settings.get("prior"), settings.get("guidance"))
    dotlist: list[str] = []
    for source, overrides in ((batch.defaults, batch.default_overrides), (entry.settings, entry.overrides)):
        dotlist += [f"{FLAG_KEYS[k]}={json.dumps(v)}" for k, v in source.items() if k in FLAG_KEYS]
        dotlist += overrides
    if device is not None:
        dotlist.append(f"device={json.dumps(device)}")
    config = load_config(recipe, dotlist)
    config.prompt = entry.prompt  # set directly: a prompt is never parsed as YAML or interpolated
    try:
        check_text(entry.prompt, "prompt")
    except ValueError as exc:
        raise EntryError(f"entry {entry.index}: {exc}") from None
    out = settings.get("out")
    if out is not None:
        run_dir = _run_dir_for(out, root, allow_outside_root, f"entry {entry.index}")
    else:
        run_dir = root / run_name(entry.prompt, config.guidance.name, config.prior.name, config.seed)
    config.out = str(run_dir)
    return config, run_dir


def check_prompt(config: RunConfig) -> None:
    """Raise :class:`Msd3dError` when the prior cannot take ``config.prompt`` (the oracle and the learned
    prior know only the catalogue), so a bad entry fails in the plan (and ``--dry-run``), not after earlier
    entries trained."""
    if config.prior.name in ("oracle", "learned"):
        from msd3d.catalogue.families import match_family

        match_family(config.prompt, prior=config.prior.name)


def finished_summary(run_dir: Path, steps: int) -> dict[str, Any] | None:
    """The run's ``summary.json`` when it reports at least ``steps`` steps, else None."""
    path = run_dir / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(summary, dict) and isinstance(summary.get("steps"), int) and summary["steps"] >= steps:
        return summary
    return None


def run_dir_action(config: RunConfig, run: "RunDir") -> str:
    """What the run directory calls for now: "skip" (finished), "resume" (a checkpoint) or "train"."""
    if finished_summary(run.root, config.train.steps) is not None:
        return "skip"
    return "resume" if run.checkpoint.is_file() else "train"


def plan_batch(
    batch: BatchFile,
    root: str | Path,
    shard: tuple[int, int] | None = None,
    device: str | None = None,
    allow_outside_root: bool = False,
) -> list[PlannedEntry]:
    """Resolve every entry's RunConfig (``load_config``) and run directory, and decide what to do.

    All entries are resolved, so errors and run-directory clashes are the same in every shard;
    the returned list holds only the shard's entries.
    """
    from msd3d.run_dir import RunDir

    root = Path(root)
    plan: list[PlannedEntry] = []
    owners: dict[Path, int] = {}
    for entry in batch.entries:
        item = PlannedEntry(index=entry.index, prompt=entry.prompt, action="invalid", error=entry.error)
        if entry.error is None:
            try:
                item.config, item.run_dir = _resolve_entry(batch, entry, root, device, allow_outside_root)
                RunDir(item.run_dir).check_writable()
                check_prompt(item.config)
            except EntryError as exc:
                item.error = str(exc)
            except Msd3dError as exc:
                item.error = f"entry {entry.index}: {exc}"
        if item.run_dir is not None:
            key = item.run_dir.resolve()
            if key in owners:
                item.error = (
                    f"entry {entry.index}: run directory {str(item.run_dir)!r} is also used by entry {owners[key]}; "
                    "give it another seed or an 'out'"
                )
            else:
                owners[key] = entry.index
        if item.error is None:
            assert item.config is not None and item.run_dir is not None
            item.action = run_dir_action(item.config, RunDir(item.run_dir))
        plan.append(item)
    if shard is not None:
        plan = [p for p in plan if p.index % shard[1] == shard[0]]
    return plan


# ------------------------------------------------------------------------------------------------
# running


def _from_summary(result: EntryResult, summary: dict[str, Any]) -> EntryResult:
    result.steps = summary.get("steps")
    result.train_seconds = summary.get("train_seconds")
    result.scores = summary.get("scores")
    result.mesh = list((summary.get("mesh") or {}).get("files", []))
    result.video = (summary.get("video") or {}).get("file")
    return result


def _error_line(exc: BaseException) -> str:
    if isinstance(exc, Msd3dError):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class PriorCache:
    """Keeps the last prior built, so consecutive entries with the same prior settings and device
    share it (Stable Diffusion loads once per batch, not once per entry). A prior that failed to
    build fails the later entries that need it with the same line, without retrying."""

    def __init__(self) -> None:
        self._key: str | None = None
        self._prior: Any = None
        self._error: Msd3dError | None = None

    def get(self, config: RunConfig):
        from msd3d.device import resolve_device
        from msd3d.priors.choice import build_prior

        device = resolve_device(config.device)
        key = f"{config.prior!r}@{device}"
        if key != self._key:
            self._key, self._prior, self._error = key, None, None  # drop the old one before loading the next
            try:
                self._prior = build_prior(config.prior, device)
            except Msd3dError as exc:
                self._error = exc
        if self._error is not None:
            raise self._error
        self._prior.counter.reset()
        return self._prior


def run_entry(
    item: PlannedEntry,
    priors: PriorCache | None = None,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
    position: str = "",
    on_step: Callable[[int], None] | None = None,
) -> EntryResult:
    """Run one planned entry: train (or resume, or skip), then score, export the mesh and render.

    The work every executor shares (local loop, Ray task). Whether to skip, resume or train is
    decided from the run directory now, not from the plan, so a retry after a lost worker resumes
    from the checkpoint the lost attempt wrote. The entry's own failure never raises: it is
    recorded ("failed" with a one-line error; "interrupted" after SIGINT/SIGTERM or
    KeyboardInterrupt, with a checkpoint to resume from). ``position`` (e.g. ``"[2/5]"``) prefixes
    the log lines; ``on_step(step)`` is called after every training step.
    """
    from msd3d.run_dir import RunDir
    from msd3d.train import TrainingInterrupted
    from msd3d.workflows.text_to_3d import generate

    tag = f"{position} entry {item.index}".strip()
    result = EntryResult(
        index=item.index, prompt=item.prompt, status="failed", seed=item.seed,
        run_dir=str(item.run_dir) if item.run_dir is not None else None,
    )
    if item.action == "invalid" or item.config is None or item.run_dir is None:
        result.error = item.error
        log(f"{position} failed: {item.error}".strip())
        return result
    action = run_dir_action(item.config, RunDir(item.run_dir))
    if action == "skip":
        _from_summary(result, finished_summary(item.run_dir, item.config.train.steps) or {})
        result.status = "skipped"
        log(f"{tag} {item.prompt!r}: skipped, already finished in {item.run_dir}")
        return result
    verb = "resuming" if action == "resume" else "training"
    log(f"{tag} {item.prompt!r} (seed {item.seed}): {verb} {item.config.train.steps} steps -> {item.run_dir}")
    t0 = time.perf_counter()
    try:
        prior = (priors or PriorCache()).get(item.config)
        summary = generate(
            item.config, item.run_dir, resume=action == "resume", prior=prior,
            show_progress=show_progress, log=log, on_step=on_step,
        )
        _from_summary(result, summary)
        result.status = "ok"
    except (TrainingInterrupted, KeyboardInterrupt) as exc:
        result.status = "interrupted"
        result.error = _error_line(exc) if isinstance(exc, TrainingInterrupted) else "interrupted"
    except Exception as exc:  # noqa: BLE001 - any failure of one entry is recorded, the batch goes on
        result.error = f"entry {item.index}: {_error_line(exc)}"
        if not isinstance(exc, Msd3dError):  # a bug, not a user error: keep the traceback visible
            log("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip())
    result.seconds = time.perf_counter() - t0
    if result.status == "ok":
        log(f"{tag}: ok in {result.seconds:.1f} s{_score_text(result.scores)}")
    elif result.status == "failed":
        log(f"{position} failed after {result.seconds:.1f} s: {result.error}".strip())
    else:
        log(f"{tag}: interrupted after {result.seconds:.1f} s; rerun the batch to resume it")
    return result


def not_run(item: PlannedEntry, reason: str) -> EntryResult:
    """The row of an entry the batch did not get to (after an interrupt or ``--fail-fast``)."""
    return EntryResult(
        index=item.index, prompt=item.prompt, status="not run", seed=item.seed,
        run_dir=str(item.run_dir) if item.run_dir is not None else None, error=reason,
    )


def run_batch(
    plan: Sequence[PlannedEntry],
    show_progress: bool = True,
    log: Callable[[str], None] = print,
    fail_fast: bool = False,
    on_result: Callable[[EntryResult], None] | None = None,
    threads: int = 0,
) -> BatchResult:
    """Run the planned entries in order (:func:`run_entry` each); a failing entry is recorded and
    the batch goes on. ``threads`` > 0 caps torch's intra-op threads while the entries run (restored after).

    ``SIGINT``/``SIGTERM`` during training (``TrainingInterrupted``) or ``KeyboardInterrupt``
    stops the batch: the entry is recorded as "interrupted" (its checkpoint lets the next
    invocation resume it), the rest as "not run", and ``BatchResult.interrupted`` is set.
    ``on_result`` is called after each entry (e.g. to rewrite the summary files as it goes).
    """
    with torch_threads(threads):
        return _run_in_order(plan, show_progress, log, fail_fast, on_result)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Torch's intra-op thread count set to ``threads`` inside the block (0: unchanged)."""
    if threads <= 0:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_in_order(
    plan: Sequence[PlannedEntry],
    show_progress: bool,
    log: Callable[[str], None],
    fail_fast: bool,
    on_result: Callable[[EntryResult], None] | None,
) -> BatchResult:
    results: list[EntryResult] = []
    priors = PriorCache()
    t_batch = time.perf_counter()
    total = len(plan)
    interrupted = False
    stop = False
    for k, item in enumerate(plan, start=1):
        if interrupted or stop:
            result = not_run(item, "batch interrupted" if interrupted else "not run (--fail-fast after a failure)")
        else:
            result = run_entry(item, priors, show_progress=show_progress, log=log, position=f"[{k}/{total}]")
            interrupted = result.status == "interrupted"
        if result.status == "failed" and fail_fast:
            stop = True
        results.append(result)
        if on_result is not None:
            on_result(result)
    return BatchResult(entries=results, seconds=time.perf_counter() - t_batch, interrupted=interrupted)


def _score_text(scores: dict[str, Any] | None) -> str:
    if not scores or scores.get("mode_psnr") is None:
        return ""
    text = f"; mode PSNR {scores['mode_psnr']:.2f} dB"
    if scores.get("blend_psnr") is not None:
        text += f", blend PSNR {scores['blend_psnr']:.2f} dB"
    return text

