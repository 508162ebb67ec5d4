"""Settings of the 2-D experiment (:mod:`msd3d.experiments.toy2d`): which methods, the optimiser, the
metrics, the efficiency study, and the guidance defaults each method gets on the toy canvas."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from msd3d.experiments.datasets2d import DATASETS
from msd3d.guidance import GuidanceConfig, MSDConfig, SDIConfig, SDSConfig
from msd3d.guidance.msd import KERNELS
from msd3d.priors.learned2d import (
    Denoiser2DConfig,
)
from msd3d.registry import GUIDANCE
from msd3d.schedules import SCHEDULE_KINDS

BASE_METHODS = GUIDANCE.names()
"""Guidance methods; ``msd-<kernel>[-iv][@<steps>]`` (e.g. ``msd-exp-iv@16``) is MSD with that kernel,
optionally only on the kernel's sigma interval, and that many sampler steps."""

DENOISERS = ("exact", "learned")
"""What the guidance methods distil from: the exact mixture, or a small network trained on it."""

DEFAULT_KERNEL_INTERVAL = (0.0, 0.5)
"""The diffusion-time interval ``[t_min, t_max]`` of the ``-iv`` kernels: the kernel acts only on
the low-noise half of the schedule (sigma <= 1.6 on SD's schedule), so it cannot contract ``z``
onto ``x`` in the first, large steps (the paper applies its kernel on a limited sigma interval)."""


def parse_method(
    name: str, kernel_interval: tuple[float, float] = DEFAULT_KERNEL_INTERVAL
) -> tuple[str, dict[str, Any]]:
    """``"msd-exp"`` -> ``("msd", {"kernel": "exp"})``; ``"sds"`` -> ``("sds", {})``;
    ``"msd-exp-iv@16"`` -> ``("msd", {"kernel": "exp", "kernel_t_min": 0.0, "kernel_t_max": 0.5,
    "sampler_steps": 16})`` (``kernel_interval`` gives the ``-iv`` times)."""
    name = name.strip().lower()
    if name in BASE_METHODS:
        return name, {}
    base, _, steps = name.partition("@")
    overrides: dict[str, Any] = {}
    if steps:
        if not steps.isdigit() or int(steps) < 1:
            raise ValueError(f"method {name!r}: the number after '@' must be sampler steps >= 1")
        overrides["sampler_steps"] = int(steps)
    if base.endswith("-iv"):
        base = base[:-3]
        overrides["kernel_t_min"], overrides["kernel_t_max"] = (float(t) for t in kernel_interval)
    if base == "msd" and overrides:
        return "msd", overrides
    if base.startswith("msd-") and base[4:] in KERNELS:
        return "msd", {"kernel": base[4:], **overrides}
    choices = ", ".join(list(BASE_METHODS) + [f"msd-{k}" for k in KERNELS])
    raise ValueError(f"unknown method {name!r}; choose from {choices} (MSD kernels take -iv and @<steps>)")


# -- configuration --------------------------------------------------------------------------------
def toy_guidance_defaults() -> GuidanceConfig:
    """Per-method settings for the toy (the library defaults are tuned for Stable Diffusion).

    * all methods: no classifier-free guidance (scale 1). The prior is the exact class-conditional
      density, so guidance is not needed to hit the class, and the metrics score exactly that density.
    * MSD: ``kernel="posterior"`` (the exact product score, so the target's mean is the exact mean
      shift), 4 sampler steps, 1 product sample per particle and step; lambda is set per dataset
      (see :func:`auto_lambdas`) and annealed log-linearly.
    * SDS: threestudio's times ``t ~ U[0.02, 0.98]`` and weighting ``w = 1 - alpha_bar``.
    * SDI: times annealed from 0.98 to 0.02 as in its paper, 10 inversion steps.
    """
    return GuidanceConfig(
        name="msd",
        sds=SDSConfig(guidance_scale=1.0),
        msd=MSDConfig(guidance_scale=1.0, kernel="posterior", sampler_steps=4, samples=1, lambda_schedule="log_linear"),
        sdi=SDIConfig(guidance_scale=1.0, inversion_steps=10),
    )


