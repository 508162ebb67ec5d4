"""The optimisation loop: camera -> render -> encode -> guidance target -> loss -> step.

One loop serves every scene, prior and guidance method: the trainer sees the prior only through
:class:`~msd3d.priors.base.DiffusionPrior` and the guidance only through
:class:`~msd3d.guidance.base.Guidance` (it never imports diffusers). Every schedule (lambda, t,
shading warm-up, regulariser weights, occupancy-grid refresh) is a function of the step.

Reproducibility: all randomness of a step (cameras, light, shading choice, ray jitter, guidance
noise) comes from one CPU ``torch.Generator`` whose state is checkpointed with the parameters and
the optimiser, so an interrupted and resumed run ends exactly where an uninterrupted one does.
"""

from __future__ import annotations

import contextlib
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from msd3d.atomic_io import atomic_path, atomic_write_text
from msd3d.config import RunConfig, check_text, to_yaml
from msd3d.device import resolve_device
from msd3d.errors import ConfigError, Msd3dError
from msd3d.guidance import Guidance, build_guidance
from msd3d.prefetch import ConditionPrefetcher
from msd3d.priors.base import DiffusionPrior
from msd3d.priors.choice import build_prior
from msd3d.progress_bar import make_progress
from msd3d.render.cameras import turntable_cameras
from msd3d.render.regularisers import regulariser_losses
from msd3d.render.views import ViewStream
from msd3d.render.volume import VolumeRenderer
from msd3d.run_dir import MetricsLog, RunDir, load_checkpoint, save_checkpoint
from msd3d.scene_builder import build_renderer
from msd3d.schedules import anneal


class TrainingInterrupted(Msd3dError):
    """SIGINT/SIGTERM arrived; a checkpoint was written and the run can be resumed."""


class TrainingDiverged(Msd3dError):
    """Too many consecutive non-finite steps."""


@contextlib.contextmanager
def interrupt_on_signals(message: Callable[[str], str]) -> Iterator[None]:
    """While the body runs, SIGINT/SIGTERM raise :class:`TrainingInterrupted` (``message(signal name)``).

    For work that has no step to stop between (scoring, meshing, the video): the exception unwinds
    through the atomic writers, which delete their temporary files, and the CLI exits 130.
    """

    def handler(signum: int, frame: Any) -> None:
        raise TrainingInterrupted(message(signal.Signals(signum).name))

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def read_scalars(values: Sequence[Tensor | float]) -> list[float]:
    """Python floats of scalars (floats, or one-element tensors on any device), in order.

    The tensors of each device travel to the host in one copy: reading them one by one with
    ``float()`` would wait for the accelerator once per value.
    """
    out: list[float] = [0.0] * len(values)
    by_device: dict[torch.device, list[int]] = {}
    for i, value in enumerate(values):
        if isinstance(value, Tensor):
            by_device.setdefault(value.device, []).append(i)
        else:
            out[i] = float(value)
    for device, index in by_device.items():
        dtype = torch.float32 if device.type == "mps" else torch.float64  # exact for float32/16 and bool
        stacked = torch.stack([values[i].detach().reshape(()).to(dtype) for i in index])  # type: ignore[union-attr]
        for i, value in zip(index, stacked.tolist()):
            out[i] = value
    return out


@dataclass
class StepResult:
    loss: float
    finite: bool
    stats: dict[str, float]


