"""Text to image (``msd3d image PROMPT``): optimise an image directly with any registered guidance method.

The "scene" is a learnable tensor: in pixel space an image batch (N, 3, S, S) in [0, 1] that each step
goes through ``prior.encode`` (the learned and oracle priors; Stable Diffusion through its VAE), or in
latent space the prior's data itself (Stable Diffusion: a 4 x S/8 x S/8 latent, decoded to S x S for the
output). Each step mirrors :meth:`msd3d.train.Trainer.train_step`: ``x = encode(image)`` (or the latent),
``guided = guidance(x, cond, step, total, generator=...)``, loss ``guided.loss(x)`` (+ ``aux_loss``),
Adam; a non-finite step is skipped. The guidance never knows the prior and this module never imports
diffusers.

Conditioning: one fixed front camera (``camera.eval_elevation`` / ``eval_distance`` / ``eval_fovy``,
azimuth 0) for every image, passed to ``prior.condition(cameras=...)``: the oracle renders its variants
there, a camera-conditioned learned prior sees it, text priors ignore it. With ``view_dependent_prompts``
the prompt gets that camera's view word ("a mushroom, front view"), as the 3-D trainer's prompts do.

Output folder: ``image_00.png`` ..., ``grid.png``, ``summary.json`` and ``report.html``, written at the
end as one atomic set (the page last): an interrupted or failed run leaves nothing behind.
"""

from __future__ import annotations

import io
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from msd3d.atomic_io import atomic_write_files, json_safe
from msd3d.config import RunConfig, check_text
from msd3d.errors import ConfigError, Msd3dError
from msd3d.naming import run_name
from msd3d.validation import check_choice, check_range, join

IMAGE_SPACES = ("auto", "pixels", "latent")
IMAGE_INITS = ("white", "gray", "noise")
SUMMARY_NAME = "summary.json"
REPORT_NAME = "report.html"
GRID_NAME = "grid.png"
#: Grid and report tiles are upscaled (nearest neighbour) to at least this many pixels.
MIN_TILE = 128


@dataclass
class ImageConfig:
    """``msd3d image``: the optimised image batch (keys ``image.*``; prior and guidance come from the recipe)."""

    steps: int = 500
    """Optimisation steps (guidance schedules such as MSD's lambda and SDI's t run over this many)."""
    lr: float = 0.02
    """Adam learning rate of the image (pixels in [0, 1]) or of the latent (``space``)."""
    size: int = 0
    """Image side in pixels; 0 = the prior's own (learned: its training size, 32; Stable Diffusion:
    ``prior.sd.render_size``, which a size sets; oracle: ``render.resolution``)."""
    n: int = 4
    """Images made at once, as one batch (each from its own noise); at most 64."""
    space: str = "auto"
    """What is optimised: "pixels" (an image through ``prior.encode``), "latent" (the prior's data
    directly, decoded for the output) or "auto" (latent for Stable Diffusion, pixels otherwise)."""
    init: str = "white"
    """Starting image: "white" (the catalogue priors' background), "gray" or "noise" (uniform, from the
    seed); in latent space its encoding."""

    def validate(self, path: str = "image") -> None:
        check_range(join(path, "steps"), self.steps, 1)
        check_range(join(path, "lr"), self.lr, 0, low_open=True)
        check_range(join(path, "n"), self.n, 1, 64)
        check_range(join(path, "size"), self.size, 0, 2048)
        if 0 < self.size < 8:
            raise ValueError(f"{join(path, 'size')} must be 0 (the prior's own) or at least 8, got {self.size}")
        check_choice(join(path, "space"), self.space, IMAGE_SPACES)
        check_choice(join(path, "init"), self.init, IMAGE_INITS)


def load_image_run_config(
    config: str | None, prior: str | None, guidance: str | None, overrides: list[str], values: dict[str, Any]
) -> RunConfig:
    """The run configuration of ``msd3d image``: the recipe ``--config`` or, by default, the shipped
    ``<guidance>-<prior>.yaml`` (:func:`~msd3d.config.resolve_recipe`). When that recipe does not exist
    (the learned prior ships only ``msd-learned.yaml``) the guidance section comes from
    ``<guidance>-sd.yaml``: the Stable Diffusion defaults the learned prior stands in for, as
    ``scripts/oracle_bench.py --prior learned`` does. Flags (``values``) and ``overrides`` apply on top."""
    from msd3d.config import load_config, load_yaml, recipe_dir, resolve_recipe

    recipe = resolve_recipe(config, prior, guidance)
    method, name = guidance or "msd", prior or "sd"
    section: dict[str, Any] = {}
    sd_recipe = recipe_dir() / f"{method}-sd.yaml"
    if config is None and not (recipe_dir() / f"{method}-{name}.yaml").is_file() and sd_recipe.is_file():
        from omegaconf import OmegaConf

        section = {"guidance": OmegaConf.to_container(load_yaml(sd_recipe).get("guidance", {}))}
    return load_config(recipe, overrides, {**section, **values})


