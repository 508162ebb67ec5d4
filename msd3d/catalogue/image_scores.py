"""Scores of generated *images* (``msd3d image``) against the catalogue: how close each image is to a
training render of the prompt's family, and whether its colours are oversaturated.

For every image, independently:

* ``mode_psnr``: PSNR to the nearest single render of one of the family's variants, nearest over the
  scoring set: the cameras the prior was conditioned on (the oracle and a camera-conditioned learned
  prior: the one fixed camera, albedo) or, for a text-only prior (the shipped learned prior: it sees no
  camera, only the view word of "a mushroom, front view"), a grid of cameras over its training ranges
  restricted to that view word, each in the prior's three training looks (albedo; lambertian and
  textureless lit from the camera). ``variant_psnr[name]`` is the same maximum for one variant, so
  ``mode_psnr == max(variant_psnr.values())`` and ``mode_psnr`` is at least the PSNR to any single
  render of the set, by definition;
* ``blend_psnr``: PSNR to the variants' mean image (the blend a mean-seeking method drifts to), nearest
  over the same cameras and looks; ``mode_minus_blend_db`` the difference;
* ``nearest_variant`` / ``nearest_camera`` / ``nearest_look``: where the mode PSNR was found;
* ``blank_mode_psnr`` (:meth:`ImageScorer.blank_psnr`, once per run): the mode PSNR of a blank image of
  the background colour. The object covers a small part of a 32 x 32 frame, so an empty image already
  scores well (about 26 dB for the mushroom over the text-only set): read PSNRs against this floor;
* :func:`image_statistics`: ``saturation`` (mean HSV saturation) and ``contrast`` (RMS contrast: the
  standard deviation of the Rec. 601 luma), for the image and for its nearest render
  (``reference_saturation``, ``reference_contrast``): SDS at a high CFG scale is known to oversaturate.

:func:`image_scorer` picks the scoring set for a prior; the workflow
(:mod:`msd3d.workflows.text_to_2d`) asks it for scores and never needs to know the catalogue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from msd3d.catalogue.families import Family, match_family
from msd3d.catalogue.oracle import psnr_from_mse
from msd3d.render.cameras import CameraConfig, Cameras, orbit_cameras

LOOKS = ("albedo", "lambertian", "textureless")
#: Grid points per axis of the text-only scoring set: elevation, azimuth, distance, field of view.
GRID = (5, 5, 3, 3)

__all__ = ["ImageScorer", "LOOKS", "image_scorer", "image_statistics", "mean_scores", "score_images", "view_grid"]


def image_statistics(images: Tensor) -> dict[str, list[float]]:
    """Per image of (N, 3, H, W) in [0, 1]: ``saturation`` (mean over pixels of HSV saturation
    ``(max - min) / max``, 0 where ``max = 0``) and ``contrast`` (RMS contrast: the standard deviation
    over pixels of the luma ``0.299 R + 0.587 G + 0.114 B``)."""
    x = images.detach().float().clamp(0, 1)
    hi, lo = x.max(1).values, x.min(1).values
    saturation = torch.where(hi > 0, (hi - lo) / hi.clamp_min(1e-8), torch.zeros_like(hi)).mean((1, 2))
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    contrast = luma.flatten(1).std(1, unbiased=False)
    return {"saturation": saturation.tolist(), "contrast": contrast.tolist()}


def view_grid(config: CameraConfig, size: int, view: str | None, grid: Sequence[int] = GRID) -> Cameras:
    """Cameras on a grid over ``config``'s training ranges (elevation, distance, field of view) and
    the azimuths of the view word ``view`` ("front": ``|azimuth| < front_threshold``, "back", "side"
    (the +azimuth side), "overhead" or None: the whole circle)."""
    ne, na, nd, nf = grid
    e_lo, e_hi = config.elevation_range
    azimuths = {
        "front": (-config.front_threshold, config.front_threshold),
        "back": (180.0 - config.back_threshold, 180.0 + config.back_threshold),
        "side": (config.front_threshold, 180.0 - config.back_threshold),
    }
    if view == "overhead":
        e_lo = max(e_lo, config.overhead_threshold)
        e_hi = max(e_hi, e_lo)
    if view in azimuths:
        a_lo, a_hi = azimuths[view]
        step = (a_hi - a_lo) / na
        az = torch.linspace(a_lo + step / 2, a_hi - step / 2, na)  # cell centres: inside the open range
    else:
        az = torch.arange(na * 2, dtype=torch.float32) * (360.0 / (na * 2))
    el = torch.linspace(e_lo, e_hi, ne)
    dist = torch.linspace(*config.distance_range, nd)
    fov = torch.linspace(*config.fovy_range, nf)
    mesh = torch.meshgrid(el, az, dist, fov, indexing="ij")
    e, a, d, f = (m.reshape(-1).float() for m in mesh)
    return orbit_cameras(e, a, d, f, size)


def _renders(family: Family, cameras: Cameras, looks: Sequence[str], background: Any) -> Tensor:
    """(C, L, V, 3, H, W): every variant at every camera in every look (lit looks lit from the camera)."""
    from msd3d.render.shading import default_light_positions

    out = []
    for look in looks:
        lit = {} if look == "albedo" else {"shading": look, "light_positions": default_light_positions(cameras)}
        out.append(family.render(cameras, background=background, supersample=2, **lit))
    return torch.stack(out, 1)


def score_images(
    images: Tensor,
    family: Family | str,
    cameras: Cameras,
    looks: Sequence[str] = ("albedo",),
    background: Sequence[float] | float = 1.0,
    references: Tensor | None = None,
) -> list[dict[str, Any]]:
    """One score dict per image of (N, 3, H, W) in [0, 1] against ``family``'s variants rendered at every
    camera of ``cameras`` (rendered at the images' size) in every look (see the module docstring);
    ``references``: those renders, (C, L, V, 3, H, W), when already made."""
    if isinstance(family, str):
        family = match_family(family)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    h, w = images.shape[-2:]
    cams = cameras.with_resolution(h, w).to("cpu")
    x = images.detach().float().cpu().clamp(0, 1)
    with torch.no_grad():
        refs = _renders(family, cams, looks, background) if references is None else references  # (C, L, V, 3, H, W)
        c, n_looks, v = refs.shape[:3]
        per = torch.stack([(img - refs).pow(2).mean(dim=(3, 4, 5)) for img in x])  # (N, C, L, V)
        blend = torch.stack([(img - refs.mean(2)).pow(2).mean(dim=(2, 3, 4)) for img in x])  # (N, C, L)
    out = []
    stats = image_statistics(x)
    for i in range(len(x)):
        flat = int(per[i].argmin())
        cam, look, var = flat // (n_looks * v), (flat // v) % n_looks, flat % v
        nearest = refs[cam, look, var][None]
        ref_stats = image_statistics(nearest)
        mode_psnr = psnr_from_mse(float(per[i].min()))
        blend_psnr = psnr_from_mse(float(blend[i].min()))
        out.append({
            "family": family.name,
            "nearest_variant": family.variant_names[var],
            "nearest_look": looks[look],
            "nearest_camera": {
                "elevation": float(cams.elevation[cam]), "azimuth": float(cams.azimuth[cam]),
                "distance": float(cams.distance[cam]), "fovy": float(torch.rad2deg(cams.fovy[cam])),
            },
            "mode_psnr": mode_psnr,
            "blend_psnr": blend_psnr,
            "mode_minus_blend_db": mode_psnr - blend_psnr,
            "variant_psnr": {
                name: psnr_from_mse(float(per[i, :, :, j].min())) for j, name in enumerate(family.variant_names)
            },
            "saturation": stats["saturation"][i],
            "contrast": stats["contrast"][i],
            "reference_saturation": ref_stats["saturation"][0],
            "reference_contrast": ref_stats["contrast"][0],
        })
    return out


@dataclass
class ImageScorer:
    """How the images of one prior are scored: a family, the scoring cameras, the looks (see above)."""

    family: str
    cameras: Cameras
    looks: tuple[str, ...]
    background: tuple[float, float, float]
    description: str

    def __post_init__(self) -> None:
        self._references: dict[int, Tensor] = {}

    def __call__(self, images: Tensor) -> list[dict[str, Any]]:
        size = int(images.shape[-1])
        if size not in self._references:  # the renders are made once per image size
            cams = self.cameras.with_resolution(size, size).to("cpu")
            self._references[size] = _renders(match_family(self.family), cams, self.looks, self.background)
        return score_images(images, self.family, self.cameras, self.looks, self.background, self._references[size])

    def blank_psnr(self, size: int) -> float:
        """The mode PSNR of a blank image of the background colour: the floor a picture must beat (the
        object covers a small part of the frame, so even an empty image scores well in PSNR)."""
        blank = torch.tensor(self.background, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, size, size)
        return self(blank.contiguous())[0]["mode_psnr"]

    def describe(self) -> dict[str, Any]:
        return {"family": self.family, "cameras": len(self.cameras), "looks": list(self.looks),
                "method": self.description}


def image_scorer(prior: Any, prompt: str, camera: Cameras, view: str | None) -> ImageScorer | None:
    """The scorer for images made on ``prior`` conditioned on ``prompt`` at ``camera`` (one camera;
    ``view`` is the view word appended to the prompt, or None); None for priors outside the catalogue
    (Stable Diffusion). Raises the priors' one-line error for a prompt that names no family."""
    from msd3d.catalogue.learned_prior import LearnedCataloguePrior
    from msd3d.catalogue.oracle import OraclePrior

    fixed = f"at the conditioning camera (elevation {float(camera.elevation[0]):g}°, azimuth " \
            f"{float(camera.azimuth[0]):g}°, distance {float(camera.distance[0]):g}, fovy " \
            f"{float(torch.rad2deg(camera.fovy[0])):g}°), albedo"
    if isinstance(prior, OraclePrior):
        family = prior.family_for(prompt)
        return ImageScorer(family.name, camera, ("albedo",), tuple(prior.config.background), fixed)
    if isinstance(prior, LearnedCataloguePrior):
        family = match_family(prompt)
        if prior.camera_conditioned:
            return ImageScorer(family.name, camera, ("albedo",), (1.0, 1.0, 1.0), fixed)
        config = prior.train_config.camera if prior.train_config is not None else CameraConfig()
        cams = view_grid(config, camera.height, view)
        where = f"{view} view" if view else "any azimuth"
        text = (f"nearest over {len(cams)} cameras ({'x'.join(map(str, GRID))} grid of elevation, azimuth, "
                f"distance, fovy over the prior's training ranges, {where}) x {len(LOOKS)} looks: the prior "
                "is conditioned on text only, not on a camera")
        return ImageScorer(family.name, cams, LOOKS, (1.0, 1.0, 1.0), text)
    return None


def mean_scores(scores: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The mean of every numeric score over images (``variant_psnr`` and the nearest-* fields left out)."""
    keys = [k for k, v in scores[0].items() if isinstance(v, float)] if scores else []
    return {k: sum(s[k] for s in scores) / len(scores) for k in keys}
