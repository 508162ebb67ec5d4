"""The run configuration: one dataclass per module, composed here, loaded from YAML + overrides.

Precedence (later wins): code defaults < recipe YAML (``--config``) < CLI flags < ``key=value``
overrides. Unknown keys and values of the wrong type fail before any work starts, naming the key;
each module's ``validate()`` then checks ranges, and every float anywhere must be finite.

User strings are literals: OmegaConf's ``${...}`` interpolation is escaped in every string that comes
from a recipe, a flag or an override (a prompt ``${oc.env:HOME}`` stays exactly that, and no
environment value can leak into ``config.yaml``).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import re
import unicodedata
from dataclasses import dataclass, fields, is_dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Sequence, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from msd3d.errors import ConfigError
from msd3d.export.mesh import MeshExportConfig
from msd3d.export.video import VideoConfig
from msd3d.guidance import GuidanceConfig
from msd3d.priors.choice import PriorConfig
from msd3d.render.cameras import CameraConfig
from msd3d.render.regularisers import RegulariserConfig
from msd3d.render.shading import ShadingConfig
from msd3d.render.volume import RenderConfig
from msd3d.scene.background import BackgroundConfig
from msd3d.scene.field_config import FieldConfig

T = TypeVar("T")


@dataclass
class TrainConfig:
    """The optimisation loop: steps, optimiser, logging, checkpoints, the non-finite guard."""

    steps: int = 10000
    """Optimisation steps; schedules (lambda, t, regularisers) run over this many steps."""
    lr: float = 0.01
    """Adam learning rate of the "encoding" parameter group (the field's feature grids)."""
    lr_network: float = 0.001
    """Adam learning rate of every other group: the field's MLPs, an MLP background, guidance parameters."""
    lr_decay: float = 1.0
    """Learning-rate multiplier reached at the last step (log-linear from 1; 1 = constant)."""
    betas: tuple[float, float] = (0.9, 0.99)
    """Adam's moment decay rates (threestudio); each in [0, 1)."""
    adam_eps: float = 1e-15
    """Adam's epsilon (threestudio; small because grid features get tiny gradients); positive."""
    grad_clip: float = 0.0
    """Clip the global gradient norm to this (0 = off)."""
    log_every: int = 10
    """Write a line to metrics.jsonl every N steps."""
    val_every: int = 500
    """Save validation renders (PNG) every N steps (0 = only at the end)."""
    val_views: int = 4
    """Turntable views in each validation PNG; at most 64."""
    checkpoint_every: int = 500
    """Save a checkpoint every N steps (and always on interrupt and at the end)."""
    max_nonfinite_streak: int = 20
    """Stop after this many consecutive steps with a non-finite loss or gradient."""
    eval_views: int = 24
    """Turntable views used to score the run at the end (priors that can score, e.g. the oracle); at most 360."""
    prefetch_steps: int = 16
    """For priors whose conditioning is expensive (the oracle renders its target images), condition this
    many steps at once, in one batch (0 or 1 = one step at a time). Each step's cameras, shading and
    lights come from the seed and the step alone; the value changes results only at float rounding."""

    def validate(self) -> None:
        if self.prefetch_steps < 0:
            raise ValueError(f"train.prefetch_steps must be 0 (off) or positive, got {self.prefetch_steps}")
        if self.steps < 1:
            raise ValueError("train.steps must be at least 1")
        if self.lr <= 0 or self.lr_network <= 0:
            raise ValueError("train.lr and train.lr_network must be positive")
        if not 0 < self.lr_decay <= 1:
            raise ValueError("train.lr_decay must be in (0, 1] (1 = constant learning rate)")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"train.betas must be two numbers in [0, 1), got {list(self.betas)}")
        if not self.adam_eps > 0:
            raise ValueError(f"train.adam_eps must be positive, got {self.adam_eps}")
        for name in ("log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be at least 1")
        if self.val_every < 0:
            raise ValueError("train.val_every must be 0 (off) or positive")
        if self.max_nonfinite_streak < 1:
            raise ValueError("train.max_nonfinite_streak must be at least 1")
        if self.eval_views < 1 or self.val_views < 1:
            raise ValueError("train.eval_views and train.val_views must be at least 1")
        if self.val_views > 64:
            raise ValueError(f"train.val_views must be at most 64, got {self.val_views}")
        if self.eval_views > 360:
            raise ValueError(f"train.eval_views must be at most 360, got {self.eval_views}")


