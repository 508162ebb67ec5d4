"""HTML reports: ``report.html`` in a run folder, ``index.html`` at a batch root.

A run's page shows the turntable (the video, plus still frames as PNG for browsers without H.264),
the validation renders over time, plots of the training curves from ``metrics.jsonl`` (loss, lambda
or t, it/s, and the oracle's scores), the ``summary.json`` table and links to the mesh files. A batch
root's page has one card per entry and the table of ``batch_summary*.json``.

Pages work from the file system with no network: every link is relative, CSS is inline, plots and
stills are PNGs written next to the page (``report/``). Everything is written atomically; the page
itself last, so a page never points at a file that is not there yet.
"""

from __future__ import annotations

import html
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from msd3d.atomic_io import atomic_write_bytes, atomic_write_text
from msd3d.errors import Msd3dError

__all__ = ["REPORT_NAME", "INDEX_NAME", "ASSET_DIR", "write_run_report", "write_batch_index", "write_report"]

REPORT_NAME = "report.html"
INDEX_NAME = "index.html"
SCORES_NAME = "scores.jsonl"
"""Scores logged during training (``msd3d.workflows.text_to_3d.ScoreLogger``), one line per validation step."""
ASSET_DIR = "report"
"""Folder next to the page for its plots and still frames."""

STILLS = 4
"""Still frames taken from the turntable (evenly spaced in azimuth)."""

