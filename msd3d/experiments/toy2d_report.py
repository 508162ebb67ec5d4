"""What a 2-D experiment run produced (:class:`MethodRun`) and how it is written out: the markdown
tables, ``results.json`` / ``table.md`` and the figures (particles over the density, NLL curves, efficiency)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from msd3d.atomic_io import atomic_path, atomic_write_json, atomic_write_text
from msd3d.experiments.datasets2d import Dataset2D
from msd3d.experiments.toy2d_config import Toy2DConfig, grid_particles
from msd3d.priors.gmm import GaussianMixturePrior


@dataclass
class MethodRun:
    name: str
    particles: Tensor  # (N, 2) final
    metrics: dict[str, float]
    curve: list[tuple[int, float]]  # (step, mean NLL)
    wall_s: float
    evaluations: int
    stats: dict[str, float]



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
