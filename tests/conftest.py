"""Shared test settings: tiny, fast runs on the CPU."""

from __future__ import annotations

import pytest
import torch

#: Overrides that make a text-to-3D run take seconds on a CPU (oracle prior, 16x16 renders).
TINY_RUN = [
    "prior.name=oracle",
    "background.type=solid",
    "render.resolution=16",
    "render.eval_resolution=16",
    "render.samples_per_ray=16",
    "field.nerf.resolutions=[16,32]",
    "field.nerf.hidden_dim=16",
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


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """The tests' tensors are tiny: one intra-op thread is as fast on an idle machine and many times
    faster on a busy one (measured up to 15x on 2 shared cores), so timings stay predictable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


#: A small 2-D mixture used by the prior and estimator tests.
GMM_MEANS = [[-1.0, 0.0], [1.0, 0.5], [0.0, -1.2]]
GMM_COVS = [[[0.3, 0.1], [0.1, 0.1]], [[0.1, 0.0], [0.0, 0.4]], [[0.15, 0.0], [0.0, 0.15]]]
GMM_WEIGHTS = [0.5, 0.3, 0.2]
