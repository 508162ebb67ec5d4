"""VSD (ProlificDreamer): its LoRA learns the renders, shares the prior's frozen weights without changing
them, resumes bit-exactly, and priors without a network refuse it in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from msd3d.config import load_config
from msd3d.errors import Msd3dError
from msd3d.guidance.vsd import VSD, VSDConfig
from msd3d.train import Trainer

_TINY: dict = {}
SHIPPED_PRIOR = Path(__file__).parents[1] / "msd3d" / "catalogue" / "weights" / "learned_prior.safetensors"


def _tiny_learned_prior():
    """The learned catalogue prior at 8x8 with a two-level UNet (one training step: weights are random)."""
    from msd3d.catalogue.learned_prior import LearnedPriorTrainConfig, prior_from_components, train_learned_prior

    if "components" not in _TINY:
        config = LearnedPriorTrainConfig(render_size=8, block_out_channels=(8, 16), attention_head_dim=4, text_dim=8,
                                         families=("mushroom",), views_per_variant=1, steps=1, batch=2)
        _TINY["components"] = (train_learned_prior(config)[0], config)
    return prior_from_components(*_TINY["components"])


def _unet_state(prior) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in prior.unet.state_dict().items()}


def _train(guidance: VSD, x: torch.Tensor, cond, steps: int, lr: float) -> None:
    """``steps`` Adam steps of the LoRA on its own loss, with a fixed noise stream."""
    optimizer = torch.optim.Adam(guidance.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        optimizer.zero_grad()
        guidance(x, cond, generator=gen).aux_loss.backward()
        optimizer.step()


def test_lora_learns_the_renders_and_leaves_the_prior_alone():
    """On the shipped learned prior (the real network): the LoRA's denoising loss on fixed renders halves."""
    from msd3d.catalogue.learned_prior import load_learned_prior

    prior = load_learned_prior(SHIPPED_PRIOR)
    before = _unet_state(prior)
    guidance = VSD(prior, VSDConfig(camera_dropout=0.0))
    # the copy shares the frozen weights (no second UNet in memory) and adds only the adapter
    shared = {p.data_ptr() for p in prior.unet.parameters()}
    frozen = [p for p in guidance.estimate.unet.parameters() if not p.requires_grad]
    assert frozen and all(p.data_ptr() in shared for p in frozen)
    assert all(p.data_ptr() not in shared for p in guidance.parameters())

    size = prior.train_config.render_size
    coarse = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    x = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear") * 2 - 1  # smooth "renders"
    cond = prior.condition(["a mushroom"] * 2)
    # at step 0 the LoRA is the prior's conditional denoiser (peft zero-initialises LoRA's B)
    z = x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    sigma = torch.full((2,), 0.5)
    with torch.no_grad():
        torch.testing.assert_close(guidance.estimate.denoise(z, sigma, cond), prior.denoise(z, sigma, cond, 1.0))

    def mean_loss(draws: int = 4) -> float:
        gen = torch.Generator().manual_seed(7)  # the same noise and times before and after training
        with torch.no_grad():
            return sum(float(guidance(x, cond, generator=gen).aux_loss) for _ in range(draws)) / draws

    start = mean_loss()
    _train(guidance, x, cond, steps=25, lr=3e-3)
    end = mean_loss()
    assert end < 0.7 * start, (start, end)  # measured 0.083 -> 0.039
    # the prior's own UNet is untouched, and the LoRA's estimate has moved away from it
    after = _unet_state(prior)
    assert all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        assert not torch.allclose(guidance.estimate.denoise(z, sigma, cond), prior.denoise(z, sigma, cond, 1.0))


def _vsd_config(overrides: list[str], steps: int):
    values = {"prompt": "a mushroom", "train.steps": steps, "guidance.name": "vsd", "device": "cpu"}
    return load_config(None, [*overrides, "render.resolution=8", "render.eval_resolution=8"], values)


def test_resumed_vsd_run_matches_uninterrupted(tmp_path, tiny_run_overrides):
    config = _vsd_config(tiny_run_overrides, steps=4)
    full = Trainer(config, tmp_path / "full", prior=_tiny_learned_prior(), show_progress=False)
    full.fit()

    first = Trainer(config, tmp_path / "split", prior=_tiny_learned_prior(), show_progress=False)
    first.fit(stop_at=2)
    second = Trainer(config, tmp_path / "split", prior=_tiny_learned_prior(), show_progress=False)
    second.resume()
    second.fit()

    def flat(state) -> list[torch.Tensor]:
        return [state[k] for k in sorted(state)]

    for a, b in zip(flat(full.renderer.state_dict()), flat(second.renderer.state_dict()), strict=True):
        assert torch.equal(a, b)
    lora_full, lora_split = full.guidance.state_dict()["lora"], second.guidance.state_dict()["lora"]
    assert lora_full.keys() == lora_split.keys()
    assert all(torch.equal(lora_full[k], lora_split[k]) for k in lora_full)
    # the LoRA trained (its weights left their zero start) and the optimiser has a "guidance" group at lora_lr
    assert any(float(v.abs().max()) > 0 for v in lora_full.values())
    group = next(g for g in second.optimizer.param_groups if g["name"] == "guidance")
    assert group["lr"] == config.guidance.vsd.lora_lr
    # three denoiser calls per step: the prior (with CFG), the LoRA's estimate, the LoRA's training pass
    assert full.guidance.denoiser_calls() == 3


def test_oracle_prior_refuses_vsd_in_one_line(tmp_path, tiny_run_overrides):
    config = load_config(None, tiny_run_overrides, {"prompt": "a red mushroom", "guidance.name": "vsd",
                                                   "train.steps": 2, "device": "cpu"})
    with pytest.raises(Msd3dError) as info:
        Trainer(config, tmp_path / "run", show_progress=False)
    message = str(info.value)
    assert "\n" not in message and "no network" in message and "--prior learned" in message


def test_stable_diffusion_lora_sees_the_camera(tmp_path):
    """On SD (a UNet without a class embedding) the LoRA gets threestudio's camera embedding: it starts at
    zero (so the copy equals the prior), trains, and then the same latent at two cameras denoises differently."""
    from msd3d.priors.sd_architectures import save_random_pipeline
    from msd3d.priors.stable_diffusion import StableDiffusionConfig, StableDiffusionPrior
    from msd3d.render.cameras import turntable_cameras

    folder = save_random_pipeline("tiny", tmp_path / "tiny", seed=0)
    prior = StableDiffusionPrior(StableDiffusionConfig(model=str(folder), render_size=64), device="cpu")
    guidance = VSD(prior, VSDConfig(camera_dropout=0.0))
    assert guidance.estimate.camera_embedding is not None and prior.unet.class_embedding is None
    cameras = turntable_cameras(2, 16)
    cond = prior.condition(["a red chair"] * 2, cameras=cameras)
    assert cond.extrinsics is not None and cond.extrinsics.shape == (2, 4, 4)
    x = torch.randn(prior.latent_shape(2), generator=torch.Generator().manual_seed(0))
    z, sigma = x[:1].repeat(2, 1, 1, 1), torch.full((2,), 1.0)
    with torch.no_grad():
        torch.testing.assert_close(guidance.estimate.denoise(z, sigma, cond), prior.denoise(z, sigma, cond, 1.0))
    _train(guidance, x, cond, steps=3, lr=1e-2)
    with torch.no_grad():
        d = guidance.estimate.denoise(z, sigma, cond)
    assert not torch.allclose(d[0], d[1])  # same latent, different camera