def default_out_dir(config: RunConfig) -> Path:
    """``config.out``, or ``outputs/images/<prompt-slug>-<guidance>-<prior>-<seed>``."""
    if config.out:
        return Path(config.out)
    return Path("outputs") / "images" / run_name(config.prompt, config.guidance.name, config.prior.name, config.seed)


def check_out_dir(out_dir: Path) -> None:
    """The output folder must be new or empty: earlier images are never overwritten."""
    if out_dir.exists() and not out_dir.is_dir():
        raise Msd3dError(f"output folder {str(out_dir)!r} is a file; pass a new folder with --out")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise Msd3dError(f"output folder {str(out_dir)!r} is not empty; choose another --out (or remove it)")


def _native_size(prior: Any, config: RunConfig) -> int:
    """The prior's own image size: Stable Diffusion's ``render_size`` (the learned prior's training size),
    else ``render.resolution`` (the oracle renders at whatever size it is asked)."""
    size = getattr(getattr(prior, "config", None), "render_size", None)
    return int(size) if size else int(config.render.resolution)


def _initial_images(kind: str, n: int, size: int, generator: torch.Generator) -> Tensor:
    if kind == "noise":
        return torch.rand((n, 3, size, size), generator=generator)
    return torch.full((n, 3, size, size), 1.0 if kind == "white" else 0.5)


