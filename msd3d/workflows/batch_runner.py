"""Batch runs: many prompts from one YAML file, each trained into its own run directory.

The batch file format (entry keys, ``defaults``, precedence) is documented once, in the commented
``configs/batches/example.yaml`` (docs/usage.md shows a short example); :data:`ENTRY_KEYS` below is what
the parser accepts.

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
import csv
import io
import json
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

from msd3d.atomic_io import atomic_write_text
from msd3d.config import RunConfig, check_text, load_config, resolve_recipe
from msd3d.errors import ConfigError, Msd3dError
from msd3d.naming import run_name

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

FLAG_KEYS: dict[str, str] = {
    "prior": "prior.name",
    "guidance": "guidance.name",
    "seed": "seed",
    "steps": "train.steps",
    "model": "prior.sd.model",
    "device": "device",
}
"""Entry keys that set one config key (the same as ``msd3d generate``'s flags)."""

ENTRY_KEYS = ("prompt", "config", *FLAG_KEYS, "out", "overrides")
DEFAULTS_KEYS = tuple(k for k in ENTRY_KEYS if k not in ("prompt", "out"))
TOP_LEVEL_KEYS = ("defaults", "prompts")
_INT_KEYS = ("seed", "steps")

SUMMARY_COLUMNS = (
    "index", "prompt", "seed", "status", "seconds", "steps", "train_seconds",
    "mode_psnr", "blend_psnr", "run_dir", "mesh", "video", "error",
)
"""Columns of ``batch_summary.csv`` (``mesh`` joins several files with ``;``)."""


class BatchFileError(Msd3dError):
    """The batch file itself is unusable (nothing runs)."""


class EntryError(Msd3dError):
    """One entry is invalid (it is recorded as failed; the others run)."""


# ------------------------------------------------------------------------------------------------
# the file


@dataclass
class BatchEntry:
    """One entry of the file after the schema check (``error`` set when the entry is invalid)."""

    index: int
    prompt: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    """Entry keys other than ``prompt`` and ``overrides`` (config, prior, ..., out)."""
    overrides: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class BatchFile:
    path: Path
    defaults: dict[str, Any]
    """Defaults' keys other than ``overrides``."""
    default_overrides: list[str]
    entries: list[BatchEntry]


def _where(path: Path) -> str:
    return f"batch file {str(path)!r}"


def _yaml_problem(exc: Exception) -> str:
    problem = getattr(exc, "problem", None) or (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else problem


def _flatten(mapping: dict[Any, Any], prefix: str, who: str) -> list[str]:
    """``{"train": {"steps": 5}, "mesh.formats": ["obj"]}`` → ``["train.steps=5", 'mesh.formats=["obj"]']``."""
    items: list[str] = []
    for key, value in mapping.items():
        if not isinstance(key, str) or not key:
            raise EntryError(f"{who}: override keys must be config keys such as train.steps, got {key!r}")
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            items += _flatten(value, dotted + ".", who)
        else:
            items.append(f"{dotted}={json.dumps(value)}")  # JSON is YAML: strings stay strings, lists stay lists
    return items


def _overrides(value: Any, who: str) -> list[str]:
    """An ``overrides`` value (a list of ``key=value`` strings, or a mapping) as dot-list strings."""
    if value is None:
        return []
    if isinstance(value, dict):
        items = _flatten(value, "", who)
    else:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise EntryError(
                f"{who}: 'overrides' must be a list of key=value strings or a mapping, got {type(value).__name__}"
            )
        items = []
        for item in value:
            if not isinstance(item, str) or "=" not in item or item.startswith("="):
                raise EntryError(f"{who}: override {item!r} is not key=value (e.g. train.steps=2000)")
            items.append(item)
    for item in items:
        key = item.split("=", 1)[0].strip()
        if key in ("prompt", "out"):  # the batch sets both per entry; an override would be ignored
            raise EntryError(f"{who}: set {key!r} as an entry key, not as an override")
    return items


def _check_settings(raw: dict[Any, Any], allowed: Sequence[str], who: str) -> tuple[dict[str, Any], list[str]]:
    """Check keys and value types of an entry or of ``defaults``; returns (settings, overrides)."""
    for key in raw:
        if key not in allowed:
            raise EntryError(f"{who}: unknown key {key!r}; allowed keys: {', '.join(allowed)}")
    settings: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "overrides" or value is None:
            continue
        if key in _INT_KEYS:
            if isinstance(value, bool) or not isinstance(value, int):
                raise EntryError(f"{who}: {key!r} must be an integer, got {value!r}")
        elif not isinstance(value, str) or not value.strip():
            raise EntryError(f"{who}: {key!r} must be a non-empty string, got {value!r}")
        settings[key] = value
    return settings, _overrides(raw.get("overrides"), who)


def _parse_entry(index: int, raw: Any) -> BatchEntry:
    who = f"entry {index}"
    entry = BatchEntry(index=index)
    try:
        if isinstance(raw, str):
            raw = {"prompt": raw}
        if not isinstance(raw, dict):
            raise EntryError(
                f"{who}: must be a prompt string or a mapping with a 'prompt' key, got {type(raw).__name__}"
            )
        prompt = raw.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise EntryError(f"{who}: missing 'prompt' (a non-empty string)")
        entry.prompt = prompt
        entry.settings, entry.overrides = _check_settings(raw, ENTRY_KEYS, who)
        entry.settings.pop("prompt", None)
    except EntryError as exc:
        entry.error = str(exc)
    return entry


def _resolve_config_path(value: str, base: Path) -> str:
    """A recipe name stays a name; a relative YAML path is taken relative to the batch file's folder."""
    path = Path(value).expanduser()
    if path.suffix in (".yaml", ".yml") or "/" in value or "\\" in value:
        return str(path if path.is_absolute() else base / path)
    return value


def load_batch_file(path: str | Path) -> BatchFile:
    """Read and schema-check a batch file. File-level problems raise :class:`BatchFileError`;
    per-entry problems are kept in ``BatchEntry.error``."""
    path = Path(path)
    where = _where(path)
    if not path.is_file():
        raise BatchFileError(f"{where} does not exist")
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise BatchFileError(f"{where} is not valid YAML: {_yaml_problem(exc)}") from None
    except UnicodeDecodeError:
        raise BatchFileError(f"{where} is not a text file") from None
    if isinstance(data, list):  # a bare list of prompts
        data = {"prompts": data}
    if not isinstance(data, dict):
        raise BatchFileError(f"{where} must be a mapping with a 'prompts' list (and optional 'defaults')")
    unknown = [k for k in data if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise BatchFileError(f"{where}: unknown top-level key {unknown[0]!r}; expected {' and '.join(TOP_LEVEL_KEYS)}")
    prompts = data.get("prompts")
    if not isinstance(prompts, list) or not prompts:
        raise BatchFileError(f"{where} has no prompts: add a non-empty 'prompts:' list")
    raw_defaults = data.get("defaults") or {}
    if not isinstance(raw_defaults, dict):
        raise BatchFileError(f"{where}: 'defaults' must be a mapping of entry keys")
    try:
        defaults, default_overrides = _check_settings(raw_defaults, DEFAULTS_KEYS, "defaults")
    except EntryError as exc:
        raise BatchFileError(f"{where}: {exc}") from None
    base = path.resolve().parent
    if "config" in defaults:
        defaults["config"] = _resolve_config_path(defaults["config"], base)
        try:
            resolve_recipe(defaults["config"])
        except ConfigError as exc:
            raise BatchFileError(f"{where}: defaults: {exc}") from None
    entries = [_parse_entry(i, raw) for i, raw in enumerate(prompts)]
    for entry in entries:
        if "config" in entry.settings:
            entry.settings["config"] = _resolve_config_path(entry.settings["config"], base)
    return BatchFile(path=path, defaults=defaults, default_overrides=default_overrides, entries=entries)


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"1/4"`` → ``(1, 4)``: run the entries with ``index % 4 == 1`` (0-based)."""
    if text is None:
        return None
    parts = text.strip().split("/")
    try:
        if len(parts) != 2:
            raise ValueError
        index, count = int(parts[0]), int(parts[1])
    except ValueError:
        raise Msd3dError(f"--shard {text!r} is not I/N (e.g. --shard 0/4 runs entries 0, 4, 8, ...)") from None
    if count < 1 or not 0 <= index < count:
        raise Msd3dError(f"--shard {text!r}: need N >= 1 and 0 <= I < N (I is 0-based)")
    return index, count


def default_batch_root(batch_file: str | Path) -> Path:
    """``outputs/<batch-file-stem>``."""
    return Path("outputs") / Path(batch_file).stem


def summary_stem(shard: tuple[int, int] | None) -> str:
    """``batch_summary``, or ``batch_summary.shard-<i>-of-<n>`` so parallel shards never overwrite each other."""
    return "batch_summary" if shard is None else f"batch_summary.shard-{shard[0]}-of-{shard[1]}"


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
    """Raise :class:`Msd3dError` when the prior cannot take ``config.prompt`` (the oracle knows only its
    catalogue), so a bad entry fails in the plan (and ``--dry-run``), not after earlier entries trained."""
    if config.prior.name == "oracle":
        from msd3d.catalogue.families import match_family

        match_family(config.prompt)


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


@dataclass
class EntryResult:
    """One row of the batch summary."""

    index: int
    prompt: str
    status: str
    """"ok", "failed", "skipped"; after an interrupt also "interrupted" and "not run"."""
    seed: int | None = None
    seconds: float = 0.0
    """Wall time spent on this entry by this invocation (training + scoring + export)."""
    steps: int | None = None
    train_seconds: float | None = None
    """Training time of the run over all its sessions (summary.json)."""
    scores: dict[str, Any] | None = None
    run_dir: str | None = None
    mesh: list[str] = field(default_factory=list)
    video: str | None = None
    error: str | None = None

    def row(self) -> dict[str, Any]:
        scores = self.scores or {}
        return {
            "index": self.index,
            "prompt": self.prompt,
            "seed": self.seed,
            "status": self.status,
            "seconds": round(self.seconds, 3),
            "steps": self.steps,
            "train_seconds": None if self.train_seconds is None else round(self.train_seconds, 3),
            "mode_psnr": scores.get("mode_psnr"),
            "blend_psnr": scores.get("blend_psnr"),
            "run_dir": self.run_dir,
            "mesh": list(self.mesh),
            "video": self.video,
            "error": self.error,
            "scores": self.scores,
        }


@dataclass
class BatchResult:
    entries: list[EntryResult]
    seconds: float
    interrupted: bool = False

    @property
    def failed(self) -> int:
        return sum(e.status == "failed" for e in self.entries)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.entries:
            out[e.status] = out.get(e.status, 0) + 1
        return out


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


# ------------------------------------------------------------------------------------------------
# the summary files


def write_batch_summary(
    result: BatchResult | Iterable[EntryResult],
    root: str | Path,
    stem: str = "batch_summary",
    meta: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``<root>/<stem>.json`` (meta + counts + one object per entry) and ``<root>/<stem>.csv``
    (``SUMMARY_COLUMNS``), each atomically; returns both paths."""
    from msd3d.run_dir import write_json

    root = Path(root)
    entries = result.entries if isinstance(result, BatchResult) else list(result)
    rows = [e.row() for e in entries]
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.status] = counts.get(e.status, 0) + 1
    document: dict[str, Any] = {
        **(meta or {}),
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "counts": counts,
        "failed": counts.get("failed", 0),
        "entries": rows,
    }
    if isinstance(result, BatchResult):
        document["seconds"] = round(result.seconds, 3)
        document["interrupted"] = result.interrupted
    json_path = root / f"{stem}.json"
    csv_path = root / f"{stem}.csv"
    write_json(json_path, document)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {**row, "mesh": ";".join(row["mesh"]), **{k: "" for k in SUMMARY_COLUMNS if row.get(k) is None}}
        )
    atomic_write_text(csv_path, buffer.getvalue())
    return json_path, csv_path