@dataclass
class OptimConfig:
    """Adam on the particles, the learning rate annealed from ``lr`` to ``lr_end`` (data units per step).

    Adam moves each coordinate by about ``lr`` per step whatever the gradient's scale, so the
    learning rate is a step length: by default it is tied to the canvas, ``lr = 3 %`` of its width
    (enough for a particle to cross the canvas in the run) down to ``lr_end = lr / 30`` (well below
    the thinnest component, so particles settle instead of jittering).
    """

    lr: float | None = None
    lr_end: float | None = None
    lr_schedule: str = "log_linear"
    betas: tuple[float, float] = (0.9, 0.99)

    def validate(self) -> None:
        if (self.lr is not None and self.lr <= 0) or (self.lr_end is not None and self.lr_end <= 0):
            raise ValueError("optim.lr and optim.lr_end must be positive")
        if self.lr_schedule not in SCHEDULE_KINDS:
            raise ValueError(f"optim.lr_schedule must be one of {', '.join(SCHEDULE_KINDS)}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError("optim.betas must be in [0, 1)")

    def resolve(self, canvas_width: float) -> tuple[float, float]:
        """(lr, lr_end) with the canvas-relative defaults filled in."""
        lr = self.lr if self.lr is not None else 0.03 * canvas_width
        return lr, self.lr_end if self.lr_end is not None else lr / 30


@dataclass
class MetricsConfig:
    knn_k: int = 3
    """k of the k-NN manifolds for precision/recall (Kynkäänniemi et al. use 3)."""
    reference_samples: int = 0
    """Exact samples to compare with; 0 = as many as there are particles (balanced sets)."""
    mmd_bandwidth: float = 0.0
    """RBF bandwidth h of the MMD; 0 = 10 % of the canvas width."""

    def validate(self) -> None:
        if self.knn_k < 1:
            raise ValueError("metrics.knn_k must be at least 1")
        if self.reference_samples < 0 or self.mmd_bandwidth < 0:
            raise ValueError("metrics.reference_samples and metrics.mmd_bandwidth must be non-negative")


@dataclass
class EfficiencyConfig:
    """The gradient-estimation-efficiency study (error versus denoiser evaluations)."""

    enabled: bool = True
    points: int = 32
    """Random points, uniform on the canvas."""
    lambda_factors: tuple[float, ...] = (0.5, 2.0, 8.0)
    """Bandwidths studied, as multiples of the median component width (smallest std)."""
    kernels: tuple[str, ...] = ("posterior", "exp", "exp-iv", "diffused")
    """MSD kernels studied; ``<kernel>-iv`` applies it only on the run's ``kernel_interval``."""
    msd_sampler_steps: tuple[int, ...] = (1, 4, 16)
    msd_samples: tuple[int, ...] = (1, 4, 16)
    draws: tuple[int, ...] = (1, 4, 16, 64)
    """Independent calls averaged by SDS and SDI."""

    def validate(self) -> None:
        if self.points < 1:
            raise ValueError("efficiency.points must be at least 1")
        if not self.lambda_factors or min(self.lambda_factors) <= 0:
            raise ValueError("efficiency.lambda_factors must be positive numbers")
        if any(k.removesuffix("-iv") not in KERNELS for k in self.kernels):
            raise ValueError(f"efficiency.kernels must be among {', '.join(KERNELS)} (optionally with -iv)")
        for key in ("msd_sampler_steps", "msd_samples", "draws"):
            values = getattr(self, key)
            if not values or min(values) < 1:
                raise ValueError(f"efficiency.{key} must be integers of at least 1")


@dataclass
class Toy2DConfig:
    """One toy run: a dataset, the methods to compare and how they are scored."""

    dataset: str = "fractal"
    gmm: str | None = None
    """A JSON mixture file to use instead of a built-in dataset."""
    prompt: str | None = None
    """Class prompt; None = the dataset's default ("orange" for fractal, "" otherwise)."""
    methods: tuple[str, ...] = BASE_METHODS
    steps: int = 200
    grid: int = 20
    """Particles start on a grid x grid lattice over the canvas."""
    seed: int = 0
    lambda_start: float | None = None
    lambda_end: float | None = None
    """MSD bandwidth schedule in data units; None = from the mixture (:func:`auto_lambdas`)."""
    curve_points: int = 25
    """How many times the NLL is recorded during each run."""
    plot_resolution: int = 300
    optim: OptimConfig = field(default_factory=OptimConfig)
    guidance: GuidanceConfig = field(default_factory=toy_guidance_defaults)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    efficiency: EfficiencyConfig = field(default_factory=EfficiencyConfig)
    denoiser: str = "exact"
    """"exact": guidance uses the mixture's exact denoiser; "learned": a small MLP trained on samples
    of the mixture (:mod:`msd3d.priors.learned2d`), saved as ``denoiser.safetensors`` in the output
    folder and reused. Particles and estimates are always scored against the exact mixture."""
    denoiser_train: Denoiser2DConfig = field(default_factory=Denoiser2DConfig)
    kernel_interval: tuple[float, float] = DEFAULT_KERNEL_INTERVAL
    """Diffusion-time interval of the ``-iv`` MSD kernels (methods and efficiency rows)."""
    denoiser_error_sigmas: tuple[float, ...] = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 14.6)
    """Noise levels at which the learned denoiser's error against the exact one is reported."""

    def validate(self) -> None:
        if self.denoiser not in DENOISERS:
            raise ValueError(f"denoiser must be one of {', '.join(DENOISERS)}, got {self.denoiser!r}")
        t_min, t_max = self.kernel_interval
        if not 0 <= t_min <= t_max <= 1:
            raise ValueError("kernel_interval must be two times 0 <= t_min <= t_max <= 1")
        self.denoiser_train.validate()
        if self.steps < 1:
            raise ValueError("steps must be at least 1")
        if self.grid < 2:
            raise ValueError("grid must be at least 2")
        if not self.methods:
            raise ValueError("methods must name at least one method")
        for m in self.methods:
            parse_method(m, self.kernel_interval)
        if len(set(self.methods)) != len(self.methods):
            raise ValueError("methods must not repeat")
        for key in ("lambda_start", "lambda_end"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise ValueError(f"{key} must be positive")
        if self.gmm is None and self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)} (or pass a gmm file), got {self.dataset!r}")
        if self.curve_points < 2 or self.plot_resolution < 16:
            raise ValueError("curve_points must be at least 2 and plot_resolution at least 16")
        self.optim.validate()
        self.metrics.validate()
        self.efficiency.validate()
        for name in GUIDANCE.names():
            getattr(self.guidance, name).validate(f"guidance.{name}")


def grid_particles(bounds: tuple[float, float, float, float], n: int) -> Tensor:
    """(n*n, 2) lattice covering the canvas (cell centres, so no particle sits on the border)."""
    x0, x1, y0, y1 = bounds
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    xs, ys = x0 + (x1 - x0) * u, y0 + (y1 - y0) * u
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    return torch.stack([gx, gy], dim=-1).reshape(-1, 2).float()
