"""Stable Diffusion (any SD 1.x / 2.x diffusers checkpoint) as a VE-denoiser prior.

Conversion between SD's discrete VP parameterisation and msd3d's VE denoiser (DESIGN.md §2),
exact for every sigma, not only on the 1000 training timesteps:

* noise level: ``sigma = sqrt((1 - alpha_bar) / alpha_bar)``, i.e. ``alpha_bar = 1 / (1 + sigma^2)``;
* input: the UNet sees the VP latent ``z_vp = sqrt(alpha_bar) z = z / sqrt(1 + sigma^2)`` (VE
  ``z = y + sigma n`` becomes ``sqrt(alpha_bar) y + sqrt(1 - alpha_bar) n``);
* timestep: the (fractional, ``timestep_mapping="interp"``, or rounded, ``"nearest"``) training step
  whose schedule sigma equals ``sigma``, interpolated in log sigma by :class:`VPSchedule`;
* output: epsilon-prediction ``D = z - sigma eps``; v-prediction
  (``v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) y``) ``D = alpha_bar z - sqrt(alpha_bar) sigma v``;
  sample-prediction ``D = out``.

Latents: images in [0, 1] are resized to ``render_size`` (threestudio upsamples 64x64 renders to 512),
mapped to [-1, 1] and VAE-encoded to the posterior *mean* times the VAE's ``scaling_factor`` (no
sampling, so a resumed run sees the same latents); the encode is differentiable.

This module imports diffusers / transformers only inside functions, so importing
:class:`StableDiffusionConfig` is cheap; the prior itself is only built when requested.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from msd3d.device import resolve_device
from msd3d.errors import ModelLoadError
from msd3d.priors.base import Condition, DiffusionPrior
from msd3d.priors.schedule import VPSchedule

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
TIMESTEP_MAPPINGS = ("interp", "nearest")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
COMPONENT_FOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_TRUE = {"1", "ON", "YES", "TRUE"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


@dataclass
class StableDiffusionConfig:
    """Which SD checkpoint to load and how to run it."""

    model: str = "stabilityai/stable-diffusion-2-1-base"
    """Hugging Face hub id or local diffusers folder (model_index.json, unet/, vae/, ...)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit); ignored for local folders."""
    dtype: str = "auto"
    """Model dtype: "auto" (fp16 on CUDA, fp32 on CPU), "fp16", "bf16" or "fp32"."""
    render_size: int = 512
    """Renders are resized (bilinear) to render_size x render_size before VAE encoding."""
    timestep_mapping: str = "interp"
    """sigma -> UNet timestep: "interp" (fractional, exact in log sigma) or "nearest" (training step)."""
    channels_last: bool = False
    """Run the UNet and VAE in channels-last memory format (often faster on GPUs)."""
    compile_unet: bool = False
    """torch.compile the UNet forward (CUDA only; the first calls are slow while it compiles)."""
    compile_mode: str = "default"
    """torch.compile mode of the UNet: "default", "reduce-overhead" (CUDA graphs: least launch
    overhead, one graph per batch size), "max-autotune" or "max-autotune-no-cudagraphs"."""
    compile_vae: bool = False
    """torch.compile the differentiable encode (resize + VAE encoder, forward and backward; CUDA only)."""
    cudnn_benchmark: bool = True
    """On CUDA, let cuDNN pick the fastest convolution algorithms for the (fixed) shapes of a run
    (sets the process-wide ``torch.backends.cudnn.benchmark``)."""
    attention_slicing: bool = False
    """Compute attention in slices to save memory (slower)."""
    local_files_only: bool = False
    """Never contact the hub (also implied by HF_HUB_OFFLINE=1)."""

    def validate(self) -> None:
        if not self.model.strip():
            raise ValueError("prior.sd.model must name a hub id or a local folder")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"prior.sd.dtype must be auto, {', '.join(DTYPES)}; got {self.dtype!r}")
        if self.render_size < 8 or self.render_size % 8:
            raise ValueError("prior.sd.render_size must be a positive multiple of 8")
        if self.timestep_mapping not in TIMESTEP_MAPPINGS:
            raise ValueError(f"prior.sd.timestep_mapping must be one of {', '.join(TIMESTEP_MAPPINGS)}")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"prior.sd.compile_mode must be one of {', '.join(COMPILE_MODES)}, got {self.compile_mode!r}")


# ------------------------------------------------------------------------------------------------
# devices, dtypes, offline mode


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """"auto" -> fp16 on CUDA, fp32 elsewhere."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def hub_offline(config: StableDiffusionConfig | None = None) -> bool:
    """Whether the hub must not be contacted (``local_files_only`` or HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(config is not None and config.local_files_only) or env.strip().upper() in _TRUE


# ------------------------------------------------------------------------------------------------
# loading


def _fix_hint(model: str) -> str:
    return (
        f"download it while online with `huggingface-cli download {model}`, "
        "or pass a local diffusers folder with --model / prior.sd.model"
    )


def _first_line(err: BaseException, limit: int = 160) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _missing_files(folder: Path) -> list[str]:
    """Component files a local SD folder lacks (config files only; weights are checked by loading)."""
    required = {
        "unet": "unet/config.json",
        "vae": "vae/config.json",
        "text_encoder": "text_encoder/config.json",
        "tokenizer": "tokenizer",
        "scheduler": "scheduler/scheduler_config.json",
    }
    return [path for path in required.values() if not (folder / path).exists()]


def load_components(config: StableDiffusionConfig, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Tokenizer, text encoder, UNet, VAE and scheduler config of an SD checkpoint, on CPU.

    Raises :class:`ModelLoadError` with one line naming the model, the reason and the fix.
    """
    model = config.model.strip()
    path = Path(model).expanduser()
    is_local = path.is_dir()
    if not is_local and (path.exists() or not _HUB_ID.match(model)):
        raise ModelLoadError(
            f"Stable Diffusion model folder {model!r} does not exist (or is not a folder); "
            "pass a diffusers folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/) "
            "with --model / prior.sd.model"
        )
    if is_local:
        missing = _missing_files(path)
        if missing:
            raise ModelLoadError(
                f"Stable Diffusion model folder {model!r} lacks {', '.join(missing)}; "
                "pass a complete diffusers folder with --model / prior.sd.model"
            )
    offline = hub_offline(config)
    source = str(path) if is_local else model
    revision = {"revision": config.revision} if config.revision and not is_local else {}
    if not is_local and not offline:
        # a cached copy loads without touching the network; only fall back to the hub without one
        try:
            return _load(source, dtype, local_files_only=True, **revision)
        except Exception:
            pass
    try:
        return _load(source, dtype, local_files_only=offline or is_local, **revision)
    except Exception as err:  # diffusers / transformers / huggingface_hub raise many kinds
        reason = _first_line(err)
        if is_local:
            msg = (
                f"Stable Diffusion model folder {model!r} lacks files or has unreadable weights ({reason}); "
                "pass a complete diffusers folder with --model / prior.sd.model"
            )
        elif offline:
            msg = (
                f"Stable Diffusion model {model!r} is not in the local Hugging Face cache and offline mode is on "
                f"(HF_HUB_OFFLINE=1 or prior.sd.local_files_only); {_fix_hint(model)}"
            )
        else:
            msg = f"could not load Stable Diffusion model {model!r}: {_hub_failure(err)}; {_fix_hint(model)}"
        raise ModelLoadError(msg) from err


