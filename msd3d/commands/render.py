"""``msd3d render RUN_DIR``: render a turntable video of a trained run.

Reads the run's ``config.yaml`` and ``checkpoints/last.pt`` only (``load_trained_renderer``); never
loads a diffusion model. Every option defaults to the run's ``video`` section (120 frames at
256x256, 30 fps unless the run's config says otherwise).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def render(
    run_dir: Path = typer.Argument(..., help="A run directory written by msd3d generate."),
    frames: Optional[int] = typer.Option(None, help="Views in the full circle (default: the run's video.frames, 120)."),
    size: Optional[int] = typer.Option(None, help="Height = width of each panel in pixels (video.size)."),
    fps: Optional[int] = typer.Option(None, help="Frames per second (video.fps)."),
    fmt: Optional[str] = typer.Option(
        None, "--format", help="mp4 or gif (default: from --out's extension, else video.format)."
    ),
    elevation: Optional[float] = typer.Option(
        None, help="Camera elevation in degrees above the horizon (video.elevation)."
    ),
    distance: Optional[float] = typer.Option(
        None,
        help="Camera distance from the origin, metres (video.distance); "
        "default: framed from the object's extent (video.fill).",
    ),
    fovy: Optional[float] = typer.Option(None, help="Vertical field of view in degrees (video.fovy)."),
    panels: Optional[List[str]] = typer.Option(
        None, help="Side-by-side panels, left to right: rgb, normals, depth, opacity (comma list or repeated)."
    ),
    shading: str = typer.Option("albedo", help="albedo, lambertian, textureless or normal (the rgb panel)."),
    out: Optional[str] = typer.Option(
        None, metavar="PATH",
        help="Video file, or a folder (existing, or ending in /) for turntable.<format> in it "
        "(default: RUN_DIR/turntable.<format>).",
    ),
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu, cuda or cuda:N."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Render a turntable video (MP4 or GIF) of RUN_DIR, optionally with normals / depth panels."""
    from msd3d.commands import user_errors

    with user_errors():
        import dataclasses
        import time

        from msd3d.commands.export import parse_choices
        from msd3d.device import resolve_device
        from msd3d.errors import Msd3dError
        from msd3d.export.video import PANELS, VIDEO_FORMATS
        from msd3d.render.shading import SHADING_MODES
        from msd3d.workflows.assets import load_trained_renderer, write_turntable

        t0 = time.perf_counter()
        if shading not in SHADING_MODES:
            raise Msd3dError(f"--shading {shading!r} is not one of {', '.join(SHADING_MODES)}")
        chosen_panels = parse_choices(panels, PANELS, "--panels")
        if fmt is not None:
            fmt = fmt.lower().lstrip(".")
            if fmt not in VIDEO_FORMATS:
                raise Msd3dError(f"--format {fmt!r} is not one of {', '.join(VIDEO_FORMATS)}")
        # a folder (one that exists, or `clips/`): the default file name inside it
        folder = out is not None and (out.endswith(("/", "\\")) or Path(out).is_dir())
        out = None if out is None else Path(out) / "turntable" if folder else Path(out)
        if out is not None and out.suffix:
            suffix = out.suffix.lower().lstrip(".")
            if suffix not in VIDEO_FORMATS:
                raise Msd3dError(f"--out {str(out)!r}: the extension must be .mp4 or .gif")
            if fmt is not None and fmt != suffix:
                raise Msd3dError(f"--format {fmt} does not match --out {str(out)!r}; drop one of them")
            fmt = suffix

        config, renderer, step = load_trained_renderer(run_dir, resolve_device(device))
        changes = {
            "frames": frames, "size": size, "fps": fps, "format": fmt, "elevation": elevation,
            "distance": distance, "fill": 0.0 if distance is not None else None, "fovy": fovy,
            "panels": tuple(chosen_panels) if chosen_panels else None,
        }
        video = dataclasses.replace(config.video, **{k: v for k, v in changes.items() if v is not None})
        try:
            video.validate()
        except ValueError as exc:
            raise Msd3dError(f"{exc} (check the matching render option)") from None
        if out is None:
            path = Path(run_dir) / f"turntable.{video.format}"
        elif not out.suffix:
            path = out.with_name(f"{out.name}.{video.format}")
        else:
            path = out

        from msd3d.train import interrupt_on_signals

        with interrupt_on_signals(lambda name: f"{name} received: rendering stopped, {path} was not changed"):
            info = write_turntable(renderer, video, path, shading=shading, show_progress=not quiet)
        height, width = info["size"]
        typer.echo(
            f"wrote {path}: {info['frames']} frames, {width}x{height} ({', '.join(video.panels)}, {shading}), "
            f"{video.fps} fps; step {step}; {time.perf_counter() - t0:.1f} s"
        )