@dataclass
class ExportConfig:
    """What ``generate`` writes when training ends (``mesh`` / ``video`` sections say how)."""

    mesh: bool = True
    """Write the mesh (formats in ``mesh.formats``)."""
    video: bool = True
    """Write the turntable video."""


@dataclass
class RunConfig:
    """Everything one text-to-3D run needs."""

    prompt: str = ""
    """What to make (the positional PROMPT of ``generate``)."""
    negative_prompt: str = ""
    """Text for the unconditional branch of classifier-free guidance (Stable Diffusion)."""
    seed: int = 0
    """Seeds the field's initialisation and every random choice of the run; 0 to 4294967295 (2^32 - 1)."""
    device: str = "auto"
    """"auto" (CUDA when present), "cpu", "cuda" or "cuda:N"."""
    out: str = ""
    """Run directory; empty means ``outputs/<prompt-slug>-<guidance>-<prior>-<seed>``."""
    view_dependent_prompts: bool = True
    """Append ", front view" / ", side view" / ... to the prompt per camera (DreamFusion)."""
    prior: PriorConfig = dataclasses.field(default_factory=PriorConfig)
    guidance: GuidanceConfig = dataclasses.field(default_factory=GuidanceConfig)
    field: FieldConfig = dataclasses.field(default_factory=FieldConfig)
    background: BackgroundConfig = dataclasses.field(default_factory=BackgroundConfig)
    shading: ShadingConfig = dataclasses.field(default_factory=ShadingConfig)
    render: RenderConfig = dataclasses.field(default_factory=RenderConfig)
    camera: CameraConfig = dataclasses.field(default_factory=CameraConfig)
    regularisers: RegulariserConfig = dataclasses.field(default_factory=RegulariserConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)
    mesh: MeshExportConfig = dataclasses.field(default_factory=MeshExportConfig)
    video: VideoConfig = dataclasses.field(default_factory=VideoConfig)


# ------------------------------------------------------------------------------------------------
# recipes


def recipe_dir() -> Path:
    """The folder holding the shipped recipes (``msd3d.configs`` installed, ``configs/`` in a checkout)."""
    try:
        return Path(str(resources.files("msd3d.configs")))
    except ModuleNotFoundError:  # running from a source tree that shadows the installed package
        return Path(__file__).resolve().parent.parent / "configs"


def list_recipes() -> list[str]:
    return sorted(p.stem for p in recipe_dir().glob("*.yaml"))


def resolve_recipe(config: str | Path | None, prior: str | None = None, guidance: str | None = None) -> Path | None:
    """The YAML file for ``--config``: a path, or a shipped recipe name such as ``msd-oracle``.

    With no ``--config``, ``--prior``/``--guidance`` (default sd / msd) pick ``<guidance>-<prior>.yaml``
    when it is shipped, else ``msd-<prior>.yaml`` (the guidance is then overridden by name).
    """
    if config:
        path = Path(config)
        if path.suffix in (".yaml", ".yml") or path.exists():
            if not path.is_file():
                raise ConfigError(
                    f"config file {str(path)!r} does not exist; "
                    f"pass a YAML path or one of: {', '.join(list_recipes())}"
                )
            return path
        named = recipe_dir() / f"{config}.yaml"
        if not named.is_file():
            raise ConfigError(
                f"unknown recipe {str(config)!r}; pass a YAML path or one of: {', '.join(list_recipes())}"
            )
        return named
    prior = prior or "sd"
    for name in (f"{guidance or 'msd'}-{prior}", f"msd-{prior}"):
        if (recipe_dir() / f"{name}.yaml").is_file():
            return recipe_dir() / f"{name}.yaml"
    return None


MAX_SEED = 2**32 - 1
"""Largest seed: every generator msd3d may seed (torch, numpy) accepts 0 ... 2^32 - 1."""


# ------------------------------------------------------------------------------------------------
# user strings


_INTERPOLATION = re.compile(r"(\\*)\$\{")


