"""The paper's synthetic 2-D experiment: particles distilled from an exact Gaussian-mixture prior.

Particles start on a dense grid over the canvas and are the data ``x`` themselves: each step, a
guidance method (SDS, MSD or SDI from :mod:`msd3d.guidance`, unchanged) looks at the particles and
returns a target, and Adam minimises the guidance loss ``1/2 w ||x - target||^2``. Because the prior
is an exact mixture (:mod:`msd3d.experiments.datasets2d`), the result can be scored against the true
density (:mod:`msd3d.experiments.metrics2d`), and each estimator can be compared with the exact
quantity it estimates (the "gradient estimation efficiency" study).

Outputs (written atomically to the output folder): ``results.json`` (config and every number),
``table.md``, ``particles_<method>.png`` and ``particles.png`` (particles over the density),
``nll_curves.png`` and ``efficiency.png``.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from msd3d.atomic_io import atomic_path, atomic_write_json, atomic_write_text
from msd3d.errors import Msd3dError
from msd3d.experiments.datasets2d import DATASETS, Dataset2D, canvas_bounds, load_dataset
from msd3d.experiments.metrics2d import estimator_efficiency, particle_metrics
from msd3d.guidance import GuidanceConfig, MSDConfig, SDIConfig, SDSConfig, build_guidance
from msd3d.guidance.msd import KERNELS
from msd3d.priors.base import DiffusionPrior
from msd3d.priors.gmm import GaussianMixturePrior
from msd3d.priors.learned2d import (
    Denoiser2DConfig,
    LearnedMixturePrior,
    denoiser_error,
    mixture_fingerprint,
    train_mixture_denoiser,
)
from msd3d.registry import GUIDANCE
from msd3d.schedules import SCHEDULE_KINDS, anneal

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


def auto_lambdas(prior: GaussianMixturePrior, prompt: str = "") -> tuple[float, float]:
    """Default MSD bandwidths from the mixture's own scales.

    * ``lambda_start``: the median component length (largest std), i.e. the scale at which
      neighbouring components of a ridge merge: large enough to pull particles in from far away,
      small enough not to merge separate branches into one blob (which would collapse the particles
      onto a single mode before the bandwidth shrinks).
    * ``lambda_end``: half the smallest component width (smallest std) among the class's components,
      so that at the end the smoothed density's modes sit inside every component's 1-sigma band.
    """
    mask = prior.component_log_weights(prompt).isfinite()
    eig = torch.linalg.eigvalsh(prior.covs[mask]).sqrt()  # (K', D)
    start = float(eig[:, -1].median())
    end = 0.5 * float(eig[:, 0].min())
    return start, max(end, 1e-6)


def grid_particles(bounds: tuple[float, float, float, float], n: int) -> Tensor:
    """(n*n, 2) lattice covering the canvas (cell centres, so no particle sits on the border)."""
    x0, x1, y0, y1 = bounds
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    xs, ys = x0 + (x1 - x0) * u, y0 + (y1 - y0) * u
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    return torch.stack([gx, gy], dim=-1).reshape(-1, 2).float()


# -- the run --------------------------------------------------------------------------------------
@dataclass
class MethodRun:
    name: str
    particles: Tensor  # (N, 2) final
    metrics: dict[str, float]
    curve: list[tuple[int, float]]  # (step, mean NLL)
    wall_s: float
    evaluations: int
    stats: dict[str, float]


def optimise_particles(
    dataset: Dataset2D,
    method: str,
    config: Toy2DConfig,
    prompt: str,
    lambdas: tuple[float, float],
    on_step: Callable[[int], None] | None = None,
    denoiser: DiffusionPrior | None = None,
) -> tuple[Tensor, list[tuple[int, float]], dict[str, float]]:
    """Run one guidance method on the grid particles; returns (particles (N, 2), NLL curve, last stats).

    ``dataset.bounds`` is the canvas the grid covers; ``lambdas`` is MSD's (start, end) bandwidth.
    ``denoiser``: the prior the guidance distils from (default: the exact mixture); the NLL curve is
    always the exact mixture's.
    """
    prior = dataset.prior
    denoiser = prior if denoiser is None else denoiser
    lr, lr_end = config.optim.resolve(dataset.bounds[1] - dataset.bounds[0])
    base, overrides = parse_method(method, config.kernel_interval)
    gcfg = config.guidance
    if base == "msd":
        overrides = {"lambda_start": lambdas[0], "lambda_end": lambdas[1], **overrides}
    section = replace(getattr(gcfg, base), **overrides)
    guidance = build_guidance(base, denoiser, replace(gcfg, **{base: section}))
    generator = torch.Generator().manual_seed(config.seed)

    x = grid_particles(dataset.bounds, config.grid).requires_grad_(True)
    cond = denoiser.condition([prompt] * len(x))
    opt = torch.optim.Adam([x], lr=lr, betas=tuple(config.optim.betas))
    record_at = {round(i * (config.steps - 1) / (config.curve_points - 1)) for i in range(config.curve_points)}
    curve: list[tuple[int, float]] = []
    stats: dict[str, float] = {}
    for step in range(config.steps):
        for group in opt.param_groups:
            group["lr"] = anneal(lr, lr_end, step, config.steps, config.optim.lr_schedule)
        if step in record_at:
            curve.append((step, float(-prior.log_prob(x.detach(), prompt=prompt).mean())))
        out = guidance(x.detach(), cond, step=step, total_steps=config.steps, generator=generator)
        x.grad = None
        out.loss(x).backward()
        opt.step()
        stats = {k: float(v) for k, v in out.stats.items()}  # floats, or 0-dim tensors if deferred
        if on_step is not None:
            on_step(step)
    final = x.detach().clone()
    curve.append((config.steps, float(-prior.log_prob(final, prompt=prompt).mean())))
    return final, curve, stats


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Temporarily run torch with ``n`` intra-op threads (None: leave as is).

    The toy's tensors are tiny (hundreds of particles times hundreds of components), so threading
    costs more than it saves (on a busy CPU, by an order of magnitude).
    """
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_toy2d(
    config: Toy2DConfig,
    out_dir: Path | str | None = None,
    show_progress: bool = True,
    num_threads: int | None = 1,
) -> dict[str, Any]:
    """Optimise particles with every method of ``config``, score them, study the estimators' efficiency
    and (with ``out_dir``) write ``results.json``, ``table.md`` and the plots. Returns the results dict.

    Raises :class:`Msd3dError` for invalid settings or input files. ``num_threads``: torch threads
    during the run (see :func:`torch_threads`; restored afterwards).
    """
    with torch_threads(num_threads):
        return _run_toy2d(config, out_dir, show_progress)


