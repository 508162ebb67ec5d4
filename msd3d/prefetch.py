"""The prior's conditions for the coming training steps, computed ahead of the trainer in batches.

Each step's view (cameras, prompts, shading, lights) is known in advance
(:class:`~msd3d.render.views.ViewStream`), so for a prior whose conditioning is expensive
(``DiffusionPrior.prefetch_conditions``: the oracle sphere-traces its target images) the conditions
of ``chunk`` steps are asked for in one :meth:`~msd3d.priors.base.DiffusionPrior.condition_many`
call. Batches are aligned to the step number (steps ``k * chunk .. (k + 1) * chunk - 1``), so a run
resumed in the middle of a batch conditions every step in the same batch as an uninterrupted run and
stays bit-identical to it. Across chunk sizes the conditions agree to float rounding only: vectorised
CPU kernels (``cos``, ``sqrt``...) round the tail of a tensor differently from its body, so a value can
move by an ulp with the batch it is computed in (up to ~1e-5 in lit oracle images, whose normals are
finite differences); unlit images are exact.

Measured (``scripts/bench_cpu.py``, docs/results/cpu_speed.md): on 2 CPU cores the oracle's
conditioning costs 13.9 ms per step one step at a time and 5.9 ms at 16 steps per batch. Computing the
next batch in a background thread was tried and gave nothing more there (the trainer already keeps
both cores busy), so there is no thread.
"""

from __future__ import annotations

import torch

from msd3d.priors.base import Condition, ConditionRequest, DiffusionPrior
from msd3d.render.views import TrainingView, ViewStream


class ConditionPrefetcher:
    """``get(step)``: the step's :class:`TrainingView` and the prior's :class:`Condition` for it.

    chunk: steps conditioned per ``condition_many`` call (1: one call per step); end: the step after
    the last one to prepare (a batch never reaches past it).
    """

    def __init__(
        self,
        prior: DiffusionPrior,
        views: ViewStream,
        end: int,
        negative_prompt: str = "",
        ambient_ratio: float = 0.1,
        device: torch.device | str = "cpu",
        chunk: int = 1,
    ) -> None:
        self.prior = prior
        self.views = views
        self.end = end
        self.negative_prompt = negative_prompt
        self.ambient_ratio = ambient_ratio
        self.device = torch.device(device)
        self.chunk = max(1, int(chunk))
        self._ready: dict[int, tuple[TrainingView, Condition]] = {}

    def _request(self, view: TrainingView) -> ConditionRequest:
        lights = view.light_positions
        return ConditionRequest(
            prompts=view.prompts,
            negative_prompt=self.negative_prompt,
            cameras=view.cameras.to(self.device),
            shading=view.shading,
            light_positions=None if lights is None else lights.to(self.device),
            ambient_ratio=self.ambient_ratio,
        )

    def get(self, step: int) -> tuple[TrainingView, Condition]:
        if step not in self._ready:  # the first step, the end of a batch, or a jump (resume)
            start = step - step % self.chunk  # the whole aligned batch, also when resuming inside it
            views = self.views.views(start, max(step + 1, min(start + self.chunk, self.end)))
            conditions = self.prior.condition_many([self._request(v) for v in views])
            self._ready = {v.step: (v, c) for v, c in zip(views, conditions) if v.step >= step}
        return self._ready.pop(step)
