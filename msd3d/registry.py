"""Every pluggable part of msd3d, by name: guidance methods, priors, field types, encodings, backgrounds.

Each entry maps a name to ``(settings dataclass, factory)`` written as ``"module:attribute"`` strings,
so reading a registry imports nothing heavy (Stable Diffusion's module, and diffusers, load only when
that prior is built). The CLI's help, config validation, ``bench``, ``toy2d``, the scripts and the
contract tests all take their names from here. Adding a part is one new module plus one line below;
its settings then appear as their own config section (``guidance.<name>``, ``prior.<name>``,
``field.<name>``) with no other edit.

Factories: guidance ``(prior, settings) -> Guidance``; prior ``(settings, device=...) -> DiffusionPrior``;
field ``(settings) -> nn.Module`` (a :class:`~msd3d.scene.base.RadianceField` with ``param_groups()``);
encoding ``(resolutions, features, init_std) -> nn.Module`` with ``output_dim``; background
``(BackgroundConfig) -> nn.Module``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterator, Mapping
from typing import Any, Callable


def _load(spec: str) -> Any:
    module, _, attribute = spec.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One registered part: where its settings dataclass and its factory live (``module:attribute``)."""

    config: str | None
    factory: str

    def config_class(self) -> type | None:
        return None if self.config is None else _load(self.config)

    def load_factory(self) -> Callable[..., Any]:
        return _load(self.factory)


class Registry(Mapping[str, Entry]):
    """An ordered ``name -> Entry`` mapping for one kind of part (the first entry is the default)."""

    def __init__(self, kind: str, entries: dict[str, tuple[str | None, str]]) -> None:
        self.kind = kind
        self._entries = {name: Entry(config, factory) for name, (config, factory) in entries.items()}

    def __getitem__(self, name: str) -> Entry:
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self._entries)}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str, default: Entry | None = None) -> Entry | None:  # type: ignore[override]
        return self._entries.get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def help(self) -> str:
        """``"msd, sds or sdi"``: the names for CLI help text."""
        names = self.names()
        return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"

    def config_class(self, name: str) -> type | None:
        return self[name].config_class()

    def factory(self, name: str) -> Callable[..., Any]:
        return self[name].load_factory()

    def sections(self) -> list[tuple[str, type]]:
        """``(name, settings dataclass)`` of every entry that has its own settings."""
        out = []
        for name, entry in self._entries.items():
            cls = entry.config_class()
            if cls is not None:
                out.append((name, cls))
        return out


def choice_config(registry: Registry, class_name: str, base: type, module: str) -> type:
    """A config dataclass: ``base``'s ``name`` (which entry runs) plus one section per registered entry.

    ``GuidanceConfig`` is ``name`` + ``sds``/``msd``/``sdi`` sections, built so that registering a
    method adds its section. ``base`` documents ``name`` and validates it against the registry.
    """
    fields = [(name, cls, dataclasses.field(default_factory=cls)) for name, cls in registry.sections()]
    cls = dataclasses.make_dataclass(class_name, fields, bases=(base,))
    cls.__module__ = module  # so pickle and OmegaConf find it where it is defined
    return cls


# ------------------------------------------------------------------------------------------------
# the registries: one line per part (settings dataclass, factory)

GUIDANCE = Registry(
    "guidance",
    {
        "sds": ("msd3d.guidance.sds:SDSConfig", "msd3d.guidance.sds:SDS"),
        "msd": ("msd3d.guidance.msd:MSDConfig", "msd3d.guidance.msd:MSD"),
        "sdi": ("msd3d.guidance.sdi:SDIConfig", "msd3d.guidance.sdi:SDI"),
        "vsd": ("msd3d.guidance.vsd:VSDConfig", "msd3d.guidance.vsd:VSD"),
    },
)

PRIORS = Registry(
    "prior",
    {
        "sd": (
            "msd3d.priors.stable_diffusion:StableDiffusionConfig",
            "msd3d.priors.stable_diffusion:StableDiffusionPrior",
        ),
        "oracle": ("msd3d.catalogue.oracle:OracleConfig", "msd3d.catalogue.oracle:OraclePrior"),
        "learned": (
            "msd3d.catalogue.learned_prior_config:LearnedPriorConfig",
            "msd3d.catalogue.learned_prior:build_learned_prior",
        ),
    },
)

FIELDS = Registry(
    "field",
    {
        "nerf": ("msd3d.scene.nerf:NeRFConfig", "msd3d.scene.nerf:NeRFField"),
        "sdf": ("msd3d.scene.sdf_field:SDFConfig", "msd3d.scene.sdf_field:SDFNeRFField"),
    },
)

ENCODINGS = Registry(
    "encoding",
    {
        "triplane": (None, "msd3d.scene.encodings:TriplaneEncoding"),
        "dense": (None, "msd3d.scene.encodings:DenseGridEncoding"),
    },
)

BACKGROUNDS = Registry(
    "background",
    {
        "mlp": (None, "msd3d.scene.background:Background"),
        "solid": (None, "msd3d.scene.background:Background"),
        "random_solid": (None, "msd3d.scene.background:Background"),
    },
)

#: The 2-D experiments' built-in mixtures (``msd3d toy2d --dataset``): factories ``() -> GaussianMixturePrior``.
DATASETS_2D = Registry(
    "2-D dataset",
    {
        "fractal": (None, "msd3d.experiments.datasets2d:fractal"),
        "spiral": (None, "msd3d.experiments.datasets2d:spiral"),
        "pinwheel": (None, "msd3d.experiments.datasets2d:pinwheel"),
    },
)

#: How MSD's sampler applies its kernel (``guidance.msd.kernel``; see msd3d.guidance.msd).
MSD_KERNELS = ("exp", "diffused", "posterior")
