"""The training-curve plots of a run's report page (PNG bytes from matplotlib, no pyplot state)."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence


@dataclass
class Series:
    """One curve of a plot: ``values`` against ``steps``."""

    label: str
    steps: list[float]
    values: list[float]
    marker: str = ""


def _series(records: Sequence[dict[str, Any]], key: str, label: str | None = None) -> Series | None:
    steps, values = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            steps.append(float(r["step"]))
            values.append(float(v))
    return Series(label or key, steps, values) if values else None


def plot_png(
    series: Sequence[Series], title: str, ylabel: str, log_y: bool = False, size: tuple[float, float] = (5.2, 3.0)
) -> bytes:
    """One line plot (PNG bytes) of ``series`` against steps; no pyplot state is touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for s in series:
        style = {"marker": s.marker or ("o" if len(s.values) <= 3 else None), "markersize": 4}
        axes.plot(s.steps, s.values, label=s.label, linewidth=1.4, **style)
    if log_y and all(v > 0 for s in series for v in s.values):
        axes.set_yscale("log")
    axes.set_title(title, fontsize=11)
    axes.set_xlabel("step")
    axes.set_ylabel(ylabel if len(series) > 1 else series[0].label)
    axes.grid(True, alpha=0.3)
    if len(series) > 1:
        axes.legend(fontsize=8, frameon=False)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _wide_range(series: Sequence[Series]) -> bool:
    values = [abs(v) for s in series for v in s.values if v != 0]
    return bool(values) and max(values) / min(values) > 50


def training_plots(records: Sequence[dict[str, Any]], summary: dict[str, Any]) -> dict[str, bytes]:
    """``{file name: PNG}`` for the curves the records hold: loss, lambda / t, it/s, scores."""
    train = [r for r in records if "loss" in r]
    plots: dict[str, bytes] = {}
    loss = [s for s in [_series(train, "loss", "total")] if s]
    loss += [s for s in (_series(train, k, k.removeprefix("loss_")) for k in _keys(train, "loss_")) if s]
    if loss:
        plots["loss.png"] = plot_png(loss, "loss", "loss", log_y=_wide_range(loss))
    schedule = [
        s for s in (_series(train, "lambda", "λ (MSD bandwidth)"), _series(train, "t", "t (diffusion time)")) if s
    ]
    if schedule:
        plots["schedule.png"] = plot_png(schedule, "λ / t", "value", log_y=_wide_range(schedule))
    speed = [s for s in [_series(train, "it_per_s", "it/s")] if s]
    if speed:
        plots["speed.png"] = plot_png(speed, "iterations per second", "it/s")
    scores = score_series(records, summary)
    if scores:
        plots["scores.png"] = plot_png(scores, "oracle scores (turntable PSNR)", "dB")
    return plots


def _keys(records: Iterable[dict[str, Any]], prefix: str) -> list[str]:
    keys: list[str] = []
    for r in records:
        keys += [k for k in r if k.startswith(prefix) and k not in keys]
    return keys


def score_series(records: Sequence[dict[str, Any]], summary: dict[str, Any]) -> list[Series]:
    """Mode / blend PSNR against steps: the records that carry scores (``scores.jsonl``, logged
    during training at validation steps) plus the final scores of ``summary.json`` at its last step."""
    out = []
    final = summary.get("scores") or {}
    for key, label in (("mode_psnr", "mode PSNR (nearest variant)"), ("blend_psnr", "blend PSNR (variants' mean)")):
        s = _series([r for r in records if key in r], key, label) or Series(label, [], [])
        if isinstance(final.get(key), (int, float)) and isinstance(summary.get("steps"), int):
            step = float(summary["steps"])
            if step not in s.steps:
                s.steps.append(step)
                s.values.append(float(final[key]))
        if s.values:
            out.append(s)
    return out