def _run_toy2d(config: Toy2DConfig, out_dir: Path | str | None, show_progress: bool) -> dict[str, Any]:
    try:
        config.validate()
    except ValueError as err:
        raise Msd3dError(f"invalid toy2d setting: {err}") from None
    dataset = load_dataset(config.dataset, config.gmm)
    prior = dataset.prior
    prompt = dataset.prompt if config.prompt is None else config.prompt
    try:
        prior.component_log_weights(prompt)
    except ValueError as err:
        raise Msd3dError(f"invalid prompt for dataset {dataset.name!r}: {err}") from None
    if prior.dim != 2:
        raise Msd3dError(f"toy2d needs a 2-D mixture, but {dataset.name!r} is {prior.dim}-D")
    if prompt != dataset.prompt:
        dataset = replace(dataset, bounds=canvas_bounds(prior, prompt), prompt=prompt)
    auto = auto_lambdas(prior, prompt)
    lambdas = (config.lambda_start or auto[0], config.lambda_end or auto[1])

    bounds = dataset.bounds
    canvas_width = bounds[1] - bounds[0]
    n_particles = config.grid**2
    n_ref = config.metrics.reference_samples or n_particles
    bandwidth = config.metrics.mmd_bandwidth or 0.1 * canvas_width
    reference = prior.sample(n_ref, torch.Generator().manual_seed(config.seed + 1), prompt=prompt)

    runs: dict[str, MethodRun] = {}
    with _progress(show_progress) as bar:
        denoiser, denoiser_info = _denoiser_for(dataset, config, prompt, out_dir, bar)
        for method in config.methods:
            task = bar.add_task(f"{dataset.name}: {method}", total=config.steps) if bar else None
            denoiser.counter.reset()
            t0 = time.perf_counter()
            particles, curve, stats = optimise_particles(
                dataset, method, config, prompt, lambdas, on_step=(lambda s: bar.advance(task)) if bar else None,
                denoiser=denoiser,
            )
            wall = time.perf_counter() - t0
            evaluations = denoiser.counter.evaluations
            metrics = particle_metrics(prior, particles, reference, prompt, config.metrics.knn_k, bandwidth)
            runs[method] = MethodRun(method, particles, metrics, curve, wall, evaluations, stats)
        efficiency: list[dict] = []
        if config.efficiency.enabled:
            task = bar.add_task(f"{dataset.name}: efficiency", total=None) if bar else None
            efficiency = _efficiency(prior, dataset, config, prompt, denoiser)
            if bar:
                bar.update(task, total=1, completed=1)

    results = {
        "dataset": {
            "name": dataset.name,
            "components": prior.num_components,
            "classes": prior.class_names,
            "prompt": prompt,
            "bounds": list(bounds),
        },
        "denoiser": denoiser_info,
        "lambda_start": lambdas[0],
        "lambda_end": lambdas[1],
        "lr": config.optim.resolve(canvas_width)[0],
        "lr_end": config.optim.resolve(canvas_width)[1],
        "mmd_bandwidth": bandwidth,
        "particles": n_particles,
        "reference_samples": n_ref,
        "reference_metrics": particle_metrics(
            prior, prior.sample(n_ref, torch.Generator().manual_seed(config.seed + 2), prompt=prompt),
            reference, prompt, config.metrics.knn_k, bandwidth,
        ),
        "methods": {
            name: {
                **r.metrics,
                "wall_s": r.wall_s,
                "denoiser_evaluations": r.evaluations,
                "evaluations_per_particle_step": r.evaluations / (n_particles * config.steps),
                "nll_curve": r.curve,
                "final_stats": r.stats,
            }
            for name, r in runs.items()
        },
        "efficiency": efficiency,
        "config": _config_dict(config),
    }
    if out_dir is not None:
        write_outputs(Path(out_dir), results, runs, dataset, prompt, config)
    return results