def generate_images(
    config: RunConfig,
    image: ImageConfig,
    out_dir: Path | None = None,
    prior: Any | None = None,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Optimise ``image.n`` images for ``config.prompt`` and write them, a grid, ``summary.json`` and
    ``report.html`` into ``out_dir`` (new or empty). Returns the summary (plus ``out_dir``)."""
    from msd3d.catalogue.image_scores import image_scorer, image_statistics, mean_scores
    from msd3d.device import resolve_device
    from msd3d.guidance import build_guidance
    from msd3d.priors.choice import build_prior
    from msd3d.progress_bar import make_progress
    from msd3d.render.cameras import turntable_cameras, view_name
    from msd3d.train import TrainingDiverged

    t_start = time.perf_counter()
    try:
        image.validate()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    prompt = config.prompt
    if not prompt.strip():
        raise Msd3dError('the prompt is empty; pass a prompt such as "a red mushroom"')
    try:
        check_text(prompt, "prompt")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(config)
    check_out_dir(out_dir)
    device = resolve_device(config.device)
    if prior is None and config.prior.name == "sd":
        from msd3d.priors.stable_diffusion import check_available

        if image.size:
            config.prior.sd.render_size = image.size  # the latent is size/8, decoded to size x size
            try:
                config.prior.sd.validate()
            except ValueError as exc:
                raise ConfigError(f"--size {image.size}: {exc}") from None
        check_available(config.prior.sd)  # no weights, no network: one line now

    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    prior = prior if prior is not None else build_prior(config.prior, device)
    prior.validate_prompt(prompt)
    native = _native_size(prior, config)
    size = image.size or native
    space = image.space if image.space != "auto" else ("latent" if config.prior.name == "sd" else "pixels")
    if space == "latent" and size != native:
        raise ConfigError(
            f"image.size={size}: in latent space the image is the prior's own {native}x{native} decoding; "
            "drop --size or use image.space=pixels"
        )

    cam = config.camera
    camera = turntable_cameras(1, size, elevation=cam.eval_elevation, distance=cam.eval_distance, fovy=cam.eval_fovy)
    view = view_name(cam.eval_elevation, 0.0, cam) if config.view_dependent_prompts else None
    conditioned = f"{prompt}, {view} view" if view else prompt
    scorer = image_scorer(prior, prompt, camera, view)  # None outside the catalogue (Stable Diffusion)
    n = image.n
    cond = prior.condition(
        [conditioned] * n, negative_prompt=config.negative_prompt,
        cameras=camera[torch.zeros(n, dtype=torch.long)].to(prior.device),
    )
    guidance = build_guidance(config.guidance.name, prior, config.guidance)

    init = _initial_images(image.init, n, size, generator).to(prior.device)
    with torch.no_grad():
        start = init if space == "pixels" else prior.encode(init).detach()
    param = start.clone().requires_grad_(True)
    groups = [{"params": [param], "lr": image.lr}]
    if guidance.parameters():
        lr = guidance.learning_rate() or config.train.lr_network
        groups.append({"params": list(guidance.parameters()), "lr": lr})
    optimizer = torch.optim.Adam(groups, betas=tuple(config.train.betas), eps=config.train.adam_eps)

    steps, nonfinite, streak, last_loss, last_stats = image.steps, 0, 0, math.nan, {}
    calls_before = prior.counter.calls
    t_train = time.perf_counter()
    with make_progress(show_progress) as progress:
        task = progress.add_task("image", total=steps, loss=float("nan"), lam="")
        for step in range(steps):
            x = prior.encode(param) if space == "pixels" else param
            guided = guidance(x, cond, step, steps, generator=generator)
            loss = guided.loss(x)
            if guided.aux_loss is not None:  # a method training its own parameters
                loss = loss + guided.aux_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grads = [p.grad for g in groups for p in g["params"] if p.grad is not None]
            finite = bool(torch.stack([torch.isfinite(loss.detach()), *(torch.isfinite(g).all() for g in grads)]).all())
            if finite:
                optimizer.step()
                if space == "pixels":
                    with torch.no_grad():
                        param.clamp_(0.0, 1.0)  # projected: the image stays an image
                streak, last_loss = 0, float(loss.detach())
                last_stats = {k: float(v) for k, v in guided.stats.items()}
            else:
                optimizer.zero_grad(set_to_none=True)
                nonfinite, streak = nonfinite + 1, streak + 1
                if streak >= config.train.max_nonfinite_streak:
                    raise TrainingDiverged(
                        f"stopped at step {step}: {streak} consecutive steps had a non-finite loss or gradient; "
                        "nothing was written; try a lower image.lr or guidance scale"
                    )
            lam = last_stats.get("lambda")
            progress.update(task, advance=1, loss=last_loss, lam=f" λ {lam:.3g}" if lam is not None else "")
    train_seconds = time.perf_counter() - t_train

    with torch.no_grad():
        images = (param.detach().clamp(0, 1) if space == "pixels" else prior.decode(param.detach())).float().cpu()
    per_image: list[dict[str, Any]]
    if scorer is not None:
        per_image = scorer(images)
    else:
        stats = image_statistics(images)
        per_image = [{"saturation": s, "contrast": c} for s, c in zip(stats["saturation"], stats["contrast"])]
    scores: dict[str, Any] = {"images": per_image, "mean": mean_scores(per_image)}
    if scorer is not None:
        scores["scoring"] = {**scorer.describe(), "blank_mode_psnr": scorer.blank_psnr(int(images.shape[-1]))}
    else:
        scores["scoring"] = {"method": "image statistics only: this prior has no known modes to compare with"}

    names = [f"image_{i:02d}.png" for i in range(n)]
    summary: dict[str, Any] = {
        "kind": "msd3d image",
        "prompt": prompt,
        "conditioned_prompt": conditioned,
        "negative_prompt": config.negative_prompt,
        "prior": config.prior.name,
        "guidance": config.guidance.name,
        "guidance_settings": asdict(getattr(config.guidance, config.guidance.name)),
        "seed": config.seed,
        "steps": steps,
        "n": n,
        "size": int(images.shape[-1]),
        "space": space,
        "lr": image.lr,
        "init": image.init,
        "device": str(device),
        "camera": {"elevation": cam.eval_elevation, "azimuth": 0.0, "distance": cam.eval_distance,
                   "fovy": cam.eval_fovy},
        "train_seconds": train_seconds,
        "it_per_s": steps / train_seconds if train_seconds > 0 else None,
        "final_loss": last_loss,
        "nonfinite_steps": nonfinite,
        "denoiser_calls": prior.counter.calls - calls_before,
        "scores": scores,
        "files": {"images": names, "grid": GRID_NAME, "report": REPORT_NAME},
    }
    summary["seconds"] = time.perf_counter() - t_start  # everything but writing the files
    arrays = [to_uint8(img) for img in images]
    files: dict[Path, bytes] = {out_dir / name: png_bytes(a) for name, a in zip(names, arrays)}
    files[out_dir / GRID_NAME] = png_bytes(grid(arrays))
    files[out_dir / SUMMARY_NAME] = (json.dumps(json_safe(summary), indent=2) + "\n").encode()
    files[out_dir / REPORT_NAME] = report_html(summary).encode()  # last: it shows the others
    created = not out_dir.exists()
    try:
        atomic_write_files(files)
    except BaseException:
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    log(f"images: {out_dir / GRID_NAME}")
    log(f"report: {out_dir / REPORT_NAME}")
    return {**summary, "out_dir": str(out_dir)}


# -- files ----------------------------------------------------------------------------------------
def to_uint8(image: Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3) uint8."""
    return (image.clamp(0, 1).permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def tile_scale(size: int) -> int:
    """Nearest-neighbour upscale factor of a grid tile: small images are shown at least MIN_TILE wide."""
    return max(1, MIN_TILE // max(size, 1))


def grid(arrays: list[np.ndarray], pad: int = 2) -> np.ndarray:
    """Images (H, W, 3) in a grid of ``ceil(sqrt(n))`` columns, each upscaled by :func:`tile_scale`,
    ``pad`` white pixels between and around tiles."""
    h, w = arrays[0].shape[:2]
    s = tile_scale(max(h, w))
    cols = math.ceil(math.sqrt(len(arrays)))
    rows = math.ceil(len(arrays) / cols)
    th, tw = h * s, w * s
    out = np.full((rows * th + (rows + 1) * pad, cols * tw + (cols + 1) * pad, 3), 255, np.uint8)
    for i, a in enumerate(arrays):
        r, c = divmod(i, cols)
        y, x = pad + r * (th + pad), pad + c * (tw + pad)
        out[y : y + th, x : x + tw] = a.repeat(s, 0).repeat(s, 1)
    return out


def grid_shape(n: int, size: int, pad: int = 2) -> tuple[int, int]:
    """(height, width) of :func:`grid` for ``n`` square images of side ``size``."""
    s, cols = tile_scale(size), math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    return rows * size * s + (rows + 1) * pad, cols * size * s + (cols + 1) * pad


def report_html(summary: dict[str, Any]) -> str:
    """A small static page: the summary, the grid and each image with its scores (images by relative path)."""
    from msd3d.report_html import CSS, _esc, _fmt, _table

    scores = summary["scores"]
    rows = [(k, _fmt(summary[k])) for k in ("prompt", "conditioned_prompt", "prior", "guidance", "seed", "steps",
                                            "n", "size", "space", "lr", "device", "train_seconds", "it_per_s",
                                            "seconds", "denoiser_calls", "nonfinite_steps")]
    rows += [(f"mean {k}", _fmt(v)) for k, v in scores["mean"].items()]
    rows.append(("scoring", scores["scoring"]["method"]))
    if "blank_mode_psnr" in scores["scoring"]:
        rows.append(("mode PSNR of a blank image", _fmt(scores["scoring"]["blank_mode_psnr"])))
    width = summary["size"] * tile_scale(summary["size"])
    style = f"width:{width}px;image-rendering:pixelated;display:block"
    cards = []
    for name, score in zip(summary["files"]["images"], scores["images"]):
        lines = [f"{k}: {_fmt(v)}" for k, v in score.items() if isinstance(v, (int, float, str))]
        cards.append(
            f"<figure style='display:inline-block;margin:6px'><img src='{_esc(name)}' alt='{_esc(name)}' "
            f"style='{style}'><figcaption class=sub>{'<br>'.join(_esc(t) for t in [name, *lines])}"
            "</figcaption></figure>"
        )
    body = (
        f"<h1>{_esc(summary['prompt'])}</h1>"
        f"<p class=sub>msd3d image: {_esc(summary['guidance'])} on the {_esc(summary['prior'])} prior</p>"
        f"<img src='{GRID_NAME}' alt='all images' style='image-rendering:pixelated;max-width:100%'>"
        f"<h2>Summary</h2>{_table(rows)}<h2>Images</h2><div>{''.join(cards)}</div>"
    )
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>{_esc(summary['prompt'])}: msd3d image</title><style>{CSS}</style></head>"
        f"<body><main>{body}<p class=sub>written by <code>msd3d image</code>; the numbers are in "
        f"<a href='{SUMMARY_NAME}'>{SUMMARY_NAME}</a></p></main></body></html>\n"
    )
