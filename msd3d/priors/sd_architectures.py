"""Stable Diffusion architectures with random weights: no downloads, real code paths.

Two architectures, built from plain configs the way diffusers' own tests build their dummy
pipelines:

* ``"tiny"`` — a few-thousand-parameter UNet / VAE / CLIP text encoder with SD's *structure*
  (4-channel latents, an 8x VAE, cross-attention on 77 text tokens, SD-2's linear projections),
  for tests: it builds, saves and loads in a few seconds on CPU.
* ``"sd21"`` — the real SD-2.1-base architecture (UNet ~866 M parameters, the 83 M-parameter
  KL-f8 VAE, the 23-layer 1024-wide OpenCLIP-ViT-H text tower as diffusers stores it), so timings
  with random weights are the true speed of the real model when its weights are not available.

The tokenizer is a genuine byte-level CLIP BPE tokenizer with a minimal vocabulary (every byte, with
and without the end-of-word suffix, plus the two special tokens), written as ``vocab.json`` +
``merges.txt`` exactly like SD's own ``tokenizer/`` folders, so it needs no download.

:func:`save_random_pipeline` writes a diffusers-layout folder (``model_index.json``, ``unet/``,
``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) that :class:`StableDiffusionPrior` loads
through exactly the code path of a real checkpoint. :func:`build_random_components` returns the
same components in memory. Both import diffusers / transformers lazily.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

ARCHITECTURES = ("tiny", "sd21")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
MODEL_MAX_LENGTH = 77

# SD-2.1-base's scheduler/scheduler_config.json (a PNDM scheduler over the scaled-linear DDPM schedule).
SD21_SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "trained_betas": None,
}


def unet_config(arch: str) -> dict[str, Any]:
    """Keyword arguments of ``UNet2DConditionModel`` for ``arch``."""
    if arch == "tiny":
        return dict(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(16, 32),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=(2, 4),
            cross_attention_dim=32,
            norm_num_groups=8,
            use_linear_projection=True,
        )
    if arch == "sd21":
        return dict(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=(5, 10, 20, 20),
            cross_attention_dim=1024,
            norm_num_groups=32,
            norm_eps=1e-5,
            use_linear_projection=True,
            upcast_attention=False,
            flip_sin_to_cos=True,
            freq_shift=0,
            downsample_padding=1,
            mid_block_scale_factor=1,
            act_fn="silu",
            center_input_sample=False,
            dual_cross_attention=False,
        )
    raise ValueError(_unknown(arch))


def vae_config(arch: str) -> dict[str, Any]:
    """Keyword arguments of ``AutoencoderKL`` for ``arch`` (both downsample 8x to 4 channels)."""
    blocks = 4
    if arch == "tiny":
        channels, layers, groups, sample = (8, 8, 16, 16), 1, 4, 64
    elif arch == "sd21":
        channels, layers, groups, sample = (128, 256, 512, 512), 2, 32, 512
    else:
        raise ValueError(_unknown(arch))
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=channels,
        layers_per_block=layers,
        act_fn="silu",
        latent_channels=4,
        norm_num_groups=groups,
        sample_size=sample,
        scaling_factor=0.18215,
    )


def text_encoder_config(arch: str, vocab_size: int) -> dict[str, Any]:
    """Keyword arguments of ``CLIPTextConfig`` for ``arch``."""
    ids = dict(bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    if arch == "tiny":
        return dict(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=MODEL_MAX_LENGTH,
            projection_dim=32,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
            **ids,
        )
    if arch == "sd21":
        # SD-2.x stores OpenCLIP ViT-H/14's text tower minus its last layer (23 of 24), GELU, 49408 tokens.
        return dict(
            vocab_size=49408,
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=23,
            num_attention_heads=16,
            max_position_embeddings=MODEL_MAX_LENGTH,
            projection_dim=512,
            hidden_act="gelu",
            layer_norm_eps=1e-5,
            **ids,
        )
    raise ValueError(_unknown(arch))


def scheduler_config(arch: str, prediction_type: str | None = None) -> dict[str, Any]:
    """The scheduler config both architectures ship with (SD-2.1-base's), optionally re-targeted."""
    if arch not in ARCHITECTURES:
        raise ValueError(_unknown(arch))
    config = dict(SD21_SCHEDULER_CONFIG)
    if prediction_type is not None:
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}")
        config["prediction_type"] = prediction_type
    return config


# ------------------------------------------------------------------------------------------------
# tokenizer