def run_toy2d_suite(
    config: Toy2DConfig,
    datasets: Sequence[str],
    out_dir: Path | str | None = None,
    show_progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """:func:`run_toy2d` on several built-in datasets with the same settings.

    Each dataset writes to ``out_dir/<name>/``; ``out_dir`` gets ``results.json`` (every dataset's
    results by name) and ``table.md`` (a summary table, then each dataset's tables).
    """
    all_results: dict[str, dict[str, Any]] = {}
    for name in datasets:
        sub = None if out_dir is None else Path(out_dir) / name
        all_results[name] = run_toy2d(replace(config, dataset=name, gmm=None), sub, show_progress)
    if out_dir is not None:
        out = Path(out_dir)
        text = "# toy2d results\n\n" + summary_table(all_results) + "\n"
        for res in all_results.values():
            text += "\n" + results_table(res) + denoiser_table(res)
            if res["efficiency"]:
                text += "\n#### Gradient estimation efficiency\n\n" + efficiency_table(res["efficiency"])
        atomic_write_text(out / "table.md", text)
        atomic_write_json(out / "results.json", all_results, indent=1)
    return all_results


def summary_table(all_results: dict[str, dict[str, Any]]) -> str:
    """NLL and on-mode fraction of every method on every dataset, as markdown."""
    names = list(all_results)
    methods: list[str] = []
    for res in all_results.values():
        methods += [m for m in res["methods"] if m not in methods]
    lines = [
        "| method | " + " | ".join(f"{n} NLL ↓ | {n} on-mode ↑" for n in names) + " |",
        "|---|" + "---|---|" * len(names),
    ]
    for m in methods:
        cells = []
        for n in names:
            r = all_results[n]["methods"].get(m)
            cells += ["–", "–"] if r is None else [f"{r['nll']:.3f}", f"{r['on_mode']:.1%}"]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _denoiser_for(
    dataset: Dataset2D, config: Toy2DConfig, prompt: str, out_dir: Path | str | None, bar: Any
) -> tuple[DiffusionPrior, dict[str, Any]]:
    """The prior the guidance distils from, and what to report about it.

    "exact": the mixture itself. "learned": ``out_dir/denoiser.safetensors`` when it was trained on
    this mixture with these settings, else a freshly trained one (saved there); its error against the
    exact denoiser is measured at ``config.denoiser_error_sigmas``.
    """
    if config.denoiser == "exact":
        return dataset.prior, {"kind": "exact"}
    path = None if out_dir is None else Path(out_dir) / DENOISER_FILE
    model, reused = None, False
    if path is not None and path.is_file():
        try:
            candidate = LearnedMixturePrior.load(path)
        except Exception:  # noqa: BLE001 - an unreadable or foreign file is simply retrained
            candidate = None
        if candidate is not None and _reusable(candidate, dataset.prior, config.denoiser_train):
            model, reused = candidate, True
    if model is None:
        train = config.denoiser_train
        task = bar.add_task(f"{dataset.name}: train denoiser", total=train.steps) if bar else None
        model = train_mixture_denoiser(
            dataset.prior, train, on_step=(lambda s, loss: bar.advance(task)) if bar else None,
            metadata={"dataset": dataset.name},
        )
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            model.save(path)
    errors = denoiser_error(
        dataset.prior, model, config.denoiser_error_sigmas, prompt=prompt,
        generator=torch.Generator().manual_seed(config.seed + 4),
    )
    info = {
        "kind": "learned",
        "file": None if path is None else str(path),
        "reused": reused,
        "training": model.metadata,
        "settings": asdict(model.config),
        "error_by_sigma": errors,
    }
    return model, info


DENOISER_FILE = "denoiser.safetensors"


def _reusable(model: LearnedMixturePrior, prior: GaussianMixturePrior, train: Denoiser2DConfig) -> bool:
    """Whether a saved denoiser was trained on this mixture with these settings."""
    return (
        model.metadata.get("mixture_fingerprint") == mixture_fingerprint(prior)
        and asdict(model.config) == asdict(train)
    )


def _efficiency(
    prior: GaussianMixturePrior, dataset: Dataset2D, config: Toy2DConfig, prompt: str, denoiser: DiffusionPrior
) -> list[dict]:
    e = config.efficiency
    gen = torch.Generator().manual_seed(config.seed + 3)
    x0, x1, y0, y1 = dataset.bounds
    u = torch.rand(e.points, 2, generator=gen, dtype=torch.float64)
    points = torch.stack([x0 + (x1 - x0) * u[:, 0], y0 + (y1 - y0) * u[:, 1]], dim=1)
    mask = prior.component_log_weights(prompt).isfinite()
    width = float(torch.linalg.eigvalsh(prior.covs[mask])[:, 0].sqrt().median())
    lambdas = [f * width for f in e.lambda_factors]
    methods = {parse_method(m, config.kernel_interval)[0] for m in config.methods}
    rows = estimator_efficiency(
        prior,
        points,
        prompt,
        lambdas,
        config.guidance.msd,
        config.guidance.sds,
        config.guidance.sdi,
        kernels=e.kernels,
        msd_sampler_steps=e.msd_sampler_steps,
        msd_samples=e.msd_samples,
        draws=e.draws,
        methods=tuple(methods),
        generator=gen,
        denoiser=denoiser,
        kernel_interval=config.kernel_interval,
    )
    for row in rows:
        row["lambda_factor"] = row["lambda"] / width if row["method"] == "msd" else math.nan
    return rows


class _NoBar:
    def __enter__(self):
        return None

    def __exit__(self, *exc) -> None:
        return None


def _progress(show: bool):
    if not show:
        return _NoBar()
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )


