"""HTML building blocks of the report pages: the inline CSS, escaping, relative links, number
formatting, key/value tables and the page frame (``msd3d.report`` writes the pages)."""

from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import Any, Sequence

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


def _table(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(
        f"<tr><th>{_esc(k)}</th><td{' class=num' if _numeric(v) else ''}>{_esc(v)}</td></tr>" for k, v in rows
    )
    return f"<table>{body}</table>"


def _numeric(text: str) -> bool:
    return bool(text) and text.replace(" ", "").replace(".", "", 1).replace("-", "", 1).replace("e", "", 1).isdigit()


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width, initial-scale=1'>"
        f"<title>{_esc(title)}</title><style>{CSS}</style></head>"
        f"<body><main>{body}<p class=sub style='margin-top:28px'>"
        "written by msd3d; regenerate with <code>msd3d report</code></p>"
        "</main></body></html>\n"
    )
