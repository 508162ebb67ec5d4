"""The oracle prior: the ideal denoiser of a finite set of images, one set per camera.

A prompt selects a catalogue family (:mod:`msd3d.catalogue.families`); for each training view the
family's variants are rendered at that view's exact camera, and the prior is the uniform mixture of
those images (data space = images in [0, 1], so ``encode``/``decode`` are the identity). Its exact
denoiser is the posterior mean over the images,

    D(z, sigma) = sum_i softmax_i(log w_i - ||z - y_i||^2 / (2 sigma^2)) y_i,

which makes an exact, weight-free, CPU-friendly text-to-3D prior whose modes (the variants) are
known, so a finished run can be scored by how close it lands to one variant versus their blend.

Classifier-free guidance: with ``unconditional="all_families"`` the unconditional branch is the
mixture of every variant of every family at the same camera; the conditional payload then holds the
same images with the other families masked out (log-weight -inf), so both branches concatenate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from msd3d.catalogue.families import CATALOGUE, Family, find_family, list_catalogue, match_family
from msd3d.catalogue.prompt_attributes import variant_log_weights
from msd3d.catalogue.shapes import single_thread
from msd3d.priors.base import Condition, ConditionRequest, DiffusionPrior
from msd3d.priors.schedule import VPSchedule
from msd3d.render.cameras import Cameras
from msd3d.validation import check_choice, check_range, join

UNCONDITIONAL_MODES = ("all_families", "none")
ORACLE_SHADING = ("match", "albedo")

#: PSNR is reported as at most this (an exact match would be infinite).
MAX_PSNR = 100.0


@dataclass
class OracleConfig:
    """Settings of the offline shape-catalogue prior (image size comes from the cameras)."""

    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Solid background colour of the variant renders (RGB in [0, 1]); match the NeRF's."""
    supersample: int = 2
    """Rays per pixel along each axis when rendering variants (anti-aliasing)."""
    max_steps: int = 32
    """Sphere-tracing steps per ray."""
    unconditional: str = "none"
    """"none": no unconditional branch (guidance scales are ignored; renders only the prompt's
    family), the exact prior itself; "all_families": the CFG branch is every variant of every
    family at the same camera (renders the whole catalogue at each step, about ten times the cost)."""
    shading: str = "match"
    """"match": render the variants with the shading the trainer drew for the step (albedo,
    lambertian under the step's light, textureless), so lit steps constrain the surface;
    "albedo": always unlit albedo (the prior then only constrains colours and silhouettes).
    Scores (mode / blend PSNR) always compare albedo renders."""

    def validate(self, path: str = "prior.oracle") -> None:
        check_choice(join(path, "shading"), self.shading, ORACLE_SHADING)
        if len(self.background) != 3 or not all(0.0 <= float(c) <= 1.0 for c in self.background):
            raise ValueError(f"{join(path, 'background')} must be three numbers in [0, 1]")
        check_range(join(path, "supersample"), self.supersample, 1)
        check_range(join(path, "max_steps"), self.max_steps, 1)
        check_choice(join(path, "unconditional"), self.unconditional, UNCONDITIONAL_MODES)


def ideal_denoiser(z: Tensor, sigma: Tensor, images: Tensor, log_weights: Tensor) -> Tensor:
    """Posterior mean of a weighted set of images under Gaussian noise.

    z: (B, *data); sigma: (B,); images: (B, V, *data); log_weights: (B, V) (-inf masks an entry).
    Returns (B, *data). The logits ``log w_i + (<z, y_i> - ||y_i||^2 / 2) / sigma^2`` drop the
    ``||z||^2`` term common to all i and are formed in float64: at sigma ~ 0.03 and thousands of
    pixels they reach ~1e6, where float32 would lose the differences that pick the winner.
    """
    b = z.shape[0]
    v = images.shape[1]
    with single_thread(z.device):
        zf = z.reshape(b, -1).double()
        yf = images.reshape(b, v, -1).double()
        dots = torch.bmm(yf, zf.unsqueeze(-1)).squeeze(-1)  # (B, V)
        sq = yf.pow(2).sum(-1)  # (B, V)
        var = sigma.double().reshape(b).pow(2).clamp_min(1e-12)
        logits = log_weights.double() + (dots - 0.5 * sq) / var.unsqueeze(-1)
        weights = torch.softmax(logits, dim=1)  # (B, V)
        out = torch.bmm(weights.unsqueeze(1), yf).squeeze(1)
    return out.reshape(z.shape).to(z.dtype)


