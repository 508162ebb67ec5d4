"""The training views of a run: for each step, its cameras, prompts, shading mode and lights.

Each step's view is drawn from a generator seeded by ``(seed, step)`` alone, not from the trainer's
running generator. So the views of any future step are known in advance (a prior whose conditioning
is expensive, the oracle, renders the next steps' targets in one batch and in the background), and a
resumed run needs no extra state to draw the same views as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from msd3d.render.cameras import CameraConfig, Cameras, sample_cameras, view_prompts
from msd3d.render.shading import ShadingConfig, choose_shading, needs_light, sample_light_positions

#: Mixed into the per-step seed so the view stream never coincides with another stream of the same seed.
_VIEW_STREAM = 0x5EED_71E3


@dataclass
class TrainingView:
    """What the trainer renders at one step and what the prior is conditioned on.

    cameras: ``camera.batch_size`` cameras (CPU); prompts: one per camera; shading: "albedo",
    "lambertian" or "textureless"; light_positions: (B, 3) point lights (CPU), or None for albedo.
    """

    step: int
    cameras: Cameras
    prompts: list[str]
    shading: str
    light_positions: Tensor | None


def step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator seeded from ``(seed, step)`` (well mixed: neighbouring steps are unrelated)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(step), _VIEW_STREAM]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class ViewStream:
    """``view(step)``: the :class:`TrainingView` of a step, a pure function of the settings, seed and step."""

    def __init__(
        self,
        prompt: str,
        camera: CameraConfig,
        shading: ShadingConfig,
        resolution: int,
        seed: int,
        view_dependent_prompts: bool = True,
    ) -> None:
        self.prompt = prompt
        self.camera = camera
        self.shading = shading
        self.resolution = resolution
        self.seed = seed
        self.view_dependent_prompts = view_dependent_prompts

    def view(self, step: int) -> TrainingView:
        generator = step_generator(self.seed, step)
        cameras = sample_cameras(self.camera, self.resolution, generator=generator)
        prompts = (
            view_prompts(self.prompt, cameras, self.camera)
            if self.view_dependent_prompts else [self.prompt] * len(cameras)
        )
        shading = choose_shading(step, self.shading, generator)
        lights = sample_light_positions(cameras, self.shading, generator) if needs_light(shading) else None
        return TrainingView(step=step, cameras=cameras, prompts=prompts, shading=shading, light_positions=lights)

    def views(self, start: int, stop: int) -> list[TrainingView]:
        """The views of steps ``start .. stop - 1``."""
        return [self.view(step) for step in range(start, stop)]
