"""The main job: one prompt -> a trained run directory with scores, mesh and turntable video."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from msd3d.config import RunConfig
from msd3d.errors import DiskFullError, Msd3dError
from msd3d.naming import run_name
from msd3d.priors.base import DiffusionPrior
from msd3d.progress_bar import make_progress
from msd3d.report import SCORES_NAME, write_run_report
from msd3d.run_dir import MetricsLog, RunDir, write_json
from msd3d.train import Trainer, interrupt_on_signals
from msd3d.workflows.assets import write_mesh, write_turntable


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
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume) a run, then score it and write the mesh, the turntable and report.html.

    Returns the summary that is also written to ``summary.json``. The run folder is locked for the
    whole call (a second process gets a one-line error naming this one), must be new, empty or an
    msd3d run, and temporary files of a process killed mid-write are removed first.
    ``on_step(step)`` is called after every training step (e.g. to report progress from a batch worker).
    """
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config)
    if run_dir.exists() and not run_dir.is_dir():
        raise Msd3dError(f"run directory {str(run_dir)!r} is a file, not a folder; pass a new folder with --out")
    run = RunDir(run_dir)
    run.check_writable()
    if prior is None and config.prior.name == "sd":
        from msd3d.device import resolve_device
        from msd3d.priors.stable_diffusion import check_available

        resolve_device(config.device)  # a bad --device is named first, as before
        check_available(config.prior.sd)  # no weights, no network: one line now, not after the scene is built
    created = not run_dir.exists()
    lock = run.lock()
    try:
        if not resume:
            check_fresh(run_dir, config)
        run.remove_orphans()
        trainer = Trainer(config, run_dir, prior=prior, show_progress=show_progress)
        if resume:
            trainer.resume()
            if trainer.step > config.train.steps:  # before fit() rewrites config.yaml
                raise Msd3dError(
                    f"train.steps={config.train.steps} is below the {trainer.step} steps this run has done; "
                    f"--resume continues a run: pass at least {trainer.step} (--steps / train.steps)"
                )
            log(f"resuming {run_dir} at step {trainer.step}/{config.train.steps}")

        def stopped(name: str) -> str:
            return (
                f"{name} received while scoring and exporting: training finished at step {trainer.step} "
                f"and its checkpoint is kept; finish with: msd3d generate --resume {run_dir}"
            )

        try:
            score_logger = ScoreLogger(trainer)

            def each_step(step: int) -> None:
                score_logger(step)
                if on_step is not None:
                    on_step(step)

            summary = trainer.fit(on_step=each_step)
            with interrupt_on_signals(stopped), make_progress(show_progress) as progress:
                summary.update(finish(trainer, show_progress=show_progress, log=log, progress=progress))
                write_json(trainer.run.summary, summary)  # the report page reads it (and is newer: not stale)
                with _stage(progress, "report"):
                    try:
                        summary["report"] = str(write_run_report(trainer.run.root))  # returned, not in summary.json
                    except Exception as exc:  # the run's results are all written; a page must not fail it
                        log(
                            f"report.html not written ({type(exc).__name__}: {exc}); "
                            f"retry with: msd3d report {run_dir}"
                        )
        except DiskFullError as exc:  # one line that says what is safe on disk
            raise DiskFullError(exc.path, f"; {trainer.last_good_checkpoint()}") from None
    except BaseException:
        lock.release()
        if created and [p.name for p in run_dir.iterdir()] == [run.lock_file.name]:
            run.lock_file.unlink()  # nothing was written: leave no trace
            run_dir.rmdir()
        raise
    lock.release()
    if "report" in summary:
        log(f"report: {summary['report']}")
    log(f"done: {run_dir}")
    return summary


class ScoreLogger:
    """``Trainer.fit``'s ``on_step``: at every validation step, score the run (priors that can: the
    oracle) and append ``{"step": steps done, "mode_psnr", "blend_psnr", ...}`` to ``scores.jsonl``
    in the run folder, for the report's scores-against-steps plot. Stops once the prior says it
    cannot score. On resume, lines after the checkpoint's step are dropped (they are redone)."""


    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        # priors that keep the base class's "cannot score" (Stable Diffusion) are not asked
        scores = type(trainer.prior).evaluate is not DiffusionPrior.evaluate
        self.enabled = scores and bool(trainer.config.train.val_every)
        self.log = MetricsLog(trainer.run.root / SCORES_NAME)
        self.log.truncate_after(trainer.step + 1)

    def __call__(self, step: int) -> None:
        every = self.trainer.config.train.val_every
        if not self.enabled or step % every or step >= self.trainer.config.train.steps:
            return  # the final scores come from finish()
        scores = self.trainer.evaluate()
        self.trainer.renderer.train()
        if scores is None:
            self.enabled = False
            return
        numbers = {k: v for k, v in scores.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.log.append({"step": step, **numbers})


@contextlib.contextmanager
def _stage(progress: Any, name: str, seconds: dict[str, float] | None = None) -> Iterator[None]:
    """One finishing stage as a progress row (elapsed time shown while it runs; 1/1 when done); its
    wall time goes into ``seconds[name]`` (``summary.json`` ``stage_seconds``)."""
    task = progress.add_task(name, total=1, show_rate=False)
    t0 = time.perf_counter()
    yield
    if seconds is not None:
        seconds[name] = time.perf_counter() - t0
    progress.update(task, completed=1)


def finish(
    trainer: Trainer, show_progress: bool = True, log: Callable[[str], None] = print, progress: Any | None = None
) -> dict[str, Any]:
    """Scores, final validation render, mesh and video for a trained run; each stage shows progress
    (in ``progress``, a running :func:`~msd3d.progress_bar.make_progress` display, or a new one)."""
    if progress is None:
        with make_progress(show_progress) as progress:
            return finish(trainer, show_progress=show_progress, log=log, progress=progress)
    config, run = trainer.config, trainer.run
    out: dict[str, Any] = {"run_dir": str(run.root)}
    stages: dict[str, float] = {}
    out["stage_seconds"] = stages
    t0 = time.perf_counter()
    with _stage(progress, "scoring", stages):
        scores = trainer.evaluate()
    if scores is not None:
        out["scores"] = scores
    with _stage(progress, "validation render", stages):
        out["validation_png"] = str(trainer.save_validation(trainer.step, overwrite=False))
    if config.export.mesh:
        mesh_t0 = time.perf_counter()
        with _stage(progress, "mesh", stages):

            def score(mesh: Any) -> dict[str, Any] | None:
                return trainer.prior.evaluate_geometry(config.prompt, mesh)

            out["mesh"] = write_mesh(trainer.renderer, config.mesh, run.root, score=score)
        if "geometry" in out["mesh"]:  # oracle runs: the mesh against the true shapes (scores.geometry)
            out.setdefault("scores", {})["geometry"] = out["mesh"].pop("geometry")
        out["mesh"]["seconds"] = time.perf_counter() - mesh_t0
        log(f"mesh: {', '.join(out['mesh']['files'])}")
    if config.export.video:
        video_t0 = time.perf_counter()
        path = run.video(config.video.format)
        out["video"] = write_turntable(
            trainer.renderer, config.video, path, show_progress=show_progress, progress=progress
        )
        stages["video"] = time.perf_counter() - video_t0
        log(f"video: {path}")
    out["finish_seconds"] = time.perf_counter() - t0
    return out
