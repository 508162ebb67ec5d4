"""What a run's report page shows, read from the run folder: ``summary.json``, the metrics and score
records, the turntable video and its still frames, the mesh files, and ``config.yaml`` for a run
that has not finished."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

STILLS = 4
"""Still frames taken from the turntable (evenly spaced in azimuth)."""

MESH_SUFFIXES = (".glb", ".obj", ".ply", ".mtl")


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