def _byte_level_alphabet() -> list[str]:
    """GPT-2 / CLIP's reversible byte -> printable-unicode map, as the 256 characters in byte order."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes, extra = [], 0
    chars: dict[int, int] = {b: b for b in printable}
    for b in range(256):
        if b not in chars:
            chars[b] = 256 + extra
            extra += 1
    for b in range(256):
        codes.append(chr(chars[b]))
    return codes


def tiny_clip_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A complete (if merge-free) CLIP BPE vocabulary: 256 bytes, 256 end-of-word bytes, 2 specials.

    Every string tokenizes (one token per byte), so the tokenizer behaves like CLIP's on any prompt,
    just with longer token sequences.
    """
    alphabet = _byte_level_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, []


def build_tokenizer():
    """A ``CLIPTokenizer`` over :func:`tiny_clip_vocab` with SD's 77-token context."""
    from transformers import CLIPTokenizer

    vocab, merges = tiny_clip_vocab()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MODEL_MAX_LENGTH)


def _write_tokenizer_files(folder: Path) -> None:
    """SD's ``tokenizer/`` layout: ``vocab.json``, ``merges.txt``, ``tokenizer_config.json``, specials."""
    vocab, merges = tiny_clip_vocab()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    specials = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2), encoding="utf-8")
    tokenizer_config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "do_lower_case": True,
        "add_prefix_space": False,
        "errors": "replace",
        **specials,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2), encoding="utf-8")


# ------------------------------------------------------------------------------------------------
# components


def build_random_components(
    arch: str = "tiny",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    seed: int = 0,
    prediction_type: str | None = None,
) -> dict[str, Any]:
    """Randomly initialised SD components, built directly on ``device``.

    Returns ``{"tokenizer", "text_encoder", "unet", "vae", "scheduler"}`` — the keyword arguments of
    :meth:`StableDiffusionPrior.from_components`. The same ``seed`` gives the same weights.
    """
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if arch not in ARCHITECTURES:
        raise ValueError(_unknown(arch))
    tokenizer = build_tokenizer()
    vocab_size = len(tokenizer)
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.device(device):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_encoder_config(arch, vocab_size)))
        unet = UNet2DConditionModel(**unet_config(arch))
        vae = AutoencoderKL(**vae_config(arch))
    scheduler = PNDMScheduler.from_config(scheduler_config(arch, prediction_type))
    for module in (text_encoder, unet, vae):
        # nn.Module.to, not ModelMixin.to: the latter warns about fp32 modules even when there are none
        torch.nn.Module.to(module, device=device, dtype=dtype).eval().requires_grad_(False)
    return {"tokenizer": tokenizer, "text_encoder": text_encoder, "unet": unet, "vae": vae, "scheduler": scheduler}


