"""Turn a trained run into files people use: the mesh, the turntable video, the scores.

Used at the end of ``generate`` and by the ``export`` and ``render`` commands; never loads a
diffusion model (scores come from the prior the trainer already holds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import trimesh

from msd3d.config import RunConfig, load_config
from msd3d.export.mesh import MeshExportConfig, export_mesh_files, extract_mesh
from msd3d.export.video import VideoConfig, render_turntable, write_video
from msd3d.render.cameras import Cameras
from msd3d.render.volume import VolumeRenderer
from msd3d.run_dir import RunDir, load_checkpoint
from msd3d.scene_builder import build_renderer
from msd3d.errors import CheckpointError


def load_trained_renderer(run_dir: Path, device: torch.device | str = "cpu") -> tuple[RunConfig, VolumeRenderer, int]:
    """The run's config, its renderer with the last checkpoint's weights (eval mode), and that step."""
    run = RunDir(Path(run_dir))
    state = load_checkpoint(run, map_location=device)  # checks folder / checkpoint first
    if not run.config.is_file():
        raise CheckpointError(f"{str(run.root)!r} has a checkpoint but no config.yaml; it was not written by msd3d generate")
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
    score: Callable[[trimesh.Trimesh], dict[str, Any] | None] | None = None,
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


def write_turntable(
    renderer: VolumeRenderer, config: VideoConfig, path: Path, shading: str = "albedo", show_progress: bool = True
) -> dict[str, Any]:
    frames = render_turntable(turntable_render_fn(renderer, shading), config, show_progress=show_progress)
    write_video(frames, path, fps=config.fps, quality=config.quality)
    return {"file": str(path), "frames": int(len(frames)), "size": [int(frames.shape[1]), int(frames.shape[2])]}
