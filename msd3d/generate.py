"""The main job: one prompt -> a trained run directory with scores, mesh and turntable video."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from msd3d.assets import write_mesh, write_turntable
from msd3d.config import RunConfig
from msd3d.errors import Msd3dError
from msd3d.naming import run_name
from msd3d.priors.base import DiffusionPrior
from msd3d.run_dir import RunDir, write_json
from msd3d.train import Trainer


def default_run_dir(config: RunConfig) -> Path:
    """``config.out``, or ``outputs/<prompt-slug>-<guidance>-<prior>-<seed>`` (:func:`run_name`)."""
    if config.out:
        return Path(config.out)
    return Path("outputs") / run_name(config.prompt, config.guidance.name, config.prior.name, config.seed)


def _existing_run(run: RunDir) -> dict[str, Any]:
    """Prompt, guidance and prior of the run already in a folder (empty when unreadable)."""
    try:
        from omegaconf import OmegaConf

        data = OmegaConf.to_container(OmegaConf.load(run.config))
        return {
            "prompt": data.get("prompt"),
            "guidance": (data.get("guidance") or {}).get("name"),
            "prior": (data.get("prior") or {}).get("name"),
            "seed": data.get("seed"),
        }
    except Exception:
        return {}


def check_fresh(run_dir: Path, config: RunConfig | None = None) -> None:
    """Refuse to start over a run that has a checkpoint: that would lose work. ``--resume`` is offered
    only when the run there is the same job (prompt, guidance, prior, seed) as ``config``."""
    run = RunDir(run_dir)
    if not run.checkpoint.is_file():
        return
    other = _existing_run(run)
    same = config is not None and other == {
        "prompt": config.prompt, "guidance": config.guidance.name, "prior": config.prior.name, "seed": config.seed,
    }
    if same:
        raise Msd3dError(
            f"{str(run_dir)!r} already holds this run; continue it with --resume {run_dir} or choose another --out"
        )
    what = (
        f"a {other['guidance']} run on the {other['prior']} prior of {other['prompt']!r} (seed {other['seed']})"
        if other.get("guidance") else "another run"
    )
    raise Msd3dError(f"{str(run_dir)!r} already holds {what}; choose another --out for this one")


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
    if run_dir.exists() and not run_dir.is_dir():
        raise Msd3dError(f"run directory {str(run_dir)!r} is a file, not a folder; pass a new folder with --out")
    if not resume:
        check_fresh(run_dir, config)
    if prior is None and config.prior.name == "sd":
        from msd3d.device import resolve_device
        from msd3d.priors.stable_diffusion import check_available

        resolve_device(config.device)  # a bad --device is named first, as before
        check_available(config.prior.sd)  # no weights, no network: one line now, not after the scene is built
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
        out["mesh"] = write_mesh(trainer.renderer, config.mesh, run.root)
        out["mesh"]["seconds"] = time.perf_counter() - mesh_t0
        log(f"mesh: {', '.join(out['mesh']['files'])}")
    if config.export.video:
        path = run.video(config.video.format)
        out["video"] = write_turntable(trainer.renderer, config.video, path, show_progress=show_progress)
        log(f"video: {path}")
    out["finish_seconds"] = time.perf_counter() - t0
    return out
