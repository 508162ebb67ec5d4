"""HTML reports: ``report.html`` in a run folder, ``index.html`` at a batch root.

A run's page shows the turntable (the video, plus still frames as PNG for browsers without H.264),
the validation renders over time, plots of the training curves from ``metrics.jsonl`` (loss, lambda
or t, it/s, and the oracle's scores), the ``summary.json`` table and links to the mesh files. A batch
root's page has one card per entry and the table of ``batch_summary*.json``.

Pages work from the file system with no network: every link is relative, CSS is inline, plots and
stills are PNGs written next to the page (``report/``). Everything is written atomically; the page
itself last, so a page never points at a file that is not there yet.

The pages are built from ``msd3d.report_inputs`` (reading the run folder), ``msd3d.report_plots``
(the training curves) and ``msd3d.report_html`` (CSS, tables, the page frame); this module writes
them and re-exports those modules' public names.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from msd3d.atomic_io import atomic_write_bytes, atomic_write_text
from msd3d.errors import Msd3dError
from msd3d.report_html import CSS, _esc, _fmt, _href, _page, _table  # noqa: F401 (CSS: re-exported)
from msd3d.report_inputs import (  # noqa: F401 (MESH_SUFFIXES, STILLS: re-exported)
    MESH_SUFFIXES,
    STILLS,
    _mesh_files,
    _read_json,
    _unfinished_header,
    _video_path,
    read_metrics,
    turntable_stills,
)
from msd3d.report_plots import Series, plot_png, score_series, training_plots  # noqa: F401 (the others: re-exported)

__all__ = ["REPORT_NAME", "INDEX_NAME", "ASSET_DIR", "write_run_report", "write_batch_index", "write_report"]

REPORT_NAME = "report.html"
INDEX_NAME = "index.html"
SCORES_NAME = "scores.jsonl"
"""Scores logged during training (``msd3d.workflows.text_to_3d.ScoreLogger``), one line per validation step."""
ASSET_DIR = "report"
"""Folder next to the page for its plots and still frames."""


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


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