def _hub_failure(err: BaseException) -> str:
    """Why a hub load failed, in a few words, from the exception chain."""
    chain, seen = [], set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or current.__context__
    names = {cls.__name__ for e in chain for cls in type(e).__mro__}
    if names & {"RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError"}:
        return "the hub has no such (public) model or revision; check the id, or log in with `huggingface-cli login`"
    if names & {"ConnectError", "ConnectTimeout", "ConnectionError", "Timeout", "TimeoutException", "gaierror",
                "LocalEntryNotFoundError", "OfflineModeIsEnabled"}:
        return "the Hugging Face hub is unreachable and the model is not in the local cache"
    return f"loading failed ({_first_line(err)})"


def _load(source: str, dtype: torch.dtype, **common: Any) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
        return _load_components(source, dtype, common)


def _load_components(source: str, dtype: torch.dtype, common: dict[str, Any]) -> dict[str, Any]:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    # the smallest file first, so a missing model fails before any large download
    scheduler_config = DDPMScheduler.load_config(source, subfolder="scheduler", **common)
    tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **common)
    text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", dtype=dtype, **common)
    vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype, **common)
    unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype, **common)
    return {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "unet": unet,
        "vae": vae,
        "scheduler": dict(scheduler_config),
    }


def schedule_from_scheduler_config(scheduler: Any) -> tuple[VPSchedule, str]:
    """``(VPSchedule, prediction_type)`` from a diffusers scheduler or its config dict.

    The betas come from diffusers' own DDPM scheduler (``beta_schedule``, ``trained_betas``,
    zero-terminal-SNR rescaling...), so the schedule is exactly the one the checkpoint was trained with.
    A zero-terminal-SNR ``alpha_bar_T = 0`` (sigma infinite) is clamped to ``2**-24`` as diffusers does.
    """
    from diffusers import DDPMScheduler

    config = dict(scheduler.config) if hasattr(scheduler, "config") else dict(scheduler)
    prediction_type = config.get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:
        raise ModelLoadError(
            f"unsupported scheduler prediction_type {prediction_type!r}; supported: {', '.join(PREDICTION_TYPES)}"
        )
    keep = {k: v for k, v in config.items() if not k.startswith("_")}
    ddpm = DDPMScheduler.from_config(keep)
    alphas_cumprod = ddpm.alphas_cumprod.double().clamp(min=2.0**-24)
    return VPSchedule(alphas_cumprod), prediction_type


