"""The layout of a run directory (:data:`RUN_LAYOUT`, also shown in README.md), and reading/writing
what lives in it.

Checkpoints are data, never code: they are loaded with ``torch.load(weights_only=True)``, which
only rebuilds tensors and plain Python values, so a crafted ``last.pt`` cannot run anything.
"""

from __future__ import annotations

import io
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from msd3d.atomic_io import (
    DISK_FULL_ERRNOS,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    json_safe,
    remove_orphaned_temp_files,
)
from msd3d.errors import CheckpointError, DiskFullError, Msd3dError
from msd3d.run_lock import LOCK_NAME, RunLock

#: The one description of a run directory; README.md's "Output layout" shows it verbatim (tests/test_docs.py).
RUN_LAYOUT = """\
outputs/<prompt-slug>-<guidance>-<prior>-<seed>/
  config.yaml          the fully resolved configuration (read by --resume, export, render)
  metrics.jsonl        one JSON line per logged step: loss terms, lambda / t, it/s, denoiser calls
  summary.json         steps, wall time, it/s, skipped steps, scores (oracle), mesh and video paths
  checkpoints/last.pt  field + background + optimiser + guidance + RNG state (written atomically)
  validation/          step_000500.png ... albedo (top) and normals (bottom) turntable views
  mesh.glb, mesh.obj   the exported mesh (formats from mesh.formats)
  turntable.mp4        the turntable video (camera framed from the object's extent: video.fill)
  scores.jsonl         oracle scores at each validation step before the last (oracle runs; final: summary.json)
  report.html, report/ the run's page (below) and its plots and still frames
  .msd3d.lock          held (flock) by the process working in the folder: pid, host, start time
"""


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

    @property
    def lock_file(self) -> Path:
        return self.root / LOCK_NAME

    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "checkpoints").mkdir(exist_ok=True)

    def lock(self) -> RunLock:
        """Create the folder and take its exclusive lock (a one-line ``RunLocked`` if another process has it)."""
        self.root.mkdir(parents=True, exist_ok=True)
        return RunLock(self.lock_file, what=f"run folder {str(self.root)!r}").acquire()

    def is_run(self) -> bool:
        """Whether the folder was written by msd3d (its lock file, a checkpoint, or config + metrics)."""
        return (
            self.lock_file.is_file()
            or self.checkpoint.is_file()
            or (self.config.is_file() and self.metrics.is_file())
        )

    def check_writable(self) -> None:
        """Refuse a folder that exists, holds files and is not an msd3d run: they would be overwritten."""
        if not self.root.exists():
            return
        if not self.root.is_dir():
            raise Msd3dError(f"{str(self.root)!r} is a file, not a folder; choose another run folder (--out / out:)")
        if any(self.root.iterdir()) and not self.is_run():
            raise Msd3dError(
                f"{str(self.root)!r} is not empty and is not an msd3d run folder; its files would be "
                "overwritten: choose a new or empty folder (--out / out:)"
            )

    def remove_orphans(self) -> list[Path]:
        """Delete temporary files left by a process killed mid-write (call with the lock held)."""
        removed: list[Path] = []
        for folder in (self.root, self.root / "checkpoints", self.validation):
            removed += remove_orphaned_temp_files(folder)
        return removed


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` through a temporary file, so an interrupt never leaves half a checkpoint.

    The state is serialised in memory and then written with a plain file write, so a full disk
    surfaces as ``OSError(ENOSPC)`` (a :class:`DiskFullError`) rather than torch's opaque
    "file write failed".
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        f.write(buffer.getbuffer())


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
        # weights_only: tensors and plain values only; a pickle that would import or call anything is refused
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"checkpoint {str(path)!r} was refused: it holds Python objects other than tensors and plain "
            "values, which could run code when loaded; use only checkpoints written by msd3d generate"
        ) from None
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

    def reset(self) -> None:
        """Start an empty log (a fresh run: lines of an earlier attempt that never checkpointed go)."""
        if self.path.is_file():
            atomic_write_text(self.path, "")

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(json_safe(record)) + "\n"
        try:
            with self.path.open("a") as f:
                f.write(line)
        except OSError as exc:
            if exc.errno in DISK_FULL_ERRNOS:
                raise DiskFullError(self.path) from None
            raise

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