class Trainer:
    """Optimises a NeRF for one prompt; writes everything into a run directory."""

    def __init__(
        self,
        config: RunConfig,
        run_dir: Path,
        prior: DiffusionPrior | None = None,
        show_progress: bool = True,
    ) -> None:
        if not config.prompt.strip():
            raise Msd3dError("the prompt is empty; pass a prompt such as \"a red mushroom\"")
        try:
            check_text(config.prompt, "prompt")
            check_text(config.negative_prompt, "negative_prompt")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.config = config
        self.run = RunDir(Path(run_dir))
        self.device = resolve_device(config.device)
        self.show_progress = show_progress

        torch.manual_seed(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.renderer: VolumeRenderer = build_renderer(config).to(self.device)
        self.prior = prior if prior is not None else build_prior(config.prior, self.device)
        self.prior.validate_prompt(config.prompt)
        self.guidance: Guidance = build_guidance(config.guidance.name, self.prior, config.guidance)
        self.guidance.defer_stats = True  # train_step reads every statistic in one host transfer
        self.optimizer = self._build_optimizer()
        # each step's cameras, shading and lights come from (seed, step) alone (render/views.py)
        self.views = ViewStream(
            config.prompt, config.camera, config.shading, config.render.resolution, config.seed,
            view_dependent_prompts=config.view_dependent_prompts,
        )
        chunk = config.train.prefetch_steps if self.prior.prefetch_conditions else 1
        self.conditions = ConditionPrefetcher(
            self.prior, self.views, config.train.steps, negative_prompt=config.negative_prompt,
            ambient_ratio=config.shading.ambient_ratio, device=self.device, chunk=max(1, chunk),
        )
        self.step = 0
        self.nonfinite_total = 0
        self.nonfinite_streak = 0
        self.elapsed = 0.0  # training seconds over all sessions of this run
        self.checkpoint_step: int | None = None  # step of the checkpoint on disk (None: none written yet)
        self._denoiser_calls_before = 0  # denoiser calls of earlier sessions (from the checkpoint)
        self._counter_start = self.prior.counter.calls
        self._signal: int | None = None
        self.metrics = MetricsLog(self.run.metrics)

    # -- setup -----------------------------------------------------------------------------------
    def _build_optimizer(self) -> torch.optim.Optimizer:
        """Adam over the groups the scene and the guidance declare: "encoding" at ``train.lr``, every other
        group ("network", "guidance", ...) at ``train.lr_network``; the guidance's group at its own
        ``learning_rate()`` when it declares one."""
        t = self.config.train
        declared = dict(self.renderer.param_groups())
        guidance_params = self.guidance.parameters()
        if guidance_params:
            declared["guidance"] = list(guidance_params)
        groups = []
        for name, params in declared.items():
            lr = t.lr if name == "encoding" else t.lr_network
            if name == "guidance" and self.guidance.learning_rate() is not None:
                lr = self.guidance.learning_rate()  # a method's own rate (VSD's lora_lr)
            groups.append({"params": params, "lr": lr, "base_lr": lr, "name": name})
        self.params = [p for g in groups for p in g["params"]]
        return torch.optim.Adam([g for g in groups if g["params"]], betas=tuple(t.betas), eps=t.adam_eps)

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "field": self.renderer.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "nonfinite_total": self.nonfinite_total,
            "elapsed": self.elapsed,
            "denoiser_calls": self.denoiser_calls,
            "guidance": self.config.guidance.name,
            "guidance_state": self.guidance.state_dict(),
        }

    @property
    def denoiser_calls(self) -> int:
        """Denoiser calls over all sessions of this run (carried across resumes by the checkpoint)."""
        return self._denoiser_calls_before + self.prior.counter.calls - self._counter_start

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.renderer.load_state_dict(state["field"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.guidance.load_state_dict(state.get("guidance_state", {}))
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.step = int(state["step"])
        self.nonfinite_total = int(state.get("nonfinite_total", 0))
        self.elapsed = float(state.get("elapsed", 0.0))
        self._denoiser_calls_before = int(state.get("denoiser_calls", 0))
        self._counter_start = self.prior.counter.calls
        self.checkpoint_step = self.step

    def save_checkpoint(self) -> None:
        """Write checkpoints/last.pt; refuses (TrainingDiverged) a state with non-finite parameters."""
        if not self.parameters_finite():
            raise TrainingDiverged(
                f"the parameters are not finite at step {self.step}; refusing to checkpoint them "
                f"({self._kept_checkpoint()}); try a lower train.lr"
            )
        save_checkpoint(self.run.checkpoint, self.state_dict())
        self.checkpoint_step = self.step

    def parameters_finite(self) -> bool:
        """Whether every parameter of the renderer is finite (one host sync). Buffers such as the
        occupancy grid's running densities are not checked: they may legitimately saturate."""
        params = [p.detach() for p in self.renderer.parameters()]
        return bool(torch.stack([torch.isfinite(p).all() for p in params]).all()) if params else True

    def _kept_checkpoint(self) -> str:
        kept = self.run.checkpoint if self.run.checkpoint.is_file() else None
        return f"the last good checkpoint {kept} is kept" if kept else "no checkpoint had been written yet"

    def _optimizer_snapshot(self) -> tuple[list[Tensor], dict[Tensor, dict[str, Any]]]:
        """Copies of the parameters and their Adam state, to undo a step that made them non-finite."""
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        values = [p.detach().clone() for p in params]
        state = {
            p: {k: v.clone() if isinstance(v, Tensor) else v for k, v in self.optimizer.state[p].items()}
            for p in params
            if p in self.optimizer.state
        }
        return values, state

    def _restore(self, snapshot: tuple[list[Tensor], dict[Tensor, dict[str, Any]]]) -> None:
        values, state = snapshot
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        with torch.no_grad():
            for p, v in zip(params, values):
                p.copy_(v)
        for p in params:
            if p in state:
                self.optimizer.state[p] = state[p]
            else:
                self.optimizer.state.pop(p, None)

    def resume(self) -> None:
        """Continue from the run directory's last checkpoint."""
        self.load_state_dict(load_checkpoint(self.run, map_location=self.device))
        self.metrics.truncate_after(self.step)

    # -- one step --------------------------------------------------------------------------------
    def train_step(self, step: int) -> StepResult:
        cfg = self.config
        total = cfg.train.steps
        self.renderer.train()
        self.renderer.update_occupancy(step)
        view, cond = self.conditions.get(step)  # the oracle's images are shaded like this step's render
        cameras = view.cameras.to(self.device)
        shading = view.shading
        lights = None if view.light_positions is None else view.light_positions.to(self.device)
        out = self.renderer(
            cameras,
            shading=shading,
            light_positions=lights,
            generator=self.generator,
            with_normals=cfg.regularisers.needs_normals(step, total),
        )
        x = self.prior.encode(out.image())
        guided = self.guidance(x, cond, step, total, generator=self.generator)
        losses = {"guidance": guided.loss(x)}
        if guided.aux_loss is not None:  # a method training its own parameters (Guidance.parameters())
            losses["guidance_aux"] = guided.aux_loss
        losses.update(regulariser_losses(out, cfg.regularisers, step, total))
        field_losses = getattr(self.renderer.field, "regulariser_losses", None)  # e.g. an SDF's eikonal term
        if field_losses is not None:
            losses.update(field_losses(self.generator))
        loss = sum(losses.values())

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # also when the loss is non-finite: the step is then dropped below, as before
        grads = [p.grad for p in self.params if p.grad is not None]
        finite_flag = torch.stack(
            [torch.isfinite(loss.detach()).all(), *(torch.isfinite(g).all() for g in grads)]
        ).all()
        # the guard's decision, the loss terms and the guidance statistics: one host transfer (one
        # device sync) per step instead of one per gradient and per logged number
        stat_names = list(guided.stats)
        host = read_scalars([finite_flag, loss, *losses.values(), *(guided.stats[k] for k in stat_names)])
        finite, loss_value = bool(host[0]), host[1]
        if finite:
            scale = anneal(1.0, cfg.train.lr_decay, step, total, "log_linear")
            for group in self.optimizer.param_groups:
                group["lr"] = group["base_lr"] * scale
            if cfg.train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.params, cfg.train.grad_clip)
            snapshot = self._optimizer_snapshot()
            self.optimizer.step()
            # finite gradients can still give non-finite parameters (a huge step): undo such a step
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            if not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
                self._restore(snapshot)
                finite = False
        else:
            self.optimizer.zero_grad(set_to_none=True)
        stats = {f"loss_{k}": v for k, v in zip(losses, host[2 : 2 + len(losses)])}
        stats.update(zip(stat_names, host[2 + len(losses) :]))
        stats["shading"] = shading  # type: ignore[assignment]
        return StepResult(loss=loss_value, finite=finite, stats=stats)

    # -- the loop --------------------------------------------------------------------------------
    def fit(self, stop_at: int | None = None, on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Train until ``train.steps`` (or ``stop_at``, which checkpoints and returns early).

        Returns the summary dict. Raises :class:`TrainingInterrupted` after SIGINT/SIGTERM (with a
        checkpoint written) and :class:`TrainingDiverged` after too many non-finite steps (the last
        good checkpoint is kept, nothing newer is written).
        """
        cfg = self.config.train
        self.run.create()
        atomic_write_text(self.run.config, to_yaml(self.config))
        if self.step == 0:
            self.metrics.reset()  # an earlier attempt that died before its first checkpoint: start clean
        end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in previous:
            signal.signal(s, self._on_signal)
        start_step, t0 = self.step, time.perf_counter()
        self._elapsed_before = self.elapsed
        try:
            with make_progress(self.show_progress) as progress:
                task = progress.add_task("training", total=cfg.steps, completed=self.step, loss=float("nan"), lam="")
                while self.step < end:
                    step = self.step
                    result = self.train_step(step)
                    self._guard(result, step)
                    self.step = step + 1
                    if step % cfg.log_every == 0 or self.step == cfg.steps:
                        self._log_metrics(step, result, time.perf_counter() - t0, self.step - start_step)
                    lam = result.stats.get("lambda")
                    progress.update(
                        task, advance=1, loss=result.loss, lam=f" λ {lam:.3g}" if lam is not None else ""
                    )
                    if cfg.val_every and self.step % cfg.val_every == 0:
                        self.save_validation(self.step)
                    if self.step % cfg.checkpoint_every == 0 and self.nonfinite_streak == 0:
                        self._checkpoint(t0)  # never checkpoint inside a non-finite streak
                    if on_step is not None:
                        on_step(self.step)
                    if self._signal is not None:
                        self._checkpoint(t0)
                        name = signal.Signals(self._signal).name
                        raise TrainingInterrupted(
                            f"{name} received: stopped at step {self.step} with a checkpoint; "
                            f"resume with: msd3d generate --resume {self.run.root}"
                        )
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        if self.checkpoint_step != self.step:  # the loop's last step may have written it already
            self._checkpoint(t0)
        return self._summary(time.perf_counter() - t0, self.step - start_step)

    def _checkpoint(self, t0: float) -> None:
        self.elapsed = self._elapsed_before + (time.perf_counter() - t0)
        self.save_checkpoint()

    def last_good_checkpoint(self) -> str:
        """"the last good checkpoint is step N" (read from disk), for error messages."""
        if self.checkpoint_step is None:
            return "no checkpoint has been written yet"
        return f"the last good checkpoint is step {self.checkpoint_step}"

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signal = signum

    def _guard(self, result: StepResult, step: int) -> None:
        if result.finite:
            self.nonfinite_streak = 0
            return
        self.nonfinite_total += 1
        self.nonfinite_streak += 1
        limit = self.config.train.max_nonfinite_streak
        if self.nonfinite_streak >= limit:
            raise TrainingDiverged(
                f"stopped at step {step}: {limit} consecutive steps had a non-finite loss, gradient or "
                f"parameter update; {self._kept_checkpoint()}; try a lower train.lr or guidance scale"
            )

    def _log_metrics(self, step: int, result: StepResult, seconds: float, steps_done: int) -> None:
        record: dict[str, Any] = {"step": step, "loss": result.loss, "finite": result.finite}
        record.update(result.stats)
        record["nonfinite_total"] = self.nonfinite_total
        record["it_per_s"] = steps_done / seconds if seconds > 0 else None
        record["denoiser_calls"] = self.denoiser_calls
        self.metrics.append(record)

    # -- evaluation ------------------------------------------------------------------------------
    def eval_cameras(self, n: int, resolution: int | None = None):
        c = self.config
        return turntable_cameras(
            n,
            resolution or c.render.eval_resolution,
            elevation=c.camera.eval_elevation,
            distance=c.camera.eval_distance,
            fovy=c.camera.eval_fovy,
        ).to(self.device)

    @torch.no_grad()
    def save_validation(self, step: int, overwrite: bool = True) -> Path:
        """A PNG strip of albedo (top) and normals (bottom) turntable views; with ``overwrite=False``
        an existing strip for ``step`` (rendered by the loop a moment ago) is kept as it is."""
        path = self.run.validation / f"step_{step:06d}.png"
        if path.is_file() and not overwrite:
            return path
        self.renderer.eval()
        cams = self.eval_cameras(self.config.train.val_views)
        albedo = self.renderer.render_image(cams, shading="albedo", with_normals=True)
        normals = albedo.normals if albedo.normals is not None else torch.zeros_like(albedo.rgb)
        normal_rgb = (0.5 * (normals + 1.0)) * albedo.opacity + (1 - albedo.opacity)
        rows = [torch.cat(list(albedo.rgb), dim=1), torch.cat(list(normal_rgb), dim=1)]
        image = (torch.cat(rows, dim=0).clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            Image.fromarray(image).save(tmp, format="PNG")
        self.renderer.train()
        return path

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any] | None:
        """Scores from priors that can score a run (the oracle); None for the others."""
        self.renderer.eval()
        cams = self.eval_cameras(self.config.train.eval_views, self.config.render.resolution)
        renders = self.renderer.render_image(cams, shading="albedo").image()
        return self.prior.evaluate(self.config.prompt, renders, cams)

    def _run_rate(self) -> float | None:
        return self.step / self.elapsed if self.step and self.elapsed > 0 else None

    def _summary(self, seconds: float, steps_done: int) -> dict[str, Any]:
        return {
            "prompt": self.config.prompt,
            "guidance": self.config.guidance.name,
            "prior": self.config.prior.name,
            "seed": self.config.seed,
            "device": str(self.device),
            "steps": self.step,
            "steps_this_session": steps_done,
            "seconds_this_session": seconds,
            "train_seconds": self.elapsed,
            # a session that trained nothing (--resume of a finished run) reports the whole run's rate, not 0
            "it_per_s": steps_done / seconds if steps_done and seconds > 0 else self._run_rate(),
            "nonfinite_steps": self.nonfinite_total,
            "denoiser_calls_this_session": self.prior.counter.calls - self._counter_start,
            "denoiser_calls": self.denoiser_calls,
        }