# ------------------------------------------------------------------------------------------------
# the prior


class StableDiffusionPrior(DiffusionPrior):
    """SD as a VE denoiser on VAE latents (B, 4, render_size/8, render_size/8).

    ``condition`` payloads are CLIP text embeddings (B, 77, D); classifier-free guidance runs both
    branches in one batched UNet call (base class). Data in and out is float32 (``self.dtype``);
    the networks run in ``self.model_dtype``. All weights are frozen and in eval mode.
    """

    def __init__(self, config: StableDiffusionConfig | None = None, device: str | torch.device = "auto") -> None:
        config = config or StableDiffusionConfig()
        config.validate()
        device = resolve_device(device)
        components = load_components(config, resolve_dtype(config.dtype, device))
        super().__init__()
        self._setup(config, device, **components)

    @classmethod
    def from_pretrained(
        cls, model: str, device: str | torch.device = "auto", **config_kwargs: Any
    ) -> StableDiffusionPrior:
        """Shorthand for ``StableDiffusionPrior(StableDiffusionConfig(model=model, ...), device)``."""
        return cls(StableDiffusionConfig(model=model, **config_kwargs), device)

    @classmethod
    def from_components(
        cls,
        *,
        tokenizer: Any,
        text_encoder: torch.nn.Module,
        unet: torch.nn.Module,
        vae: torch.nn.Module,
        scheduler: Any,
        config: StableDiffusionConfig | None = None,
        device: str | torch.device = "auto",
    ) -> StableDiffusionPrior:
        """A prior over in-memory components (e.g. random weights from ``sd_architectures``).

        ``scheduler`` is a diffusers scheduler or its config dict; ``config.model`` is only a label here.
        """
        config = config or StableDiffusionConfig(model="<in-memory>")
        config.validate()
        prior = cls.__new__(cls)
        DiffusionPrior.__init__(prior)
        prior._setup(
            config,
            resolve_device(device),
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            unet=unet,
            vae=vae,
            scheduler=scheduler,
        )
        return prior

    def _setup(
        self,
        config: StableDiffusionConfig,
        device: torch.device,
        *,
        tokenizer: Any,
        text_encoder: torch.nn.Module,
        unet: torch.nn.Module,
        vae: torch.nn.Module,
        scheduler: Any,
    ) -> None:
        self.config = config
        self.device = device
        self.model_dtype = resolve_dtype(config.dtype, device)
        self.dtype = torch.float32
        self.schedule, self.prediction_type = schedule_from_scheduler_config(scheduler)
        self.tokenizer = tokenizer
        self.text_encoder, self.unet, self.vae = text_encoder, unet, vae
        for module in (text_encoder, unet, vae):
            # nn.Module.to, not ModelMixin.to (which warns about fp32 modules even when there are none)
            torch.nn.Module.to(module, device=device, dtype=self.model_dtype)
            module.eval().requires_grad_(False)
        if config.channels_last:
            unet.to(memory_format=torch.channels_last)
            vae.to(memory_format=torch.channels_last)
        if config.attention_slicing and hasattr(unet, "set_attention_slice"):
            unet.set_attention_slice("auto")
        self._unet_forward = unet
        self._encode_latents = self._encode_latents_eager
        #: CUDA graphs replay into fixed buffers: mark a new step before each call (outputs are copied at once)
        self._cudagraph_steps = False
        if device.type == "cuda":
            if config.cudnn_benchmark:
                torch.backends.cudnn.benchmark = True
            if config.compile_unet:
                # dynamic=False: one specialised graph per batch size (CFG 2B, no-CFG B), no symbolic shapes
                self._unet_forward = torch.compile(unet, mode=config.compile_mode, dynamic=False)
                self._cudagraph_steps = config.compile_mode in ("reduce-overhead", "max-autotune")
            if config.compile_vae:
                self._encode_latents = torch.compile(self._encode_latents_eager, dynamic=False)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_channels = int(vae.config.latent_channels)
        self.latent_size = config.render_size // self.vae_scale_factor
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(getattr(vae.config, "shift_factor", None) or 0.0)
        self.max_length = int(getattr(tokenizer, "model_max_length", 77))
        if self.max_length > 10_000:  # tokenizers without a configured length report a huge sentinel
            self.max_length = int(text_encoder.config.max_position_embeddings)
        self._text_cache: dict[str, Tensor] = {}
        #: text-encoder forward passes so far (each encodes every not-yet-cached prompt of one call)
        self.text_encoder_calls = 0

    # -- conditioning --------------------------------------------------------------------------
    @torch.no_grad()
    def text_embeddings(self, prompts: Sequence[str]) -> Tensor:
        """(N, 77, D) embeddings in the model dtype; each distinct string is encoded once, ever."""
        new = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if new:
            tokens = self.tokenizer(
                new, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
            )
            mask = None
            if getattr(self.text_encoder.config, "use_attention_mask", False):
                mask = tokens.attention_mask.to(self.device)
            hidden = self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0]
            self.text_encoder_calls += 1
            for prompt, emb in zip(new, hidden.to(self.model_dtype)):
                self._text_cache[prompt] = emb
        return torch.stack([self._text_cache[p] for p in prompts])

    def clear_text_cache(self) -> None:
        self._text_cache.clear()

    def condition(
        self,
        prompts: Sequence[str],
        *,
        negative_prompt: str = "",
        cameras: Any | None = None,
        shading: str | None = None,
        light_positions: Any | None = None,
        ambient_ratio: float = 0.1,
    ) -> Condition:
        """Text embeddings per sample: cond (B, 77, D); uncond is the negative prompt's, repeated."""
        prompts = [str(p) for p in prompts]
        embeddings = self.text_embeddings(prompts + [negative_prompt])
        cond, uncond = embeddings[:-1], embeddings[-1:].expand(len(prompts), -1, -1)
        return Condition(cond=cond, uncond=uncond, batch_size=len(prompts), prompts=prompts)

    # -- denoising -----------------------------------------------------------------------------
    def unet_timestep(self, sigma: Tensor) -> Tensor:
        """(B,) float UNet timestep for VE noise levels ``sigma`` (B,)."""
        t = self.schedule.timestep_from_sigma(sigma)
        return t.round() if self.config.timestep_mapping == "nearest" else t

    def denoise_raw(self, z: Tensor, sigma: Tensor, payload: Tensor) -> Tensor:
        """``D(z, sigma)`` for latents z (B, 4, h, w), sigma (B,), text embeddings (B, 77, D)."""
        s = sigma.to(device=z.device, dtype=torch.float32).view(-1, 1, 1, 1)
        c_in = torch.rsqrt(1.0 + s**2)  # sqrt(alpha_bar)
        z32 = z.float()
        z_vp = (z32 * c_in).to(device=self.device, dtype=self.model_dtype)
        if self.config.channels_last:
            z_vp = z_vp.contiguous(memory_format=torch.channels_last)
        # on the model's device: no host round trip (the schedule interpolates there)
        timestep = self.unet_timestep(sigma.to(device=self.device, dtype=torch.float32))
        if self._cudagraph_steps:
            torch.compiler.cudagraph_mark_step_begin()
        out = self._unet_forward(
            z_vp, timestep, encoder_hidden_states=payload.to(device=self.device, dtype=self.model_dtype),
            return_dict=False,
        )[0]
        if self._cudagraph_steps and out.dtype == torch.float32:
            out = out.clone()  # a CUDA graph's output buffer is overwritten by its next replay
        out = out.float().to(z.device)  # (.float() of fp16/bf16 is already a copy)
        if self.prediction_type == "epsilon":
            d = z32 - s * out
        elif self.prediction_type == "v_prediction":
            d = c_in**2 * z32 - c_in * s * out
        else:
            d = out
        return d.to(z.dtype)

    # -- data space ----------------------------------------------------------------------------
    def encode(self, images: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [0, 1] -> latents (B, 4, R/8, R/8) float32, R = render_size.

        Differentiable with respect to ``images`` (the weights are frozen, not the graph).
        """
        return self._encode_latents(images.to(self.device))

    def _encode_latents_eager(self, images: Tensor) -> Tensor:
        """:meth:`encode` on the model's device (what ``compile_vae`` compiles)."""
        size = self.config.render_size
        x = images
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        x = (2.0 * x - 1.0).to(self.model_dtype)
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        posterior = self.vae.encode(x).latent_dist
        latents = (posterior.mean - self.shift_factor) * self.scaling_factor
        return latents.to(self.dtype)

    def decode(self, latents: Tensor) -> Tensor:
        """Latents (B, 4, h, w) -> images (B, 3, 8h, 8w) in [0, 1], float32."""
        z = (latents.to(self.device, self.model_dtype) / self.scaling_factor) + self.shift_factor
        images = self.vae.decode(z).sample
        return (images.float() * 0.5 + 0.5).clamp(0.0, 1.0)

    def latent_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        return (batch, self.latent_channels, self.latent_size, self.latent_size)

    def __repr__(self) -> str:
        return (
            f"StableDiffusionPrior(model={self.config.model!r}, device={self.device}, dtype={self.model_dtype}, "
            f"prediction={self.prediction_type}, latents={self.latent_shape()[1:]})"
        )
