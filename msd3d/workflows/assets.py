"""Turn a trained run into files people use: the mesh, the turntable video, the scores.

Used at the end of ``generate`` and by the ``export`` and ``render`` commands; never loads a
diffusion model (scores come from the prior the trainer already holds).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from msd3d.config import RunConfig, load_config
from msd3d.errors import CheckpointError
from msd3d.export.mesh import MeshExportConfig, density_grid, export_mesh_files, extract_mesh
from msd3d.export.video import VideoConfig, render_turntable, turntable_cameras_for, write_video
from msd3d.render.cameras import Cameras, frame_points
from msd3d.render.volume import VolumeRenderer
from msd3d.run_dir import RunDir, load_checkpoint
from msd3d.scene_builder import build_renderer


def load_trained_renderer(run_dir: Path, device: torch.device | str = "cpu") -> tuple[RunConfig, VolumeRenderer, int]:
    """The run's config, its renderer with the last checkpoint's weights (eval mode), and that step."""
    run = RunDir(Path(run_dir))
    state = load_checkpoint(run, map_location=device)  # checks folder / checkpoint first
    if not run.config.is_file():
        raise CheckpointError(
            f"{str(run.root)!r} has a checkpoint but no config.yaml; it was not written by msd3d generate"
        )
    config = load_config(run.config)
    renderer = build_renderer(config)
    try:
        renderer.load_state_dict(state["field"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint in {str(run.root)!r} does not match its config.yaml ({str(exc).splitlines()[0]})"
        ) from None
    renderer.to(device).eval()
    return config, renderer, int(state["step"])


def write_mesh(
    renderer: VolumeRenderer,
    config: MeshExportConfig,
    out_dir: Path,
    stem: str = "mesh",
    score: Callable[[Any], dict[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """Extract and write the mesh in every configured format; returns paths, sizes, the iso-level
    used and, when ``score`` is given (e.g. ``prior.evaluate_geometry``) and returns scores,
    ``geometry``: the mesh's geometry scores."""
    mesh = extract_mesh(renderer.field, config)
    files = export_mesh_files(mesh, out_dir, stem=stem, formats=tuple(config.formats))
    info: dict[str, Any] = {
        "files": [str(f) for f in files],
        "vertices": int(len(mesh.vertices)),
        "faces": int(len(mesh.faces)),
        "threshold": float(mesh.metadata["msd3d"]["threshold"]),
        "fringe_optical_depth": float(mesh.metadata["msd3d"].get("fringe_optical_depth", 0.0)),
        "fringe_skin": float(mesh.metadata["msd3d"].get("fringe_skin", 0.0)),
    }
    geometry = score(mesh) if score is not None else None
    if geometry is not None:
        info["geometry"] = geometry
    return info


def turntable_render_fn(renderer: VolumeRenderer, shading: str = "albedo"):
    """``cameras -> {"rgb", "normals", "depth", "opacity"}`` images for the video writer."""

    @torch.no_grad()
    def render(cameras: Cameras) -> dict[str, torch.Tensor]:
        out = renderer.render_image(cameras.to(next(renderer.parameters()).device), shading=shading, with_normals=True)
        normals = out.normals if out.normals is not None else torch.zeros_like(out.rgb)
        return {"rgb": out.rgb, "normals": normals, "depth": out.depth, "opacity": out.opacity}

    return render


@torch.no_grad()
def occupied_points(field: Any, resolution: int = 64, min_component: float = 0.05) -> torch.Tensor:
    """Centres (P, 3) of the grid cells inside the object's visual hull seen along the three axes.

    The density grid is integrated along x, y and z into three orthographic opacity maps; a cell is
    kept when all three maps are at least half opaque where it projects. This follows what a camera
    sees (a soft, fuzzy field counts where it looks opaque), with no density threshold to tune.
    Connected pieces smaller than ``min_component`` of the largest are dropped, so a stray floater
    does not shrink the object in the video (thin parts attached to it, a stem, stay).
    Empty (0, 3) when nothing looks opaque.
    """
    from scipy import ndimage

    bound = float(field.bound)
    cell = 2.0 * bound / (resolution - 1)
    grid = torch.from_numpy(density_grid(field, resolution)).clamp_min(0.0)  # (X, Y, Z)
    opaque = [1.0 - torch.exp(-grid.sum(dim=axis) * cell) >= 0.5 for axis in range(3)]  # (Y,Z), (X,Z), (X,Y)
    hull = (opaque[0][None, :, :] & opaque[1][:, None, :] & opaque[2][:, :, None]).numpy()  # (X, Y, Z)
    labels, count = ndimage.label(hull, structure=np.ones((3, 3, 3), bool))
    if count > 1:
        sizes = np.bincount(labels.ravel())[1:]
        keep = np.flatnonzero(sizes >= min_component * sizes.max()) + 1
        hull = np.isin(labels, keep)
    return -bound + torch.from_numpy(np.argwhere(hull)).float() * cell


def frame_turntable(field: Any, config: VideoConfig) -> tuple[VideoConfig, tuple[float, float, float] | None]:
    """The turntable settings that frame the object: ``config`` with the distance from
    :func:`~msd3d.render.cameras.frame_points` and the target it circles. Unchanged (and target None,
    the origin) when ``config.fill`` is 0 or the field is empty."""
    if config.fill <= 0:
        return config, None
    points = occupied_points(field)
    if len(points) == 0:
        return config, None
    azimuths = turntable_cameras_for(dataclasses.replace(config, size=2)).azimuth
    distance, target = frame_points(points, config.elevation, config.fovy, config.fill, azimuths)
    return dataclasses.replace(config, distance=distance), target


def write_turntable(
    renderer: VolumeRenderer,
    config: VideoConfig,
    path: Path,
    shading: str = "albedo",
    show_progress: bool = True,
    progress: Any | None = None,
) -> dict[str, Any]:
    """Render the turntable (framed by ``config.fill``) and write it atomically to ``path``.

    ``progress``: a running :func:`msd3d.progress_bar.make_progress` display to show the frames in
    (default: a bar of its own when ``show_progress``)."""
    framed, target = frame_turntable(renderer.field, config)
    frames = render_turntable(
        turntable_render_fn(renderer, shading), framed, show_progress=show_progress, target=target, progress=progress
    )
    write_video(frames, path, fps=config.fps, quality=config.quality)
    return {
        "file": str(path),
        "frames": int(len(frames)),
        "size": [int(frames.shape[1]), int(frames.shape[2])],
        "distance": float(framed.distance),
        "target": list(target) if target is not None else [0.0, 0.0, 0.0],
    }
