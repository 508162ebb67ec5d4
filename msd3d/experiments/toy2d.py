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

Settings live in :mod:`msd3d.experiments.toy2d_config`, the tables and figures in
:mod:`msd3d.experiments.toy2d_report`; this module runs the experiment and re-exports both.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from msd3d.atomic_io import atomic_write_json, atomic_write_text
from msd3d.errors import Msd3dError
from msd3d.experiments.datasets2d import Dataset2D, canvas_bounds, load_dataset
from msd3d.experiments.metrics2d import estimator_efficiency, particle_metrics
from msd3d.experiments.toy2d_config import (  # noqa: F401 - re-exported
    BASE_METHODS,
    DEFAULT_KERNEL_INTERVAL,
    DENOISERS,
    EfficiencyConfig,
    MetricsConfig,
    OptimConfig,
    Toy2DConfig,
    grid_particles,
    parse_method,
    toy_guidance_defaults,
)
from msd3d.experiments.toy2d_report import (  # noqa: F401 - re-exported
    METRIC_COLUMNS,
    MethodRun,
    _config_dict,
    denoiser_table,
    efficiency_table,
    plot_curves,
    plot_efficiency,
    plot_particles,
    results_table,
    save_figure,
    summary_table,
    write_outputs,
)
from msd3d.guidance import build_guidance
from msd3d.priors.base import DiffusionPrior
from msd3d.priors.gmm import GaussianMixturePrior
from msd3d.priors.learned2d import (
    Denoiser2DConfig,
    LearnedMixturePrior,
    denoiser_error,
    mixture_fingerprint,
    train_mixture_denoiser,
)
from msd3d.schedules import anneal


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


# -- the run --------------------------------------------------------------------------------------

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

