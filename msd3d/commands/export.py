"""``msd3d export RUN_DIR``: re-extract the mesh of a trained run with other settings.

Reads the run's ``config.yaml`` and ``checkpoints/last.pt`` only (``load_trained_renderer``); never
loads a diffusion model. Every option defaults to the run's ``mesh`` section.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import typer


def parse_choices(values: Optional[Sequence[str]], allowed: Sequence[str], option: str) -> list[str] | None:
    """``["obj,glb", "ply"]`` (repeatable and/or comma lists) → ``["obj", "glb", "ply"]``, checked
    against ``allowed``; None when the option was not given. Raises a one-line ``Msd3dError``."""
    from msd3d.errors import Msd3dError

    if not values:
        return None
    items: list[str] = []
    for value in values:
        for part in value.split(","):
            part = part.strip().lower().lstrip(".")
            if not part:
                continue
            if part not in allowed:
                raise Msd3dError(f"{option} {part!r} is not one of {', '.join(allowed)}")
            if part not in items:
                items.append(part)
    if not items:
        raise Msd3dError(f"{option} needs at least one of {', '.join(allowed)}")
    return items


def _threshold(text: str | None):
    from msd3d.errors import Msd3dError

    if text is None:
        return None
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise Msd3dError(f'--threshold must be "auto" or a positive number, got {text!r}') from None
    if not value > 0:
        raise Msd3dError(f"--threshold must be positive (densities are >= 0), got {text}")
    return value


def _size(path: Path) -> str:
    size = path.stat().st_size
    return f"{size / 1e6:.2f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"


def export(
    run_dir: Path = typer.Argument(..., help="A run directory written by msd3d generate."),
    formats: Optional[List[str]] = typer.Option(
        None,
        "--format",
        "-f",
        help="obj, glb and/or ply; repeat or use a comma list (default: the run's mesh.formats).",
    ),
    resolution: Optional[int] = typer.Option(None, help="Marching-cubes grid points per axis (mesh.resolution)."),
    threshold: Optional[str] = typer.Option(
        None, help='Density iso-level: "auto" or a positive number (mesh.threshold).'
    ),
    fringe_transmittance: Optional[float] = typer.Option(
        None,
        help="With --threshold auto: carve points light reaches with this transmittance; 1 = off "
        "(mesh.fringe_transmittance).",
    ),
    fringe_skin: Optional[float] = typer.Option(
        None,
        help="With --threshold auto: also carve points within this density-weighted distance (world units) "
        "of empty space; 0 = off (mesh.fringe_skin).",
    ),
    texture: Optional[bool] = typer.Option(
        None, "--texture/--no-texture", help="Bake a UV texture (xatlas) instead of vertex colours (mesh.texture)."
    ),
    texture_size: Optional[int] = typer.Option(None, help="Texture width = height in pixels (mesh.texture_size)."),
    decimate: Optional[int] = typer.Option(
        None, "--decimate", metavar="FACES", help="Decimate to at most FACES faces; 0 = off."
    ),
    keep_components: Optional[int] = typer.Option(
        None, help="Keep the N largest connected components; 0 = all (mesh.keep_components)."
    ),
    out: Optional[Path] = typer.Option(None, help="Output folder (default: RUN_DIR)."),
    stem: str = typer.Option("mesh", help="File name without extension: <out>/<stem>.<format>."),
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu, cuda or cuda:N."),
) -> None:
    """Export RUN_DIR's mesh as OBJ / GLB / PLY (1 unit = 1 m, centred at the origin; GLB is +y up)."""
    from msd3d.commands import user_errors

    with user_errors():
        import dataclasses
        import time

        from msd3d.device import resolve_device
        from msd3d.errors import Msd3dError
        from msd3d.export.mesh import MESH_FORMATS, export_mesh_files, extract_mesh
        from msd3d.workflows.assets import load_trained_renderer

        t0 = time.perf_counter()
        chosen = parse_choices(formats, MESH_FORMATS, "--format")
        if out is not None and out.exists() and not out.is_dir():
            raise Msd3dError(
                f"--out {str(out)!r} is a file; pass a folder (the mesh is written as <out>/<stem>.<format>)"
            )
        if not stem or "/" in stem or "\\" in stem or stem in (".", ".."):
            raise Msd3dError(f"--stem {stem!r} must be a plain file name without folders, e.g. mesh")
        changes = {
            "formats": tuple(chosen) if chosen else None,
            "resolution": resolution,
            "threshold": _threshold(threshold),
            "fringe_transmittance": fringe_transmittance,
            "fringe_skin": fringe_skin,
            "texture": texture,
            "texture_size": texture_size,
            "decimate_faces": decimate,
            "keep_components": keep_components,
        }
        config, renderer, step = load_trained_renderer(run_dir, resolve_device(device))
        mesh_config = dataclasses.replace(config.mesh, **{k: v for k, v in changes.items() if v is not None})
        try:
            mesh_config.validate()
        except ValueError as exc:
            raise Msd3dError(f"{exc} (check the matching export option)") from None

        from msd3d.train import interrupt_on_signals

        with interrupt_on_signals(lambda name: f"{name} received: export stopped, no mesh file was changed"):
            mesh = extract_mesh(renderer.field, mesh_config)
            files = export_mesh_files(mesh, out if out is not None else run_dir, stem=stem, formats=mesh_config.formats)
        info = mesh.metadata.get("msd3d", {})
        for path in files:
            typer.echo(f"wrote {path} ({_size(path)})")
        kind = f"{mesh_config.texture_size}px texture" if mesh_config.texture else "vertex colours"
        level = info.get("threshold")
        typer.echo(
            f"{len(mesh.vertices)} vertices, {len(mesh.faces)} faces, {kind}; "
            f"step {step}, grid {mesh_config.resolution}^3, threshold "
            f"{level:.4g}{' (auto)' if mesh_config.threshold == 'auto' else ''}"
            f"{', see-through fringe carved' if info.get('fringe_optical_depth') or info.get('fringe_skin') else ''}; "
            f"{time.perf_counter() - t0:.1f} s"
        )
        if config.prior.name == "oracle":  # the catalogue knows the true shapes: score the mesh against them
            from msd3d.catalogue.scoring import format_geometry_scores, score_mesh_against_family

            typer.echo(format_geometry_scores(score_mesh_against_family(mesh, config.prompt)))