def psnr_from_mse(mse: float) -> float:
    """PSNR (dB) of images in [0, 1], capped at :data:`MAX_PSNR`."""
    if mse <= 10 ** (-MAX_PSNR / 10):
        return MAX_PSNR
    return -10.0 * math.log10(mse)


def score_renders(
    renders: Tensor,
    cameras: Cameras,
    family: Family | str,
    background: Sequence[float] | float = 1.0,
    supersample: int = 2,
    max_steps: int = 32,
) -> dict[str, Any]:
    """Compare finished renders with every variant of a family at the same cameras.

    renders: (N, 3, H, W) in [0, 1] (albedo, same background as the oracle); cameras: N cameras
    (rendered at the renders' size); family: a :class:`Family`, its name or a prompt.
    Returns ``mode_psnr`` (PSNR over all views to the single variant nearest over all views),
    ``blend_psnr`` (to the variants' per-view average image, what a mean-seeking run converges to),
    ``nearest_variant``, ``variant_psnr`` ({name: PSNR}), ``mode_mse``, ``blend_mse`` and
    ``mode_minus_blend_db``. PSNRs are capped at 100 dB.
    """
    if isinstance(family, str):
        family = match_family(family)
    if renders.ndim != 4 or renders.shape[1] != 3:
        raise ValueError(f"renders must be (N, 3, H, W), got {tuple(renders.shape)}")
    if len(cameras) != renders.shape[0]:
        raise ValueError(f"{renders.shape[0]} renders but {len(cameras)} cameras")
    h, w = renders.shape[-2:]
    cams = cameras.with_resolution(h, w).to(renders.device)
    with torch.no_grad():
        variants = family.render(cams, background=background, supersample=supersample, max_steps=max_steps)
        x = renders.detach().float().unsqueeze(1)  # (N, 1, 3, H, W)
        per_variant = (x - variants).pow(2).mean(dim=(0, 2, 3, 4))  # (V,)
        blend = (x.squeeze(1) - variants.mean(1)).pow(2).mean()
    best = int(per_variant.argmin())
    mode_mse, blend_mse = float(per_variant[best]), float(blend)
    mode_psnr, blend_psnr = psnr_from_mse(mode_mse), psnr_from_mse(blend_mse)
    return {
        "family": family.name,
        "nearest_variant": family.variant_names[best],
        "mode_psnr": mode_psnr,
        "blend_psnr": blend_psnr,
        "mode_minus_blend_db": mode_psnr - blend_psnr,
        "mode_mse": mode_mse,
        "blend_mse": blend_mse,
        "variant_psnr": {n: psnr_from_mse(float(m)) for n, m in zip(family.variant_names, per_variant)},
    }


