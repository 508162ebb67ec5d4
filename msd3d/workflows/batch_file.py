"""The batch file: its schema, parsed into :class:`BatchFile` / :class:`BatchEntry` (nothing runs here).

The format (entry keys, ``defaults``, precedence) is documented once, in the commented
``configs/batches/example.yaml`` (docs/usage.md shows a short example); :data:`ENTRY_KEYS` is what the
parser accepts. The file itself (not YAML, no ``prompts`` list, unknown top-level or ``defaults`` key, a
``defaults.config`` that does not resolve) raises :class:`BatchFileError`; a bad entry gets ``error``
set and is recorded as failed by the runner while the others run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from msd3d.config import resolve_recipe
from msd3d.errors import ConfigError, Msd3dError

if TYPE_CHECKING:
    pass


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