def literal(text: str) -> str:
    """``text`` escaped for OmegaConf so that it resolves to itself: ``${`` is never interpolation.

    OmegaConf reads ``\\${`` as a literal ``${`` and ``\\\\`` as one backslash only right before
    ``${``; other backslashes are literal.
    """
    return _INTERPOLATION.sub(lambda m: m.group(1) * 2 + "\\${", text)


def _literal_tree(value: Any) -> Any:
    """A plain container with :func:`literal` applied to every string in it."""
    if isinstance(value, str):
        return literal(value)
    if isinstance(value, dict):
        return {k: _literal_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_literal_tree(v) for v in value]
    return value


def _as_literals(cfg: DictConfig) -> DictConfig:
    """``cfg`` (read from YAML or a dot-list, not yet merged) with every string made literal."""
    return OmegaConf.create(_literal_tree(OmegaConf.to_container(cfg, resolve=False)))


def check_text(text: str, key: str) -> None:
    """Reject control characters (ESC, BEL, newlines, ...) in a user string; named by code point, never raw."""
    for position, char in enumerate(text):
        if unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp"):
            raise ValueError(
                f"{key} contains the control character U+{ord(char):04X} at position {position}; "
                "remove it (prompts must be printable text)"
            )


def printable(text: str) -> str:
    """``text`` with control characters shown as escapes (``\\x1b``), safe to print in a terminal."""
    return "".join(
        char if unicodedata.category(char) not in ("Cc", "Cs", "Zl", "Zp") else repr(char)[1:-1] for char in text
    )


# ------------------------------------------------------------------------------------------------
# loading


def _one_line(exc: OmegaConfBaseException, base: DictConfig | None = None) -> str:
    key = getattr(exc, "full_key", None)
    msg = str(exc).splitlines()[0].strip()
    if "not in" in msg or "Key '" in msg and "not" in msg:
        return (
            f"unknown config key {key!r}{_did_you_mean(base, key)}: "
            "check the spelling against docs/config.md"
        )
    return f"bad value for config key {key!r}: {msg}"


def _did_you_mean(base: DictConfig | None, key: str | None) -> str:
    """`` (did you mean 'train.steps'?)`` for a misspelt dotted ``key``, from its section's keys."""
    if base is None or not key:
        return ""
    parent, _, name = str(key).rpartition(".")
    section = OmegaConf.select(base, parent) if parent else base
    if not isinstance(section, DictConfig):
        return ""
    prefix = parent + "." if parent else ""
    close = difflib.get_close_matches(name, [str(k) for k in section.keys()], n=1, cutoff=0.6)
    if close:
        return f" (did you mean {prefix + close[0]!r}?)"
    # a key that moved one level down, e.g. ``field.bound`` -> ``field.nerf.bound`` (field types)
    for sub, node in section.items():
        if isinstance(node, DictConfig) and name in node:
            return f" (did you mean {prefix + str(sub) + '.' + name!r}?)"
    return ""


def _scalar_over_section(base: DictConfig, other: Any, prefix: str = "") -> str | None:
    """The dotted key where ``other`` sets a plain value on a section of ``base`` (``train=5``), if any."""
    if not isinstance(other, (dict, DictConfig)):
        return None
    for name, value in other.items():
        node = base.get(name) if name in base else None
        if not isinstance(node, DictConfig):
            continue
        path = f"{prefix}{name}"
        if not isinstance(value, (dict, DictConfig)):
            return path
        found = _scalar_over_section(node, value, path + ".")
        if found:
            return found
    return None


def _merge(base: DictConfig, other: DictConfig | dict, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        section = _scalar_over_section(base, other)
        if section is not None:
            keys = ", ".join(str(k) for k in list(OmegaConf.select(base, section).keys())[:4])
            raise ConfigError(
                f"config key {section!r} is a section, not a value: set one of its keys instead, "
                f"e.g. {section}.<key>=... (its keys: {keys}, ...) (in {source})"
            ) from None
        raise ConfigError(f"{_one_line(exc, base)} (in {source})") from None


def load_yaml(path: Path) -> DictConfig:
    try:
        data = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError and friends
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"cannot parse config file {str(path)!r}: {first}") from None
    if not isinstance(data, DictConfig):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys to values")
    return _upgrade(_as_literals(data))