MESH_SUFFIXES = (".glb", ".obj", ".ply", ".mtl")

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
main{max-width:1080px;margin:0 auto;padding:20px 24px 40px}
h1{font-size:1.5rem;margin:0 0 2px}
h2{font-size:1.1rem;margin:22px 0 10px;border-bottom:1px solid #d9dde4;padding-bottom:4px}
.sub{color:#5b6475;margin:0 0 10px}
.row{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
.panel{background:#fff;border:1px solid #d9dde4;border-radius:8px;padding:10px}
video,img.pix{image-rendering:pixelated}
video{width:288px;height:288px;background:#fff;display:block}
.stills{display:flex;gap:4px;margin-top:6px}.stills img{width:69px;height:69px;border:1px solid #eceff3}
.turntable{width:288px;height:288px;display:block}
.plots img{width:100%;max-width:512px;height:auto}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(380px,1fr));gap:12px}
.val{display:grid;grid-template-columns:repeat(auto-fill,minmax(400px,1fr));gap:12px}
.val figure{margin:0}.val img{width:100%;height:auto;border:1px solid #eceff3}
figcaption{font-size:.85rem;color:#5b6475;max-width:288px;margin-top:4px}
.val figcaption{max-width:none}
table{border-collapse:collapse;font-size:.9rem;background:#fff}
td,th{border:1px solid #d9dde4;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.big{font-size:1.25rem;font-weight:600}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:14px;align-items:start}
.noimg{aspect-ratio:1;display:flex;align-items:center;justify-content:center;background:#eef1f5;color:#5b6475}
.card{background:#fff;border:1px solid #d9dde4;border-radius:8px;padding:10px}
.card img{width:100%;height:auto;background:#fff;border:1px solid #eceff3}
.card h3{font-size:1rem;margin:6px 0 4px}
.ok{color:#1a7f37}.failed{color:#c62828}.other{color:#8a6d00}
a{color:#0b57d0}
""".strip()


# ----------------------------------------------------------------------------------------------
# small helpers


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _href(path: Path, base: Path) -> str:
    """A relative URL from folder ``base`` to ``path`` (forward slashes, each part escaped)."""
    rel = os.path.relpath(path.resolve(), base.resolve())
    from urllib.parse import quote

    return quote(Path(rel).as_posix())


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}".replace(",", " ")
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.{digits}g}"
    return str(value)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl``; a line cut short by a crash is skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), (int, float)):
            records.append(record)
    return records


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------
# plots


@dataclass
class Series:
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


# ----------------------------------------------------------------------------------------------
# run report


def _summary_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    scores = summary.get("scores") or {}
    rows = [
        ("prompt", summary.get("prompt")),
        ("guidance / prior", f"{summary.get('guidance', '–')} / {summary.get('prior', '–')}"),
        ("seed", summary.get("seed")),
        ("device", summary.get("device")),
        ("steps", summary.get("steps")),
        ("training time (s)", summary.get("train_seconds")),
        ("it/s (last session)", summary.get("it_per_s")),
        ("skipped non-finite steps", summary.get("nonfinite_steps")),
        ("denoiser calls (last session)", summary.get("denoiser_calls_this_session")),
        ("finishing time (s)", summary.get("finish_seconds")),
    ]
    if scores:
        rows += [
            ("oracle family / nearest variant", f"{scores.get('family', '–')} / {scores.get('nearest_variant', '–')}"),
            ("mode PSNR (dB)", scores.get("mode_psnr")),
            ("blend PSNR (dB)", scores.get("blend_psnr")),
            ("mode − blend (dB)", scores.get("mode_minus_blend_db")),
        ]
        for name, value in (scores.get("variant_psnr") or {}).items():
            rows.append((f"PSNR to variant {name} (dB)", value))
    mesh = summary.get("mesh") or {}
    if mesh:
        rows.append(("mesh vertices / faces", f"{_fmt(mesh.get('vertices'))} / {_fmt(mesh.get('faces'))}"))
    video = summary.get("video") or {}
    if video:
        size = video.get("size") or ["?", "?"]
        rows.append(("turntable", f"{_fmt(video.get('frames'))} frames, {size[1]}×{size[0]} px"))
    return [(k, _fmt(v)) for k, v in rows if v is not None]


def _table(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(
        f"<tr><th>{_esc(k)}</th><td{' class=num' if _numeric(v) else ''}>{_esc(v)}</td></tr>" for k, v in rows
    )
    return f"<table>{body}</table>"


def _numeric(text: str) -> bool:
    return bool(text) and text.replace(" ", "").replace(".", "", 1).replace("-", "", 1).replace("e", "", 1).isdigit()


def _video_path(run_dir: Path, summary: dict[str, Any]) -> Path | None:
    candidates = []
    recorded = (summary.get("video") or {}).get("file")
    if recorded:
        candidates.append(run_dir / Path(recorded).name)
    candidates += [run_dir / "turntable.mp4", run_dir / "turntable.gif"]
    return next((p for p in candidates if p.is_file()), None)


def turntable_stills(video: Path, count: int = STILLS) -> list[np.ndarray]:
    """``count`` frames evenly spaced through the turntable video (uint8 (H, W, 3) each)."""
    from msd3d.export.video import read_video_frames

    frames = read_video_frames(video)
    if len(frames) == 0:
        return []
    index = sorted({int(i * len(frames) / count) for i in range(count)})
    return [frames[i] for i in index]


def _mesh_files(run_dir: Path, summary: dict[str, Any]) -> list[Path]:
    recorded = [run_dir / Path(f).name for f in (summary.get("mesh") or {}).get("files", [])]
    found = sorted(p for p in run_dir.glob("mesh.*") if p.suffix in MESH_SUFFIXES)
    files = [p for p in recorded if p.is_file()] + [p for p in found if p not in recorded]
    return files


def _unfinished_header(run_dir: Path, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Prompt, guidance and prior from config.yaml, steps so far from the metrics."""
    header: dict[str, Any] = {}
    try:
        from omegaconf import OmegaConf

        config = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
        header = {
            "prompt": config.get("prompt"),
            "guidance": (config.get("guidance") or {}).get("name"),
            "prior": (config.get("prior") or {}).get("name"),
        }
    except Exception:  # no or unreadable config: the page still shows the curves
        pass
    steps = [int(r["step"]) + 1 for r in records if "loss" in r]
    header["steps"] = max(steps) if steps else None
    return header


def write_run_report(run_dir: str | os.PathLike[str]) -> Path:
    """Write ``RUN_DIR/report.html`` (and its plots and stills under ``RUN_DIR/report/``); returns the page."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise Msd3dError(f"run directory {str(run_dir)!r} does not exist; pass a folder written by msd3d generate")
    summary = _read_json(run_dir / "summary.json") or {}
    records = read_metrics(run_dir / "metrics.jsonl") + read_metrics(run_dir / SCORES_NAME)
    if not summary and not records:
        raise Msd3dError(
            f"{str(run_dir)!r} has neither summary.json nor metrics.jsonl; "
            "pass a run directory written by msd3d generate"
        )
    if not summary:  # not finished (yet): what the run is, from its config and metrics
        summary_like = _unfinished_header(run_dir, records)
    else:
        summary_like = summary
    assets = run_dir / ASSET_DIR
    assets.mkdir(exist_ok=True)

    plots = training_plots(records, summary)
    for name, data in plots.items():
        atomic_write_bytes(assets / name, data)

    video = _video_path(run_dir, summary)
    stills: list[Path] = []
    if video is not None:
        for i, frame in enumerate(turntable_stills(video)):
            stills.append(atomic_write_bytes(assets / f"turntable_{i:02d}.png", _png_bytes(frame)))
    for old in assets.glob("turntable_*.png"):  # stills of an earlier, longer video
        if old not in stills:
            old.unlink()

    validation = sorted((run_dir / "validation").glob("step_*.png"))
    meshes = _mesh_files(run_dir, summary)

    title = summary_like.get("prompt") or run_dir.name
    method = f"{summary_like.get('guidance', '?')} on the {summary_like.get('prior', '?')} prior"
    scores = summary.get("scores") or {}
    headline = [_esc(method), f"{_esc(_fmt(summary_like.get('steps')))} steps"]
    if isinstance(scores.get("mode_psnr"), (int, float)):
        headline.append(f"<b>mode PSNR {scores['mode_psnr']:.2f} dB</b>")
    if isinstance(scores.get("blend_psnr"), (int, float)):
        headline.append(f"blend PSNR {scores['blend_psnr']:.2f} dB")
    headline.append(f"run folder <code>{_esc(run_dir.name)}</code>")
    parts = [f"<h1>{_esc(title)}</h1>", f"<p class=sub>{' · '.join(headline)}</p>", "<div class=row>"]

    # left: the turntable (video, or GIF) with its still frames below
    parts.append("<div class=panel>")
    if video is not None:
        poster = f" poster='{_href(stills[0], run_dir)}'" if stills else ""
        if video.suffix == ".gif":
            parts.append(f"<img class='pix turntable' src='{_href(video, run_dir)}' alt='turntable'>")
        else:
            parts.append(
                f"<video class=pix src='{_href(video, run_dir)}'{poster} autoplay loop muted playsinline "
                "title='turntable (right-click for controls)'>"
                "</video>"
            )
        if stills:
            imgs = "".join(
                f"<img class=pix src='{_href(p, run_dir)}' alt='turntable frame {i + 1}'>" for i, p in enumerate(stills)
            )
            parts.append(f"<div class=stills>{imgs}</div>")
        parts.append(
            f"<figcaption>turntable (<a href='{_href(video, run_dir)}'>{_esc(video.name)}</a>); "
            "still frames from the front, every quarter turn</figcaption>"
        )
    else:
        parts.append(
            "<p>No turntable video in this run folder (export.video was off, or the run has not finished).</p>"
        )
    parts.append("</div>")

    # right: the summary table and the files
    parts.append("<div>")
    parts.append(_table(_summary_rows(summary)) if summary else "<p>No summary.json yet: the run has not finished.</p>")
    parts.append("<h2>Files</h2><ul>")
    for path in meshes:
        size_kb = path.stat().st_size / 1024
        parts.append(f"<li><a href='{_href(path, run_dir)}'>{_esc(path.name)}</a> ({size_kb:,.0f} kB)</li>")
    for name in ("summary.json", "metrics.jsonl", SCORES_NAME, "config.yaml"):
        if (run_dir / name).is_file():
            parts.append(f"<li><a href='{_href(run_dir / name, run_dir)}'>{_esc(name)}</a></li>")
    parts.append("</ul></div></div>")

    if plots:
        parts.append("<h2>Training curves</h2><div class=plots>")
        for name in plots:
            parts.append(f"<div class=panel><img src='{ASSET_DIR}/{name}' alt='{_esc(name[:-4])} against steps'></div>")
        parts.append("</div>")

    if validation:
        parts.append("<h2>Validation renders</h2><div class=val>")
        for path in reversed(validation):  # newest first
            step = path.stem.removeprefix("step_").lstrip("0") or "0"
            parts.append(
                f"<figure><img class=pix src='{_href(path, run_dir)}' alt='validation at step {step}'>"
                f"<figcaption>step {_esc(step)}: albedo (top), normals (bottom)</figcaption></figure>"
            )
        parts.append("</div>")

    page = run_dir / REPORT_NAME
    atomic_write_text(page, _page(f"msd3d · {title}", "".join(parts)))
    return page


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width, initial-scale=1'>"
        f"<title>{_esc(title)}</title><style>{CSS}</style></head>"
        f"<body><main>{body}<p class=sub style='margin-top:28px'>"
        "written by msd3d; regenerate with <code>msd3d report</code></p>"
        "</main></body></html>\n"
    )


# ----------------------------------------------------------------------------------------------
# batch index


def _batch_documents(root: Path) -> list[dict[str, Any]]:
    docs = []
    for path in sorted(root.glob("batch_summary*.json")):
        doc = _read_json(path)
        if doc and isinstance(doc.get("entries"), list):
            docs.append(doc)
    return docs


def _entry_dir(root: Path, entry: dict[str, Any]) -> Path | None:
    value = entry.get("run_dir")
    if not value:
        return None
    path = Path(value)
    for candidate in ([path] if path.is_absolute() else [root / path, path, root / path.name]):
        if candidate.is_dir():
            return candidate
    return None


def _report_is_stale(run_dir: Path) -> bool:
    """The run has results and no report, or results newer than its report."""
    sources = [p for p in (run_dir / "summary.json", run_dir / "metrics.jsonl") if p.is_file()]
    if not sources:
        return False
    page = run_dir / REPORT_NAME
    return not page.is_file() or page.stat().st_mtime < max(p.stat().st_mtime for p in sources)


def write_batch_index(
    root: str | os.PathLike[str], run_reports: bool = True, on_entry: Callable[[], None] | None = None
) -> Path:
    """Write ``ROOT/index.html`` from the batch summaries there (every shard's); with ``run_reports``
    also each entry's ``report.html`` first where it is missing or older than the run's results.
    Returns the page."""
    root = Path(root)
    docs = _batch_documents(root)
    if not docs:
        raise Msd3dError(f"no batch_summary.json in {str(root)!r}; pass a batch root written by msd3d batch")
    entries = sorted((e for d in docs for e in d["entries"]), key=lambda e: (e.get("index", 0), str(e.get("prompt"))))

    cards, rows = [], []
    for entry in entries:
        run_dir = _entry_dir(root, entry)
        report = run_dir / REPORT_NAME if run_dir else None
        if run_dir is not None and run_reports and _report_is_stale(run_dir):
            report = write_run_report(run_dir)
        if on_entry is not None:
            on_entry()
        status = str(entry.get("status", "?"))
        css = status if status in ("ok", "failed") else "other"
        thumb = None
        if run_dir is not None:
            stills = sorted((run_dir / ASSET_DIR).glob("turntable_*.png"))
            validation = sorted((run_dir / "validation").glob("step_*.png"))
            thumb = stills[0] if stills else (validation[-1] if validation else None)
        title = _esc(entry.get("prompt", "?"))
        link = report if report is not None and report.is_file() else None
        card = ["<div class=card>"]
        if thumb is not None:
            img = f"<img class=pix src='{_href(thumb, root)}' alt='{title}'>"
            card.append(f"<a href='{_href(link, root)}'>{img}</a>" if link else img)
        else:
            card.append("<div class=noimg>no render</div>")
        card.append(f"<h3>{f'<a href={chr(39)}{_href(link, root)}{chr(39)}>{title}</a>' if link else title}</h3>")
        card.append(f"<div>#{_esc(entry.get('index', '?'))} · seed {_esc(_fmt(entry.get('seed')))} · "
                    f"<span class={css}>{_esc(status)}</span></div>")
        if isinstance(entry.get("mode_psnr"), (int, float)):
            card.append(f"<div>mode PSNR {entry['mode_psnr']:.2f} dB · blend {_fmt(entry.get('blend_psnr'))} dB</div>")
        if entry.get("error"):
            card.append(f"<div class=failed>{_esc(entry['error'])}</div>")
        card.append("</div>")
        cards.append("".join(card))
        run_cell = (
            f"<a href='{_href(link, root)}'>{_esc(run_dir.name)}</a>"
            if link and run_dir
            else _esc(entry.get("run_dir") or "–")
        )
        rows.append(
            "<tr>"
            + "".join(
                f"<td class=num>{_esc(_fmt(entry.get(k)))}</td>"
                if k != "prompt"
                else f"<td>{_esc(entry.get(k, ''))}</td>"
                for k in ("index", "prompt", "seed")
            )
            + f"<td class={css}>{_esc(status)}</td>"
            + "".join(
                f"<td class=num>{_esc(_fmt(entry.get(k)))}</td>"
                for k in ("steps", "seconds", "mode_psnr", "blend_psnr")
            )
            + f"<td>{run_cell}</td><td>{_esc(entry.get('error') or '')}</td></tr>"
        )

    counts: dict[str, int] = {}
    for entry in entries:
        counts[str(entry.get("status"))] = counts.get(str(entry.get("status")), 0) + 1
    batch_file = next((d.get("batch_file") for d in docs if d.get("batch_file")), None)
    header = ["index", "prompt", "seed", "status", "steps", "seconds", "mode PSNR", "blend PSNR", "run", "error"]
    body = [
        f"<h1>Batch {_esc(Path(batch_file).name if batch_file else root.name)}</h1>",
        f"<p class=sub>{len(entries)} entries · "
        + " · ".join(f"{_esc(k)} {v}" for k, v in sorted(counts.items()))
        + "</p>",
        f"<div class=cards>{''.join(cards)}</div>",
        "<h2>Table</h2><table><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>" + "".join(rows) + "</table>",
        "<h2>Files</h2><ul>"
        + "".join(
            f"<li><a href='{_href(p, root)}'>{_esc(p.name)}</a></li>"
            for p in sorted([*root.glob("batch_summary*.json"), *root.glob("batch_summary*.csv")])
        )
        + "</ul>",
    ]
    page = root / INDEX_NAME
    atomic_write_text(page, _page(f"msd3d batch · {root.name}", "".join(body)))
    return page


def write_report(path: str | os.PathLike[str]) -> Path:
    """A run folder's ``report.html`` or a batch root's ``index.html``, whichever ``path`` is."""
    path = Path(path)
    if not path.is_dir():
        raise Msd3dError(f"{str(path)!r} is not a folder; pass a run directory or a batch root")
    if any(path.glob("batch_summary*.json")):
        return write_batch_index(path)
    return write_run_report(path)