class OraclePrior(DiffusionPrior):
    """Exact prior over the catalogue renders at each training camera (see module docstring)."""

    def describe(self) -> str:
        return "the oracle prior (an exact formula over the catalogue's renders, not a network)"

    def __init__(
        self,
        config: OracleConfig | None = None,
        device: torch.device | str = "cpu",
        catalogue: Mapping[str, Family] | None = None,
    ) -> None:
        super().__init__()
        self.config = config or OracleConfig()
        self.config.validate()
        self.device = torch.device(device)
        self.dtype = torch.float32
        self.schedule = VPSchedule.scaled_linear()
        self.catalogue = dict(CATALOGUE if catalogue is None else catalogue)
        # the order of variants in "all_families" payloads: family after family
        self._slices: dict[str, slice] = {}
        start = 0
        for name, fam in self.catalogue.items():
            self._slices[name] = slice(start, start + len(fam))
            start += len(fam)
        self.num_variants = start

    # -- catalogue ---------------------------------------------------------------------------
    def family_for(self, prompt: str) -> Family:
        """The family a prompt names (view suffixes, case, articles and adjectives ignored);
        raises :class:`~msd3d.errors.Msd3dError` listing the families when none matches."""
        return match_family(prompt, self.catalogue)

    def validate_prompt(self, prompt: str) -> None:
        self.family_for(prompt)

    def list_catalogue(self) -> list[dict]:
        return list_catalogue(self.catalogue)

    def render_family(
        self,
        family: Family | str,
        cameras: Cameras,
        shading: str = "albedo",
        light_positions: Tensor | None = None,
        ambient_ratio: float = 0.1,
    ) -> Tensor:
        """All variants of a family at each camera: (B, V, 3, H, W) on the cameras' device, with the
        given shading (see :meth:`Family.render`; lights (B, 3) for lit modes)."""
        if isinstance(family, str):
            family = self.family_for(family)
        c = self.config
        with torch.no_grad():
            return family.render(
                cameras, background=c.background, supersample=c.supersample, max_steps=c.max_steps,
                shading=shading, light_positions=light_positions, ambient_ratio=ambient_ratio,
            )

    def _shading(self, shading: str | None, light_positions: Tensor | None) -> tuple[str, Tensor | None]:
        """The shading to render a step's variants with (``oracle.shading``), lights on the device."""
        if self.config.shading == "albedo" or shading is None or shading == "albedo":
            return "albedo", None
        if light_positions is None:
            raise ValueError(f"{shading} shading needs light_positions")
        return shading, light_positions.to(self.device)

    # -- conditioning ------------------------------------------------------------------------
    def condition(
        self,
        prompts: Sequence[str],
        *,
        negative_prompt: str = "",
        cameras: Cameras | None = None,
        shading: str | None = None,
        light_positions: Tensor | None = None,
        ambient_ratio: float = 0.1,
    ) -> Condition:
        """Render, for each sample, its family's variants at its camera, shaded as the step's render
        (``shading``, ``light_positions`` (B, 3), ``ambient_ratio``) when ``oracle.shading`` is "match".

        Payload: ``{"images": (B, V, 3, H, W), "log_weights": (B, V)}``. With
        ``unconditional="all_families"`` V counts every catalogue variant and the conditional
        log-weights mask out other families; the unconditional payload weights all families
        equally, or only the negative prompt's family when it names one.
        Attribute words select variants (:mod:`msd3d.catalogue.prompt_attributes`): "a red mushroom"
        keeps only the red one; a prompt without them keeps every variant of its family.
        """
        prompts = list(prompts)
        batch = len(prompts)
        if cameras is None:
            raise ValueError("the oracle prior renders at the training cameras: pass cameras=")
        if len(cameras) == 1 and batch > 1:
            cameras = cameras[torch.zeros(batch, dtype=torch.long)]
        if len(cameras) != batch:
            raise ValueError(f"{batch} prompts but {len(cameras)} cameras")
        families = [self.family_for(p) for p in prompts]
        cameras = cameras.to(self.device)
        look = dict(zip(("shading", "light_positions"), self._shading(shading, light_positions)))
        look["ambient_ratio"] = ambient_ratio
        if self.config.unconditional == "none":
            cond = self._family_payload(families, cameras, prompts, look)
            return Condition(cond=cond, uncond=None, batch_size=batch, prompts=prompts)
        images = torch.cat([self.render_family(f, cameras, **look) for f in self.catalogue.values()], dim=1)
        cond_w = torch.stack([self._log_weights([f], p) for f, p in zip(families, prompts)])
        negative = find_family(negative_prompt, self.catalogue) if negative_prompt.strip() else None
        uncond_fams = [negative] if negative is not None else list(self.catalogue.values())
        uncond_w = self._log_weights(uncond_fams).expand(batch, -1)
        return Condition(
            cond={"images": images, "log_weights": cond_w},
            uncond={"images": images, "log_weights": uncond_w.clone()},
            batch_size=batch,
            prompts=prompts,
        )

    prefetch_conditions = True  # every condition() sphere-traces the variants: worth doing ahead, in a batch

    def condition_many(self, requests: Sequence[ConditionRequest]) -> list[Condition]:
        """:meth:`condition` of many requests with one render per shading mode: the requests' cameras
        are traced as one batch (each ray's image depends on that ray alone, so the result is the same)."""
        out: list[Condition | None] = [None] * len(requests)
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.shading, r.negative_prompt, r.ambient_ratio), []).append(i)
        for (shading, negative, ambient), members in groups.items():
            reqs = [requests[i] for i in members]
            prompts = [p for r in reqs for p in r.prompts]
            cameras = Cameras.cat([self._cameras_for(r) for r in reqs])
            lit = all(r.light_positions is not None for r in reqs)
            lights = torch.cat([r.light_positions.to(self.device) for r in reqs]) if lit else None
            both = self.condition(
                prompts, negative_prompt=negative, cameras=cameras, shading=shading,
                light_positions=lights, ambient_ratio=ambient,
            )
            start = 0
            for i, r in zip(members, reqs):
                out[i] = both.rows(start, start + len(r.prompts))
                start += len(r.prompts)
        return out  # type: ignore[return-value]

    def _cameras_for(self, request: ConditionRequest) -> Cameras:
        """The request's cameras on this device, one per prompt (a single camera is shared)."""
        cameras = request.cameras
        if cameras is None:
            raise ValueError("the oracle prior renders at the training cameras: pass cameras=")
        if len(cameras) == 1 and len(request.prompts) > 1:
            cameras = cameras[torch.zeros(len(request.prompts), dtype=torch.long)]
        return cameras.to(self.device)

    def _log_weights(self, families: Sequence[Family], prompt: str = "") -> Tensor:
        """(V_all,) log-weights: families equally likely; within each, the variants ``prompt``'s
        attribute words select (all, equally likely, for a prompt without any)."""
        w = torch.full((self.num_variants,), -math.inf, device=self.device, dtype=torch.float64)
        for f in families:
            w[self._slices[f.name]] = -math.log(len(families)) + variant_log_weights(prompt, f).to(self.device)
        return w

    def _family_payload(
        self,
        families: Sequence[Family],
        cameras: Cameras,
        prompts: Sequence[str] | None = None,
        look: Mapping[str, Any] | None = None,
    ) -> dict[str, Tensor]:
        """Only each sample's own family, padded to the largest V with masked (-inf) entries;
        variants weighted by each prompt's attribute words, rendered with the step's ``look`` (shading)."""
        batch, h, w = len(families), cameras.height, cameras.width
        v_max = max(len(f) for f in families)
        images = torch.zeros(batch, v_max, 3, h, w, device=self.device)
        log_w = torch.full((batch, v_max), -math.inf, device=self.device, dtype=torch.float64)
        for name in dict.fromkeys(f.name for f in families):
            fam = self.catalogue[name]
            rows = torch.tensor([i for i, f in enumerate(families) if f.name == name], device=self.device)
            look_rows = dict(look or {})
            if look_rows.get("light_positions") is not None:
                look_rows["light_positions"] = look_rows["light_positions"][rows]
            images[rows, : len(fam)] = self.render_family(fam, cameras[rows], **look_rows)
            for row in rows.tolist():
                log_w[row, : len(fam)] = variant_log_weights(prompts[row] if prompts else "", fam).to(self.device)
        return {"images": images, "log_weights": log_w}

    # -- denoising ---------------------------------------------------------------------------
    def denoise_raw(self, z: Tensor, sigma: Tensor, payload: Mapping[str, Tensor]) -> Tensor:
        """Exact posterior mean ``E[y | z]`` over the payload's images; z (B, 3, H, W), sigma (B,)."""
        images = payload["images"]
        if images.shape[0] != z.shape[0] or images.shape[2:] != z.shape[1:]:
            raise ValueError(
                f"z {tuple(z.shape)} does not match the condition's images {tuple(images.shape)}: "
                "condition on cameras with the render's resolution"
            )
        return ideal_denoiser(z, sigma, images, payload["log_weights"])

    # -- scoring -----------------------------------------------------------------------------
    def score(self, renders: Tensor, cameras: Cameras, prompt: str) -> dict[str, Any]:
        """:func:`score_renders` with this prior's background and rendering settings."""
        c = self.config
        return score_renders(
            renders, cameras, self.family_for(prompt), c.background, c.supersample, c.max_steps
        )

    def evaluate(self, prompt: str, renders: Tensor, cameras: Any) -> dict[str, Any] | None:
        """Score a finished run's turntable renders (N, 3, H, W) against the prompt's variants."""
        return self.score(renders, cameras, prompt)

    def evaluate_geometry(self, prompt: str, mesh: Any) -> dict[str, Any] | None:
        """Geometry scores of an exported mesh against the nearest variant's true surface
        (:func:`msd3d.catalogue.scoring.score_mesh_against_family`)."""
        from msd3d.catalogue.scoring import score_mesh_against_family

        return score_mesh_against_family(mesh, self.family_for(prompt))
