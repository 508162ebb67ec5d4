"""StableDiffusionPrior on a tiny random SD pipeline saved to disk and loaded like a real checkpoint."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from msd3d.config import load_config, resolve_recipe
from msd3d.errors import ModelLoadError
from msd3d.guidance import GuidanceConfig, build_guidance
from msd3d.priors.sd_architectures import build_random_components, save_random_pipeline
from msd3d.priors.stable_diffusion import StableDiffusionConfig, StableDiffusionPrior

RENDER = 64  # tiny VAE downsamples 8x like SD's: 64x64 renders -> 4x8x8 latents


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_random_pipeline("tiny", tmp_path_factory.mktemp("sd") / "tiny-eps", seed=0)


@pytest.fixture(scope="module")
def prior(folder):
    return StableDiffusionPrior(StableDiffusionConfig(model=str(folder), render_size=RENDER), device="cpu")


@pytest.fixture(scope="module")
def vprior(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd") / "tiny-v"
    save_random_pipeline("tiny", folder, seed=1, prediction_type="v_prediction")
    return StableDiffusionPrior(StableDiffusionConfig(model=str(folder), render_size=RENDER), device="cpu")


def _latents(prior, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(prior.latent_shape(batch), generator=g)


def _reference_timestep(alphas_cumprod: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Fractional timestep by linear interpolation of log sigma over the training schedule (numpy)."""
    ac = alphas_cumprod.double().numpy()
    log_sigmas = np.log(np.sqrt((1 - ac) / ac))
    t = np.interp(np.log(sigma.double().numpy()), log_sigmas, np.arange(len(ac)))
    return torch.from_numpy(t).float()


# -- loading ---------------------------------------------------------------------------------------


