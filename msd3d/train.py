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

import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from msd3d.config import RunConfig, to_yaml
from msd3d.device import resolve_device
from msd3d.errors import Msd3dError
from msd3d.export.atomic import atomic_path, atomic_write_text
from msd3d.guidance import Guidance, build_guidance
from msd3d.guidance.base import interpolate, progress
from msd3d.priors import build_prior
from msd3d.priors.base import DiffusionPrior
from msd3d.progress import make_progress
from msd3d.render.cameras import sample_cameras, turntable_cameras, view_prompts
from msd3d.render.regularisers import regulariser_losses
from msd3d.render.shading import choose_shading, needs_light, sample_light_positions
from msd3d.render.volume import VolumeRenderer
from msd3d.run_dir import MetricsLog, RunDir, load_checkpoint, save_checkpoint
from msd3d.scene_builder import build_renderer


class TrainingInterrupted(Msd3dError):
    """SIGINT/SIGTERM arrived; a checkpoint was written and the run can be resumed."""


class TrainingDiverged(Msd3dError):
    """Too many consecutive non-finite steps."""


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
        self.config = config
        self.run = RunDir(Path(run_dir))
        self.device = resolve_device(config.device)
        self.show_progress = show_progress

        torch.manual_seed(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.renderer: VolumeRenderer = build_renderer(config).to(self.device)
        self.optimizer = self._build_optimizer()
        self.prior = prior if prior is not None else build_prior(config.prior, self.device)
        self.prior.validate_prompt(config.prompt)
        self.guidance: Guidance = build_guidance(config.guidance.name, self.prior, config.guidance)
        self.guidance.defer_stats = True  # train_step reads every statistic in one host transfer
        self.step = 0
        self.nonfinite_total = 0
        self.nonfinite_streak = 0
        self.elapsed = 0.0  # training seconds over all sessions of this run
        self._signal: int | None = None
        self.metrics = MetricsLog(self.run.metrics)

    # -- setup -----------------------------------------------------------------------------------
    def _build_optimizer(self) -> torch.optim.Optimizer:
        t = self.config.train
        grid, network = [], []
        for name, p in self.renderer.named_parameters():
            (grid if ".encoding." in f".{name}" else network).append(p)
        groups = [
            {"params": grid, "lr": t.lr, "base_lr": t.lr, "name": "encoding"},
            {"params": network, "lr": t.lr_network, "base_lr": t.lr_network, "name": "network"},
        ]
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
            "guidance": self.config.guidance.name,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.renderer.load_state_dict(state["field"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.step = int(state["step"])
        self.nonfinite_total = int(state.get("nonfinite_total", 0))
        self.elapsed = float(state.get("elapsed", 0.0))

    def save_checkpoint(self) -> None:
        save_checkpoint(self.run.checkpoint, self.state_dict())

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
        cameras = sample_cameras(cfg.camera, cfg.render.resolution, generator=self.generator)
        # prompts from the host copy of the cameras: reading device tensors would wait for the GPU
        prompts = view_prompts(cfg.prompt, cameras, cfg.camera) if cfg.view_dependent_prompts else [cfg.prompt] * len(cameras)
        cameras = cameras.to(self.device)
        shading = choose_shading(step, cfg.shading, self.generator)
        lights = sample_light_positions(cameras, cfg.shading, self.generator) if needs_light(shading) else None
        out = self.renderer(
            cameras,
            shading=shading,
            light_positions=lights,
            generator=self.generator,
            with_normals=cfg.regularisers.needs_normals(step, total),
        )
        cond = self.prior.condition(
            prompts, negative_prompt=cfg.negative_prompt, cameras=cameras,
            shading=shading, light_positions=lights, ambient_ratio=cfg.shading.ambient_ratio,
        )  # the oracle renders its images shaded like this step's render
        x = self.prior.encode(out.image())
        guided = self.guidance(x, cond, step, total, generator=self.generator)
        losses = {"guidance": guided.loss(x)}
        losses.update(regulariser_losses(out, cfg.regularisers, step, total))
        eikonal = getattr(self.renderer.field, "eikonal_loss", None)  # SDF fields (field.kind=sdf)
        if eikonal is not None and cfg.field.eikonal_weight > 0:
            box = (2 * torch.rand(cfg.field.eikonal_points, 3, generator=self.generator) - 1).to(self.device)
            losses["eikonal"] = cfg.field.eikonal_weight * eikonal(box * cfg.field.bound)
        loss = sum(losses.values())

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # also when the loss is non-finite: the step is then dropped below, as before
        grads = [p.grad for p in self.renderer.parameters() if p.grad is not None]
        finite_flag = torch.stack([torch.isfinite(loss.detach()).all(), *(torch.isfinite(g).all() for g in grads)]).all()
        # the guard's decision, the loss terms and the guidance statistics: one host transfer (one
        # device sync) per step instead of one per gradient and per logged number
        stat_names = list(guided.stats)
        host = read_scalars([finite_flag, loss, *losses.values(), *(guided.stats[k] for k in stat_names)])
        finite, loss_value = bool(host[0]), host[1]
        if finite:
            scale = interpolate(1.0, cfg.train.lr_decay, progress(step, total), "log_linear")
            for group in self.optimizer.param_groups:
                group["lr"] = group["base_lr"] * scale
            if cfg.train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.renderer.parameters(), cfg.train.grad_clip)
            self.optimizer.step()
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
        self._checkpoint(t0)
        return self._summary(time.perf_counter() - t0, self.step - start_step)

    def _checkpoint(self, t0: float) -> None:
        self.elapsed = self._elapsed_before + (time.perf_counter() - t0)
        self.save_checkpoint()

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
            kept = self.run.checkpoint if self.run.checkpoint.is_file() else None
            where = f"the last good checkpoint {kept} is kept" if kept else "no checkpoint had been written yet"
            raise TrainingDiverged(
                f"stopped at step {step}: {limit} consecutive steps had a non-finite loss or gradient; "
                f"{where}; try a lower train.lr or guidance scale"
            )

    def _log_metrics(self, step: int, result: StepResult, seconds: float, steps_done: int) -> None:
        record: dict[str, Any] = {"step": step, "loss": result.loss, "finite": result.finite}
        record.update(result.stats)
        record["nonfinite_total"] = self.nonfinite_total
        record["it_per_s"] = steps_done / seconds if seconds > 0 else None
        record["denoiser_calls"] = self.prior.counter.calls
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
            "it_per_s": steps_done / seconds if seconds > 0 else None,
            "nonfinite_steps": self.nonfinite_total,
            "denoiser_calls_this_session": self.prior.counter.calls,
        }