def save_random_pipeline(
    arch: str,
    folder: str | os.PathLike[str],
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    prediction_type: str | None = None,
    overwrite: bool = True,
) -> Path:
    """Write a random-weight SD pipeline as a diffusers folder; returns the folder.

    The folder is assembled next to its destination and renamed into place, so an interrupted call
    never leaves a half-written pipeline behind.
    """
    import diffusers

    target = Path(folder)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists")
    components = build_random_components(arch, "cpu", dtype, seed=seed, prediction_type=prediction_type)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        for name in ("unet", "vae", "text_encoder"):
            components[name].save_pretrained(tmp / name, safe_serialization=True)
        components["scheduler"].save_pretrained(tmp / "scheduler")
        _write_tokenizer_files(tmp / "tokenizer")
        model_index = {
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": diffusers.__version__,
            "_msd3d_random_architecture": arch,
            "feature_extractor": [None, None],
            "requires_safety_checker": False,
            "safety_checker": [None, None],
            "scheduler": ["diffusers", type(components["scheduler"]).__name__],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }
        (tmp / "model_index.json").write_text(json.dumps(model_index, indent=2), encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


# ------------------------------------------------------------------------------------------------
# single-file checkpoints in the original (CompVis / LDM) layout


_RESNET_TO_LDM_UNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                       "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_ATTENTION_TO_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _unet_key_to_ldm(key: str, levels: int, layers: int) -> str:
    """A diffusers ``UNet2DConditionModel`` state-dict key -> its key in an original SD checkpoint."""
    parts = key.split(".")
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    for old, new in fixed.items():
        if key.startswith(old + "."):
            return new + key[len(old):]

    def resnet(rest: list[str]) -> str:
        return ".".join([_RESNET_TO_LDM_UNET[rest[0]], *rest[1:]])

    if parts[0] == "down_blocks":
        i, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
        if kind == "downsamplers":  # downsamplers.0.conv.weight -> input_blocks.N.0.op.weight
            return f"input_blocks.{(i + 1) * (layers + 1)}.0.op." + ".".join(rest[1:])
        block = 1 + i * (layers + 1) + j
        return f"input_blocks.{block}." + (f"0.{resnet(rest)}" if kind == "resnets" else "1." + ".".join(rest))
    if parts[0] == "mid_block":
        kind, j, rest = parts[1], int(parts[2]), parts[3:]
        return f"middle_block.{2 * j}.{resnet(rest)}" if kind == "resnets" else "middle_block.1." + ".".join(rest)
    if parts[0] == "up_blocks":
        i, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
        if kind == "upsamplers":  # after the resnet (and the attention, when the block has one)
            return f"output_blocks.{i * (layers + 1) + layers}.{{up}}." + ".".join(rest)
        block = i * (layers + 1) + j
        return f"output_blocks.{block}." + (f"0.{resnet(rest)}" if kind == "resnets" else "1." + ".".join(rest))
    raise KeyError(f"no original-layout name for UNet key {key!r}")


def _vae_key_to_ldm(key: str, levels: int) -> str:
    """A diffusers ``AutoencoderKL`` state-dict key -> its key in an original SD checkpoint."""
    for old, new in (("conv_shortcut", "nin_shortcut"), ("conv_norm_out", "norm_out")):
        key = key.replace(old, new)
    parts = key.split(".")
    if parts[0] in ("encoder", "decoder") and parts[1] in ("down_blocks", "up_blocks"):
        i = int(parts[2]) if parts[1] == "down_blocks" else levels - 1 - int(parts[2])
        stage = "down" if parts[1] == "down_blocks" else "up"
        kind, rest = parts[3], parts[4:]
        if kind == "resnets":
            return f"{parts[0]}.{stage}.{i}.block.{rest[0]}." + ".".join(rest[1:])
        return f"{parts[0]}.{stage}.{i}.{'downsample' if stage == 'down' else 'upsample'}." + ".".join(rest[1:])
    if parts[0] in ("encoder", "decoder") and parts[1] == "mid_block":
        kind, j, rest = parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "resnets":
            return f"{parts[0]}.mid.block_{j + 1}.{rest}"
        for old, new in _VAE_ATTENTION_TO_LDM.items():
            if rest.startswith(old + "."):
                return f"{parts[0]}.mid.attn_1.{new}{rest[len(old):]}"
    return key


def original_checkpoint(components: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The UNet, VAE and (CLIP-layout) text encoder of ``components`` as one state dict in the original
    SD single-file layout (``model.diffusion_model.*``, ``first_stage_model.*``,
    ``cond_stage_model.transformer.*``): what ``.safetensors`` / ``.ckpt`` files of SD 1.x hold.

    The inverse of diffusers' ``from_single_file`` conversion, for any number of levels and layers
    per block (diffusers ships this direction only as a repository script for the 4-level SD UNet).
    """
    unet, vae, text_encoder = components["unet"], components["vae"], components["text_encoder"]
    levels, layers = len(unet.config.block_out_channels), int(unet.config.layers_per_block)
    out: dict[str, torch.Tensor] = {}
    up_attention = {i for i, t in enumerate(unet.config.up_block_types) if "CrossAttn" in t}
    for key, value in unet.state_dict().items():
        ldm = _unet_key_to_ldm(key, levels, layers)
        if "{up}" in ldm:
            ldm = ldm.replace("{up}", "2" if int(key.split(".")[1]) in up_attention else "1")
        out["model.diffusion_model." + ldm] = value.detach().clone().contiguous()
    vae_levels = len(vae.config.block_out_channels)
    for key, value in vae.state_dict().items():
        ldm = _vae_key_to_ldm(key, vae_levels)
        if ".mid.attn_1." in ldm and ldm.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # the original VAE attention uses 1x1 convolutions
        out["first_stage_model." + ldm] = value.detach().clone().contiguous()
    for key, value in text_encoder.state_dict().items():
        # SD 1.x files hold the Hugging Face CLIP layout under cond_stage_model.transformer.text_model.
        key = key if key.startswith("text_model.") else "text_model." + key
        out["cond_stage_model.transformer." + key] = value.detach().clone().contiguous()
    return out


def save_random_single_file(
    arch: str, path: str | os.PathLike[str], *, seed: int = 0, dtype: torch.dtype = torch.float32
) -> Path:
    """Write the random-weight pipeline of ``arch`` (same ``seed`` -> same weights as
    :func:`save_random_pipeline`) as one ``.safetensors`` / ``.ckpt`` file in the original layout."""
    from safetensors.torch import save_file

    target = Path(path)
    state = original_checkpoint(build_random_components(arch, "cpu", dtype, seed=seed))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    if target.suffix.lower() == ".ckpt":
        torch.save({"state_dict": state}, tmp)
    else:
        save_file(state, str(tmp))
    os.replace(tmp, target)
    return target


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _unknown(arch: str) -> str:
    return f"unknown SD architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}"
