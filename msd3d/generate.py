"""The main job: one prompt -> a trained run directory with scores, mesh and turntable video."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from msd3d.assets import write_mesh, write_turntable
from msd3d.config import RunConfig, slugify
from msd3d.errors import DiskFullError, Msd3dError
from msd3d.priors.base import DiffusionPrior
from msd3d.run_dir import RunDir, write_json
from msd3d.train import Trainer, interrupt_on_signals


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

    Returns the summary that is also written to ``summary.json``. The run folder is locked for the
    whole call (a second process gets a one-line error naming this one), must be new, empty or an
    msd3d run, and temporary files of a process killed mid-write are removed first.
    """
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config)
    run = RunDir(run_dir)
    run.check_writable()
    created = not run_dir.exists()
    lock = run.lock()
    try:
        if not resume:
            check_fresh(run_dir)
        run.remove_orphans()
        trainer = Trainer(config, run_dir, prior=prior, show_progress=show_progress)
        if resume:
            trainer.resume()
            log(f"resuming {run_dir} at step {trainer.step}/{config.train.steps}")
        stopped = (
            lambda name: f"{name} received while scoring and exporting: training finished at step {trainer.step} "
            f"and its checkpoint is kept; finish with: msd3d generate --resume {run_dir}"
        )
        try:
            summary = trainer.fit()
            with interrupt_on_signals(stopped):
                summary.update(finish(trainer, show_progress=show_progress, log=log))
                write_json(trainer.run.summary, summary)
        except DiskFullError as exc:  # one line that says what is safe on disk
            raise DiskFullError(exc.path, f"; {trainer.last_good_checkpoint()}") from None
    except BaseException:
        lock.release()
        if created and [p.name for p in run_dir.iterdir()] == [run.lock_file.name]:
            run.lock_file.unlink()  # nothing was written: leave no trace
            run_dir.rmdir()
        raise
    lock.release()
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
        out["mesh"] = write_mesh(trainer.renderer, config.mesh, run.root)
        out["mesh"]["seconds"] = time.perf_counter() - mesh_t0
        log(f"mesh: {', '.join(out['mesh']['files'])}")
    if config.export.video:
        path = run.video(config.video.format)
        out["video"] = write_turntable(trainer.renderer, config.video, path, show_progress=show_progress)
        log(f"video: {path}")
    out["finish_seconds"] = time.perf_counter() - t0
    return out
