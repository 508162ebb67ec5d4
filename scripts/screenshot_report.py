#!/usr/bin/env python
"""Open an msd3d report page in real headless Chromium and save a PNG screenshot.

    python scripts/screenshot_report.py outputs/a-red-mushroom-0              # -> outputs/a-red-mushroom-0/report.png
    python scripts/screenshot_report.py outputs/a-red-mushroom-0/report.html --out docs/images/report.png \\
        --width 1100 --height 1500 --scale 0.6 --colors 128

Checks what the unit tests cannot: that a browser renders the page from the file system (the
turntable, plots, stills and tables appear), with networking switched off as far as Chromium's
flags allow. Needs the ``chromium`` binary (Debian: ``apt-get install chromium``). The PNG can be
scaled down and palette-quantised (``--scale``, ``--colors``) to keep it small for the README.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--hide-scrollbars",
    "--mute-audio",
    "--autoplay-policy=no-user-gesture-required",
)


def find_browser(explicit: str | None) -> str:
    for name in ([explicit] if explicit else BROWSERS):
        path = shutil.which(name) if name else None
        if path:
            return path
    raise SystemExit(
        "error: no Chromium found (tried " + ", ".join([explicit] if explicit else BROWSERS) + "); "
        "install it (Debian/Ubuntu: apt-get install chromium) or pass --browser PATH"
    )


def resolve_page(target: Path) -> Path:
    """A report page: the file itself, or RUN_DIR/report.html, or BATCH_ROOT/index.html."""
    if target.is_dir():
        for name in ("index.html", "report.html"):
            if (target / name).is_file():
                return target / name
        raise SystemExit(f"error: no report.html or index.html in {target}; write one with: msd3d report {target}")
    if not target.is_file():
        raise SystemExit(f"error: {target} does not exist; pass a report page, a run directory or a batch root")
    return target


def screenshot(
    page: Path, out: Path, width: int, height: int, browser: str, wait_ms: int = 3000, timeout_s: float = 120.0
) -> None:
    """Render ``page`` at ``width`` x ``height`` CSS pixels into the PNG ``out`` (full size)."""
    with tempfile.TemporaryDirectory(prefix="msd3d-chromium-") as tmp:
        shot = Path(tmp) / "shot.png"
        command = [
            browser,
            *FLAGS,
            f"--user-data-dir={Path(tmp) / 'profile'}",
            f"--window-size={width},{height}",
            f"--virtual-time-budget={wait_ms}",
            f"--screenshot={shot}",
            page.resolve().as_uri(),
        ]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"error: {Path(browser).name} did not finish within {timeout_s:.0f} s") from None
        if result.returncode != 0 or not shot.is_file():
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise SystemExit(f"error: {Path(browser).name} exited with {result.returncode} and no screenshot: {last}")
        shutil.move(str(shot), out)


def shrink(path: Path, scale: float, colors: int) -> None:
    """Scale the PNG by ``scale`` and reduce it to ``colors`` palette colours (0 = keep RGB)."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        if scale != 1.0:
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.LANCZOS)
        if colors:
            image = image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        image.save(path, format="PNG", optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", type=Path, help="report.html / index.html, a run directory or a batch root")
    parser.add_argument("--out", type=Path, default=None, help="PNG to write (default: next to the page, <page>.png)")
    parser.add_argument("--width", type=int, default=1100, help="window width, CSS pixels")
    parser.add_argument("--height", type=int, default=1500, help="window height, CSS pixels (what is captured)")
    parser.add_argument("--scale", type=float, default=1.0, help="scale the PNG by this factor afterwards")
    parser.add_argument("--colors", type=int, default=0, help="quantise to this many colours (0 = full RGB)")
    parser.add_argument("--wait-ms", type=int, default=3000, help="virtual time the page gets to load")
    parser.add_argument("--browser", default=None,
                        help="Chromium binary (default: the first of %s on PATH)" % ", ".join(BROWSERS))
    args = parser.parse_args(argv)

    page = resolve_page(args.target)
    out = args.out or page.with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    browser = find_browser(args.browser)
    partial = out.with_name(f".{out.name}.partial")
    try:
        screenshot(page, partial, args.width, args.height, browser, wait_ms=args.wait_ms)
        if args.scale != 1.0 or args.colors:
            shrink(partial, args.scale, args.colors)
        os.replace(partial, out)  # atomic: never half a PNG at ``out``
    finally:
        partial.unlink(missing_ok=True)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} kB) from {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
