"""The layout of a run directory, and reading/writing what lives in it.

```
outputs/<prompt-slug>-<guidance>-<prior>-<seed>/
  config.yaml          the resolved configuration (what --resume, export and render read)
  metrics.jsonl        one JSON object per logged step
  summary.json         final numbers: steps, wall time, it/s, skipped steps, scores, output paths
  checkpoints/last.pt  field + background + optimiser + RNG state (written atomically)
  validation/          step_000500.png ... validation renders
  mesh.obj (+ .mtl)    the exported mesh
  turntable.mp4        the turntable video
```
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from msd3d.errors import CheckpointError
from msd3d.export.atomic import atomic_path, atomic_write_json, atomic_write_text, json_safe


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoints" / "last.pt"

    @property
    def validation(self) -> Path:
        return self.root / "validation"

    def mesh(self, fmt: str = "obj") -> Path:
        return self.root / f"mesh.{fmt}"

    def video(self, fmt: str = "mp4") -> Path:
        return self.root / f"turntable.{fmt}"

    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "checkpoints").mkdir(exist_ok=True)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` through a temporary file, so an interrupt never leaves half a checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(run: RunDir, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The run's last checkpoint, or a one-line :class:`CheckpointError`."""
    path = run.checkpoint
    if not run.root.is_dir():
        raise CheckpointError(f"run directory {str(run.root)!r} does not exist; pass the folder `msd3d generate` wrote")
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint in {str(run.root)!r} (expected {path.relative_to(run.root)}); "
            "the run never reached its first checkpoint: start it again with msd3d generate"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # truncated/corrupt pickles raise many types
        raise CheckpointError(
            f"checkpoint {str(path)!r} is unreadable ({type(exc).__name__}); it is corrupt: "
            "restore it from a backup or rerun msd3d generate"
        ) from None
    if not isinstance(state, dict) or "field" not in state or "step" not in state:
        raise CheckpointError(f"checkpoint {str(path)!r} is not an msd3d checkpoint (missing field/step)")
    return state


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_json(path, data)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


class MetricsLog:
    """Appends one JSON line per logged step; on resume drops lines from steps not yet checkpointed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def truncate_after(self, step: int) -> None:
        """Keep only lines with ``step < step`` (those the resumed run will not write again)."""
        if not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", -1) < step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
        atomic_write_text(self.path, "".join(k + "\n" for k in kept))

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(json_safe(record)) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