def test_loads_local_folder_with_saved_weights(prior, folder):
    assert prior.prediction_type == "epsilon"
    assert prior.latent_shape(2) == (2, 4, RENDER // 8, RENDER // 8)
    assert prior.model_dtype == torch.float32 and prior.device.type == "cpu"
    for module in (prior.unet, prior.vae, prior.text_encoder):
        assert not module.training
        assert all(not p.requires_grad for p in module.parameters())
    # the folder holds exactly the weights build_random_components makes with the same seed
    fresh = build_random_components("tiny", seed=0)
    for name in ("unet", "vae", "text_encoder"):
        loaded, ref = getattr(prior, name).state_dict(), fresh[name].state_dict()
        assert loaded.keys() == ref.keys()
        assert all(torch.equal(loaded[k], ref[k]) for k in ref), name
    assert (folder / "model_index.json").is_file() and (folder / "tokenizer" / "vocab.json").is_file()


def test_in_memory_components_match_loaded_folder(prior):
    mem = StableDiffusionPrior.from_components(
        **build_random_components("tiny", seed=0), config=StableDiffusionConfig(render_size=RENDER), device="cpu"
    )
    cond_a, cond_b = prior.condition(["a red chair"]), mem.condition(["a red chair"])
    torch.testing.assert_close(cond_a.cond, cond_b.cond)
    z = _latents(prior, 1)
    torch.testing.assert_close(prior.denoise(z, 2.0, cond_a, 5.0), mem.denoise(z, 2.0, cond_b, 5.0))


def test_schedule_matches_scheduler_alphas_cumprod(prior, folder):
    from diffusers import PNDMScheduler

    scheduler = PNDMScheduler.from_pretrained(folder, subfolder="scheduler")
    torch.testing.assert_close(prior.schedule.alphas_cumprod, scheduler.alphas_cumprod.double(), rtol=1e-6, atol=0)
    # and SD's scaled-linear closed form (diffusers keeps alphas_cumprod in float32, hence rtol 5e-5)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    ac = torch.cumprod(1 - betas, 0)
    torch.testing.assert_close(prior.schedule.sigmas, ((1 - ac) / ac).sqrt(), rtol=5e-5, atol=0)
    assert prior.sigma_min == pytest.approx(math.sqrt((1 - ac[0]) / ac[0]), rel=5e-5)


def test_sigma_timestep_round_trip(prior):
    t = torch.tensor([0.0, 0.37, 12.5, 250.0, 500.25, 998.9, 999.0])
    sigma = prior.schedule.sigma_from_timestep(t)
    torch.testing.assert_close(prior.unet_timestep(sigma), t, atol=2e-3, rtol=0)
    torch.testing.assert_close(prior.unet_timestep(sigma), _reference_timestep(prior.schedule.alphas_cumprod, sigma),
                               atol=2e-3, rtol=0)
    # on the training steps sigma is exactly sqrt((1 - alpha_bar) / alpha_bar), i.e. alpha_bar = 1/(1+sigma^2)
    steps = torch.tensor([0.0, 10.0, 999.0])
    ac = prior.schedule.alphas_cumprod[steps.long()]
    on_steps = prior.schedule.sigma_from_timestep(steps).double()
    torch.testing.assert_close(on_steps, ((1 - ac) / ac).sqrt(), rtol=1e-5, atol=0)
    nearest = StableDiffusionPrior.from_components(
        **build_random_components("tiny"), config=StableDiffusionConfig(timestep_mapping="nearest"), device="cpu"
    )
    assert torch.equal(nearest.unet_timestep(sigma), t.round())


# -- denoiser --------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["eps", "v"])
def test_denoiser_matches_hand_computation(which, prior, vprior):
    p = prior if which == "eps" else vprior
    assert p.prediction_type == ("epsilon" if which == "eps" else "v_prediction")
    cond = p.condition(["a cat", "a dog"])
    z = _latents(p, 2, seed=3) * 4.0
    sigma = torch.tensor([0.3, 7.0])
    d = p.denoise_raw(z, sigma, cond.cond)

    ab = (1 / (1 + sigma**2)).view(-1, 1, 1, 1)  # VP signal fraction at each sigma
    z_vp = z * ab.sqrt()
    t = _reference_timestep(p.schedule.alphas_cumprod, sigma)
    out = p.unet(z_vp, t, encoder_hidden_states=cond.cond).sample
    if which == "eps":
        expected = z - sigma.view(-1, 1, 1, 1) * out
    else:  # x0 = sqrt(ab) z_vp - sqrt(1 - ab) v
        expected = ab.sqrt() * z_vp - (1 - ab).sqrt() * out
    torch.testing.assert_close(d, expected, atol=1e-5, rtol=1e-5)
    assert d.dtype == z.dtype and torch.isfinite(d).all()


def test_classifier_free_guidance_is_one_batched_call(prior):
    cond = prior.condition(["a cat", "a dog"], negative_prompt="blurry")
    z, sigma = _latents(prior, 2, seed=4), torch.tensor([1.5, 1.5])
    d_c = prior.denoise_raw(z, sigma, cond.cond)
    d_u = prior.denoise_raw(z, sigma, cond.uncond)
    assert not torch.allclose(d_c, d_u)  # the negative prompt matters
    prior.counter.reset()
    guided = prior.denoise(z, 1.5, cond, guidance_scale=4.0)
    assert (prior.counter.calls, prior.counter.evaluations) == (1, 4)
    torch.testing.assert_close(guided, d_u + 4.0 * (d_c - d_u), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(prior.denoise(z, 1.5, cond, guidance_scale=1.0), d_c)
    assert (prior.counter.calls, prior.counter.evaluations) == (2, 6)


def test_text_embeddings_are_cached_per_prompt(prior):
    forwards = []
    handle = prior.text_encoder.register_forward_hook(lambda mod, args, out: forwards.append(args[0].shape[0]))
    try:
        prior.clear_text_cache()
        first = prior.condition(["a chair", "a table", "a chair"], negative_prompt="")
        assert forwards == [3]  # one batched pass over the 3 distinct strings (2 prompts + negative)
        assert first.cond.shape == (3, 77, 32) and first.uncond.shape == (3, 77, 32)
        again = prior.condition(["a chair", "a table", "a chair"], negative_prompt="")
        assert forwards == [3]  # nothing re-encoded
        torch.testing.assert_close(again.cond, first.cond)
        prior.condition(["a chair", "a lamp"], negative_prompt="")
        assert forwards == [3, 1]  # only the new prompt
        torch.testing.assert_close(first.cond[0], first.cond[2])
        assert not torch.allclose(first.cond[0], first.cond[1])
        cached = prior.text_embeddings(["a lamp"])
        prior.clear_text_cache()
        torch.testing.assert_close(prior.text_embeddings(["a lamp"]), cached)  # cache == fresh encoding
        assert forwards == [3, 1, 1]
    finally:
        handle.remove()


# -- latents ---------------------------------------------------------------------------------------


def test_encode_is_deterministic_vae_mean_and_decode_range(prior):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    latents = prior.encode(images)
    assert latents.shape == prior.latent_shape(2) and latents.dtype == torch.float32
    torch.testing.assert_close(prior.encode(images), latents, rtol=0, atol=0)
    resized = F.interpolate(images, size=(RENDER, RENDER), mode="bilinear", align_corners=False)
    expected = prior.vae.encode(2 * resized - 1).latent_dist.mean * prior.vae.config.scaling_factor
    torch.testing.assert_close(latents, expected)
    decoded = prior.decode(latents)
    assert decoded.shape == (2, 3, RENDER, RENDER)
    assert decoded.min() >= 0 and decoded.max() <= 1


@pytest.mark.parametrize("method", ["sds", "msd", "sdi"])
def test_guidance_gradient_reaches_the_image(method, prior):
    config = GuidanceConfig()
    config.msd.sampler_steps, config.sdi.inversion_steps = 3, 3
    guidance = build_guidance(method, prior, config)
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(6)).requires_grad_(True)
    cond = prior.condition(["a wooden chair, front view"])
    latents = prior.encode(image)
    out = guidance(latents, cond, step=0, total_steps=10, generator=torch.Generator().manual_seed(7))
    loss = out.loss(latents)
    loss.backward()
    grad = image.grad
    assert torch.isfinite(loss) and torch.isfinite(grad).all() and grad.abs().sum() > 0
    # the image gradient is the encoder's vector-Jacobian product of w (x - target) / B
    (vjp,) = torch.autograd.grad(prior.encode(image), image, grad_outputs=out.gradient(latents.detach()))
    torch.testing.assert_close(grad, vjp, rtol=1e-4, atol=1e-7)


# -- errors ----------------------------------------------------------------------------------------


def _load_error(model: str) -> str:
    with pytest.raises(ModelLoadError) as info:
        StableDiffusionPrior(StableDiffusionConfig(model=model), device="cpu")
    message = str(info.value)
    assert "\n" not in message and model in message
    return message


def test_missing_local_folder_raises_one_line(tmp_path):
    message = _load_error(str(tmp_path / "no-such-model"))
    assert "does not exist" in message and "--model" in message
    (tmp_path / "partial" / "unet").mkdir(parents=True)
    message = _load_error(str(tmp_path / "partial"))
    assert "lacks" in message and "vae/config.json" in message


def test_offline_hub_id_raises_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = "msd3d-tests/sd-model-that-is-never-cached"  # a real id could sit in this machine's cache
    message = _load_error(model)
    assert "offline" in message and f"hf download {model}" in message and "huggingface-cli" not in message


def test_config_validation():
    for kwargs, key in [({"dtype": "fp8"}, "dtype"), ({"render_size": 30}, "render_size"),
                        ({"timestep_mapping": "floor"}, "timestep_mapping"), ({"model": " "}, "model")]:
        with pytest.raises(ValueError, match=f"prior.sd.{key}"):
            StableDiffusionConfig(**kwargs).validate()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_runs_in_fp16():
    p = StableDiffusionPrior.from_components(
        **build_random_components("tiny"), config=StableDiffusionConfig(render_size=RENDER), device="cuda"
    )
    assert p.model_dtype == torch.float16
    image = torch.rand(1, 3, 32, 32, device="cuda", requires_grad=True)
    latents = p.encode(image)
    d = p.denoise(latents, 3.0, p.condition(["a cat"]), 7.5)
    assert d.dtype == torch.float32 and torch.isfinite(d).all()


@pytest.mark.parametrize("recipe", ["sdi-sd", "msd-sd"])
def test_recipe_guidance_runs_on_the_pipeline(recipe, prior):
    """The SD recipes' guidance settings (SDI's official ones: negative inversion CFG, fixed grid with a random
    offset, DDPM-scaled eta, constant weight; MSD with the product start) run through a real UNet."""
    config = load_config(resolve_recipe(recipe)).guidance
    config.msd.start = "product"
    guidance = build_guidance(config.name, prior, config)
    latents = _latents(prior, 1, seed=3)
    cond = prior.condition(["a wooden chair, front view"])
    calls = prior.counter.calls
    out = guidance(latents, cond, step=5, total_steps=10, generator=torch.Generator().manual_seed(2))
    assert torch.isfinite(out.target).all() and out.target.shape == latents.shape
    assert 1 < prior.counter.calls - calls <= guidance.denoiser_calls()
    if recipe == "sdi-sd":
        torch.testing.assert_close(out.weight, torch.ones(1))  # the official loss: no w(t)
        assert out.stats["t"] <= out.stats["t_end"] <= out.stats["t"] + 0.1
