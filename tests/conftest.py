"""Shared test settings: tiny, fast runs on the CPU."""

from __future__ import annotations

import pytest

#: Overrides that make a text-to-3D run take seconds on a CPU (oracle prior, 16x16 renders).
TINY_RUN = [
    "prior.name=oracle",
    "background.type=solid",
    "render.resolution=16",
    "render.eval_resolution=16",
    "render.samples_per_ray=16",
    "field.resolutions=[16,32]",
    "field.hidden_dim=16",
    "guidance.msd.guidance_scale=1.0",
    "guidance.msd.kernel=posterior",
    "guidance.msd.sampler_steps=2",
    "guidance.msd.lambda_start=8.0",
    "guidance.msd.lambda_end=0.5",
    "guidance.sds.guidance_scale=1.0",
    "shading.albedo_only_steps=1000000",
    "regularisers.orientation.start=0.0",
    "regularisers.orientation.end=0.0",
    "train.val_every=0",
    "train.log_every=1",
    "train.eval_views=2",
    "train.val_views=2",
    "mesh.resolution=24",
    "mesh.formats=[obj]",
    "video.frames=4",
    "video.size=32",
]


@pytest.fixture
def tiny_run_overrides() -> list[str]:
    return list(TINY_RUN)