def _upgrade(data: DictConfig) -> DictConfig:
    """Read configs written before field types existed: their NeRF settings sit directly under
    ``field:`` (``field.encoding``); they now live in ``field.nerf``."""
    from msd3d.registry import FIELDS

    field = data.get("field")
    if isinstance(field, DictConfig) and "name" not in field and not any(key in FIELDS for key in field):
        data["field"] = {"nerf": field}
    return data


def parse_overrides(overrides: Sequence[str]) -> DictConfig:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r} is not key=value (e.g. train.steps=2000)")
    try:
        return _as_literals(OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot parse overrides: {str(exc).splitlines()[0]}") from None


@lru_cache(maxsize=1)
def _defaults_node() -> DictConfig:
    return OmegaConf.structured(RunConfig)


def _structured_defaults() -> DictConfig:
    """A fresh copy of the defaults as a structured config (building it is slow, copying is not)."""
    return _defaults_node().copy()


def load_config(
    config_file: str | Path | None = None,
    overrides: Sequence[str] = (),
    values: dict[str, Any] | None = None,
) -> RunConfig:
    """Build and validate a :class:`RunConfig`.

    config_file: a YAML recipe (partial: keys it omits keep their defaults).
    values: CLI flag values as dotted keys (``{"train.steps": 100}``), applied before ``overrides``.
    """
    cfg = _structured_defaults()
    if config_file is not None:
        cfg = _merge(cfg, load_yaml(Path(config_file)), f"config file {str(config_file)!r}")
    if values:
        # a nested mapping, never YAML text: a flag's string (the prompt) is taken exactly as given
        nested: dict[str, Any] = {}
        for key, value in values.items():
            if value is None:
                continue
            node = nested
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = _literal_tree(value)
        cfg = _merge(cfg, OmegaConf.create(nested), "command-line options")
    if overrides:
        cfg = _merge(cfg, parse_overrides(overrides), "key=value overrides")
    try:
        run: RunConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise ConfigError(_one_line(exc)) from None
    validate(run)
    return run


def apply_overrides(settings: T, overrides: Sequence[str], section: str = "") -> T:
    """A copy of the dataclass ``settings`` with ``key=value`` overrides applied and validated
    (``msd3d toy2d guidance.msd.kernel=exp``); errors are one-line :class:`ConfigError` naming the key.
    With ``section`` the keys carry that prefix (``bench.steps=5`` for ``section="bench"``)."""
    if not overrides:
        return settings
    node: DictConfig = OmegaConf.structured(settings)
    if section:
        node = OmegaConf.create({section: node})
    node = _merge(node, parse_overrides(overrides), "key=value overrides")
    try:
        updated: T = OmegaConf.to_object(node[section] if section else node)  # type: ignore[assignment]
        updated.validate()  # type: ignore[attr-defined]
    except OmegaConfBaseException as exc:
        raise ConfigError(_one_line(exc)) from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return updated


def validate(run: RunConfig) -> None:
    """Run every section's ``validate(path)``; a failure becomes a one-line :class:`ConfigError`
    naming the full dotted key (``guidance.msd.kernel``)."""
    try:
        check_text(run.prompt, "prompt")
        check_text(run.negative_prompt, "negative_prompt")
        if not 0 <= run.seed <= MAX_SEED:
            raise ValueError(f"seed must be an integer from 0 to {MAX_SEED}, got {run.seed}")
        _check_finite(run, "")
        _validate_tree(run, "")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _check_finite(obj: Any, prefix: str) -> None:
    """Every float (also inside lists) of every section must be finite: nan/inf fail naming the key."""
    for f in fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}{f.name}"
        if is_dataclass(value):
            _check_finite(value, key + ".")
            continue
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"{key} must be a finite number, got {value!r}")


def _validate_tree(obj: Any, path: str) -> None:
    if not is_dataclass(obj):
        return
    check = getattr(obj, "validate", None)
    if callable(check):
        # sections take their dotted path; the few whose keys never move (train, render, ...) take none
        if inspect.signature(check).parameters:
            check(path)
        else:
            check()
    for f in fields(obj):
        _validate_tree(getattr(obj, f.name), f"{path}.{f.name}" if path else f.name)


def to_yaml(run: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(run))


