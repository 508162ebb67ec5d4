"""The main job: one prompt -> a trained run directory with scores, mesh and turntable video."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from msd3d.assets import write_mesh, write_turntable
from msd3d.config import RunConfig, slugify
from msd3d.errors import Msd3dError
from msd3d.priors.base import DiffusionPrior
from msd3d.run_dir import RunDir, write_json
from msd3d.train import Trainer


def default_run_dir(config: RunConfig) -> Path:
    """``config.out``, or ``outputs/<prompt-slug>-<seed>``."""
    return Path(config.out) if config.out else Path("outputs") / f"{slugify(config.prompt)}-{config.seed}"


def check_fresh(run_dir: Path) -> None:
    """Refuse to start over a run that has a checkpoint: that would lose work."""
    run = RunDir(run_dir)
    if run.checkpoint.is_file():
        raise Msd3dError(
            f"{str(run_dir)!r} already holds a run; continue it with --resume {run_dir} or choose another --out"
        )


def generate(
    config: RunConfig,
    run_dir: Path | None = None,
    resume: bool = False,
    prior: DiffusionPrior | None = None,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train (or resume) a run, then score it and write the mesh and the turntable.

    Returns the summary that is also written to ``summary.json``.
    """
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config)
    if not resume:
        check_fresh(run_dir)
    trainer = Trainer(config, run_dir, prior=prior, show_progress=show_progress)
    if resume:
        trainer.resume()
        log(f"resuming {run_dir} at step {trainer.step}/{config.train.steps}")
    summary = trainer.fit()
    summary.update(finish(trainer, show_progress=show_progress, log=log))
    write_json(trainer.run.summary, summary)
    log(f"done: {run_dir}")
    return summary


def finish(trainer: Trainer, show_progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Scores, final validation render, mesh and video for a trained run."""
    config, run = trainer.config, trainer.run
    out: dict[str, Any] = {"run_dir": str(run.root)}
    t0 = time.perf_counter()
    scores = trainer.evaluate()
    if scores is not None:
        out["scores"] = scores
    out["validation_png"] = str(trainer.save_validation(trainer.step, overwrite=False))
    if config.export.mesh:
        mesh_t0 = time.perf_counter()
        score = lambda mesh: trainer.prior.evaluate_geometry(config.prompt, mesh)  # noqa: E731
        out["mesh"] = write_mesh(trainer.renderer, config.mesh, run.root, score=score)
        if "geometry" in out["mesh"]:  # oracle runs: the mesh against the true shapes (scores.geometry)
            out.setdefault("scores", {})["geometry"] = out["mesh"].pop("geometry")
        out["mesh"]["seconds"] = time.perf_counter() - mesh_t0
        log(f"mesh: {', '.join(out['mesh']['files'])}")
    if config.export.video:
        path = run.video(config.video.format)
        out["video"] = write_turntable(trainer.renderer, config.video, path, show_progress=show_progress)
        log(f"video: {path}")
    out["finish_seconds"] = time.perf_counter() - t0
    return out
