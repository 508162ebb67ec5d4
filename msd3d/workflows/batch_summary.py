"""The results of a batch: one :class:`EntryResult` per entry, and the summary files
(``batch_summary.json`` and ``.csv``; ``batch_summary.shard-<i>-of-<n>.*`` for a shard)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from msd3d.atomic_io import atomic_write_text

SUMMARY_COLUMNS = (
    "index", "prompt", "seed", "status", "seconds", "steps", "train_seconds",
    "mode_psnr", "blend_psnr", "run_dir", "mesh", "video", "error",
)
"""Columns of ``batch_summary.csv`` (``mesh`` joins several files with ``;``)."""


def summary_stem(shard: tuple[int, int] | None) -> str:
    """``batch_summary``, or ``batch_summary.shard-<i>-of-<n>`` so parallel shards never overwrite each other."""
    return "batch_summary" if shard is None else f"batch_summary.shard-{shard[0]}-of-{shard[1]}"


@dataclass
class EntryResult:
    """One row of the batch summary."""

    index: int
    prompt: str
    status: str
    """"ok", "failed", "skipped"; after an interrupt also "interrupted" and "not run"."""
    seed: int | None = None
    seconds: float = 0.0
    """Wall time spent on this entry by this invocation (training + scoring + export)."""
    steps: int | None = None
    train_seconds: float | None = None
    """Training time of the run over all its sessions (summary.json)."""
    scores: dict[str, Any] | None = None
    run_dir: str | None = None
    mesh: list[str] = field(default_factory=list)
    video: str | None = None
    error: str | None = None

    def row(self) -> dict[str, Any]:
        scores = self.scores or {}
        return {
            "index": self.index,
            "prompt": self.prompt,
            "seed": self.seed,
            "status": self.status,
            "seconds": round(self.seconds, 3),
            "steps": self.steps,
            "train_seconds": None if self.train_seconds is None else round(self.train_seconds, 3),
            "mode_psnr": scores.get("mode_psnr"),
            "blend_psnr": scores.get("blend_psnr"),
            "run_dir": self.run_dir,
            "mesh": list(self.mesh),
            "video": self.video,
            "error": self.error,
            "scores": self.scores,
        }


@dataclass
class BatchResult:
    entries: list[EntryResult]
    seconds: float
    interrupted: bool = False

    @property
    def failed(self) -> int:
        return sum(e.status == "failed" for e in self.entries)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.entries:
            out[e.status] = out.get(e.status, 0) + 1
        return out


# ------------------------------------------------------------------------------------------------
# the summary files


def write_batch_summary(
    result: BatchResult | Iterable[EntryResult],
    root: str | Path,
    stem: str = "batch_summary",
    meta: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``<root>/<stem>.json`` (meta + counts + one object per entry) and ``<root>/<stem>.csv``
    (``SUMMARY_COLUMNS``), each atomically; returns both paths."""
    from msd3d.run_dir import write_json

    root = Path(root)
    entries = result.entries if isinstance(result, BatchResult) else list(result)
    rows = [e.row() for e in entries]
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.status] = counts.get(e.status, 0) + 1
    document: dict[str, Any] = {
        **(meta or {}),
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "counts": counts,
        "failed": counts.get("failed", 0),
        "entries": rows,
    }
    if isinstance(result, BatchResult):
        document["seconds"] = round(result.seconds, 3)
        document["interrupted"] = result.interrupted
    json_path = root / f"{stem}.json"
    csv_path = root / f"{stem}.csv"
    write_json(json_path, document)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {**row, "mesh": ";".join(row["mesh"]), **{k: "" for k in SUMMARY_COLUMNS if row.get(k) is None}}
        )
    atomic_write_text(csv_path, buffer.getvalue())
    return json_path, csv_path