def _config_dict(config: Toy2DConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(config), default=str))


# -- outputs --------------------------------------------------------------------------------------
METRIC_COLUMNS = (
    ("nll", "NLL ↓", "{:.3f}"),
    ("nll_median", "median NLL ↓", "{:.3f}"),
    ("precision", "precision ↑", "{:.3f}"),
    ("recall", "recall ↑", "{:.3f}"),
    ("mmd", "MMD² ↓", "{:.4f}"),
    ("mean_dist_to_mean", "dist. to mean ↓", "{:.3f}"),
    ("on_mode", "on-mode ↑", "{:.1%}"),
    ("wall_s", "time (s)", "{:.1f}"),
    ("evaluations_per_particle_step", "evals/particle/step", "{:.0f}"),
)


def results_table(results: dict[str, Any]) -> str:
    """The particle metrics of one dataset as a markdown table (one row per method)."""
    ds = results["dataset"]
    lines = [
        f"### {ds['name']} (prompt {ds['prompt']!r}, {ds['components']} components, {results['particles']} particles, "
        f"{(results.get('denoiser') or {}).get('kind', 'exact')} denoiser)",
        "",
        f"lambda {results['lambda_start']:.4g} → {results['lambda_end']:.4g}; MMD RBF bandwidth h = "
        f"{results['mmd_bandwidth']:.4g}; precision/recall k = {results['config']['metrics']['knn_k']}; "
        f"on-mode = Mahalanobis distance ≤ 3 to some component.",
        "",
        "| method | " + " | ".join(c[1] for c in METRIC_COLUMNS) + " |",
        "|---|" + "---|" * len(METRIC_COLUMNS),
    ]
    rows = dict(results["methods"])
    rows["(exact samples)"] = {
        **results["reference_metrics"], "wall_s": math.nan, "evaluations_per_particle_step": math.nan
    }
    for name, m in rows.items():
        cells = []
        for key, _, fmt in METRIC_COLUMNS:
            v = m.get(key)
            cells.append("–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def denoiser_table(results: dict[str, Any]) -> str:
    """The learned denoiser's training and its error against the exact one across sigma ("" for exact)."""
    info = results.get("denoiser") or {}
    if info.get("kind") != "learned":
        return ""
    t = info["training"]
    lines = [
        "",
        f"#### Learned denoiser ({'reused ' if info['reused'] else ''}{info.get('file') or 'not saved'}): "
        f"{t.get('steps_run')} steps in {t.get('train_seconds')} s, final loss {t.get('final_loss', math.nan):.4g}",
        "",
        "| σ | " + " | ".join(f"{r['sigma']:.3g}" for r in info["error_by_sigma"]) + " |",
        "|---|" + "---|" * len(info["error_by_sigma"]),
        "| RMSE vs exact D | " + " | ".join(f"{r['rmse']:.3g}" for r in info["error_by_sigma"]) + " |",
        "| relative (÷ RMS of D − z) | " + " | ".join(f"{r['rel_error']:.3g}" for r in info["error_by_sigma"]) + " |",
    ]
    return "\n".join(lines) + "\n"


def efficiency_table(rows: Sequence[dict]) -> str:
    """Estimator error versus denoiser evaluations per point, as markdown."""
    if not rows:
        return ""
    lines = [
        "| method | kernel | λ / width | sampler steps | draws | evals/point "
        "| rel. error vs exact m | ideal (exact q samples) | 1 − cos vs ∇log p |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def f(v: Any, fmt: str) -> str:
        return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)

    for r in rows:
        lines.append(
            f"| {r['method']} | {r['kernel'] or '–'} | {f(r.get('lambda_factor'), '{:.2g}')} | {r['sampler_steps']} | "
            f"{r['draws']} | {r['evaluations']:.0f} | {f(r['rel_error'], '{:.3g}')} | "
            f"{f(r['ideal_rel_error'], '{:.3g}')} | {f(r['cos_error'], '{:.3g}')} |"
        )
    return "\n".join(lines) + "\n"


def write_outputs(
    out_dir: Path,
    results: dict[str, Any],
    runs: dict[str, MethodRun],
    dataset: Dataset2D,
    prompt: str,
    config: Toy2DConfig,
) -> None:
    """results.json, table.md and the PNG plots, each written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_particles(out_dir, runs, dataset, prompt, config)
    plot_curves(out_dir / "nll_curves.png", runs, dataset.name)
    if results["efficiency"]:
        plot_efficiency(out_dir / "efficiency.png", results["efficiency"], dataset.name)
    text = "# toy2d results\n\n" + results_table(results) + denoiser_table(results)
    if results["efficiency"]:
        text += "\n#### Gradient estimation efficiency\n\n" + efficiency_table(results["efficiency"])
    atomic_write_text(out_dir / "table.md", text)
    atomic_write_json(out_dir / "results.json", results, indent=1)


def _density_image(prior: GaussianMixturePrior, bounds, prompt: str, res: int) -> Tensor:
    x0, x1, y0, y1 = bounds
    gx, gy = torch.meshgrid(
        torch.linspace(x0, x1, res, dtype=torch.float64),
        torch.linspace(y0, y1, res, dtype=torch.float64),
        indexing="xy",
    )
    grid = torch.stack([gx, gy], dim=-1).reshape(-1, 2)
    logp = torch.cat([prior.log_prob(chunk, prompt=prompt) for chunk in grid.split(16384)]).reshape(res, res)
    return logp.clamp(min=float(logp.max()) - 10.0)


def plot_particles(
    out_dir: Path, runs: dict[str, MethodRun], dataset: Dataset2D, prompt: str, config: Toy2DConfig
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logp = _density_image(dataset.prior, dataset.bounds, prompt, config.plot_resolution).numpy()
    start = grid_particles(dataset.bounds, config.grid).numpy()

    def draw(ax, run: MethodRun) -> None:
        ax.imshow(logp, origin="lower", extent=dataset.bounds, cmap="Greys", alpha=0.9)
        ax.scatter(start[:, 0], start[:, 1], s=1, c="tab:blue", alpha=0.15, linewidths=0)
        p = run.particles.numpy()
        ax.scatter(p[:, 0], p[:, 1], s=4, c="tab:orange", edgecolors="black", linewidths=0.2)
        m = run.metrics
        ax.set_title(f"{run.name}: NLL {m['nll']:.2f}, on-mode {m['on_mode']:.0%}", fontsize=9)
        ax.set_xlim(dataset.bounds[0], dataset.bounds[1])
        ax.set_ylim(dataset.bounds[2], dataset.bounds[3])
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])

    for name, run in runs.items():
        fig, ax = plt.subplots(figsize=(4.5, 4.5), layout="constrained")
        draw(ax, run)
        save_figure(fig, out_dir / f"particles_{name}.png")
        plt.close(fig)
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 4.4), squeeze=False, layout="constrained")
    for ax, run in zip(axes[0], runs.values()):
        draw(ax, run)
    fig.suptitle(f"{dataset.name} (prompt {prompt!r}): final particles over log p", fontsize=10)
    save_figure(fig, out_dir / "particles.png")
    plt.close(fig)


def plot_curves(path: Path, runs: dict[str, MethodRun], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), layout="constrained")
    for name, run in runs.items():
        steps, nll = zip(*run.curve)
        ax.plot(steps, nll, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("mean NLL of particles")
    ax.set_yscale("symlog")
    ax.set_title(title)
    ax.legend()
    save_figure(fig, path)
    plt.close(fig)


def plot_efficiency(path: Path, rows: Sequence[dict], title: str) -> None:
    """One panel per bandwidth: MSD's relative error against the exact mean shift (colour: kernel,
    line style: sampler steps; black dotted: the floor of exact, independent samples of ``q``).
    Last panel: ``1 - cos`` against ``grad log p`` for SDS, SDI and MSD at the smallest bandwidth.
    x axis: denoiser evaluations per point (the number of samples or draws grows along each line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    msd = [r for r in rows if r["method"] == "msd"]
    lambdas = sorted({r["lambda"] for r in msd})
    steps_all = sorted({r["sampler_steps"] for r in msd})
    colors = {"exp": "tab:red", "exp-iv": "tab:brown", "diffused": "tab:purple", "diffused-iv": "tab:pink",
              "posterior": "tab:green", "posterior-iv": "tab:olive"}
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D"]
    fig, axes = plt.subplots(
        1, len(lambdas) + 1, figsize=(4.2 * (len(lambdas) + 1), 4.0), squeeze=False, layout="constrained"
    )
    axes = axes[0]

    def lines(ax, pts_of, key: str, label_prefix: str = "") -> None:
        for kernel, color in colors.items():
            for j, n_steps in enumerate(steps_all):
                pts = sorted(pts_of(kernel, n_steps), key=lambda r: r["evaluations"])
                if pts:
                    ax.plot([r["evaluations"] for r in pts], [max(r[key], 1e-12) for r in pts], styles[j % 4],
                            marker=markers[j % 4], ms=3, color=color, alpha=0.85,
                            label=f"{label_prefix}{kernel}, {n_steps} steps")

    for ax, lam in zip(axes[:-1], lambdas):
        at = [r for r in msd if r["lambda"] == lam]
        lines(ax, lambda k, n: [r for r in at if r["kernel"] == k and r["sampler_steps"] == n], "rel_error")
        floor = sorted((r for r in at if r["sampler_steps"] == steps_all[0]), key=lambda r: r["evaluations"])
        floor = {r["draws"]: r["ideal_rel_error"] for r in floor}
        draws = sorted(floor)
        ax.plot(draws, [floor[d] for d in draws], "k:", lw=1, label="exact samples of q (per draw)")
        ax.set_title(f"{title}: MSD, λ = {at[0]['lambda_factor']:.2g} × width ({lam:.3g})", fontsize=9)
        ax.set_ylabel("relative error vs exact mean shift")
    ax_c = axes[-1]
    if lambdas:
        at = [r for r in msd if r["lambda"] == lambdas[0]]
        lines(ax_c, lambda k, n: [r for r in at if r["kernel"] == k and r["sampler_steps"] == n], "cos_error", "msd ")
    for name, color in (("sds", "tab:blue"), ("sdi", "tab:orange")):
        pts = sorted((r for r in rows if r["method"] == name), key=lambda r: r["evaluations"])
        if pts:
            ax_c.plot([r["evaluations"] for r in pts], [max(r["cos_error"], 1e-12) for r in pts], "-o", ms=3,
                      color=color, lw=2, label=name)
    ax_c.set_title(f"{title}: direction error (MSD at smallest λ)", fontsize=9)
    ax_c.set_ylabel("1 − cos(estimate, ∇log p)")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("denoiser evaluations per point")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=6)
    ax_c.legend(fontsize=6)
    save_figure(fig, path)
    plt.close(fig)


def save_figure(fig, path: Path, dpi: int = 110) -> None:
    """A matplotlib figure as PNG, written atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
