"""The one interface every diffusion prior shares: a VE denoiser with classifier-free guidance.

Coordinates (docs/design.md §2): clean data ``y``, noisy ``z = y + sigma * n`` and a denoiser
``D(z, sigma, cond) ~= E[y | z]``. Guidance methods (SDS, MSD, SDI) are written once against this
class and never know which prior they run on.

"Data" is whatever the denoiser works on: 2-D points for a Gaussian mixture, images for the oracle,
VAE latents for Stable Diffusion. ``encode`` / ``decode`` move between rendered images and data.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor

from msd3d.priors.schedule import VPSchedule


@dataclass
class Condition:
    """A prompt as one prior understands it.

    ``cond`` and ``uncond`` are prior-specific payloads with a leading batch dimension of
    ``batch_size`` (text embeddings, component log-weights, reference images...). ``uncond`` is
    ``None`` when the prior has no unconditional branch, which makes guidance scales a no-op.
    """

    cond: Any
    uncond: Any | None
    batch_size: int
    prompts: list[str] = field(default_factory=list)
    extrinsics: Tensor | None = None
    """(B, 4, 4) camera-to-world matrix of each sample when the condition was made for cameras (priors with
    networks keep them for a :class:`TrainableDenoiser` that sees the camera, as VSD's LoRA does); else None."""

    def repeat(self, n: int) -> Condition:
        """The same condition for ``n`` times as many samples (``[c0, c1] -> [c0, c1, c0, c1]``)."""
        return Condition(
            cond=_repeat_payload(self.cond, n),
            uncond=None if self.uncond is None else _repeat_payload(self.uncond, n),
            batch_size=self.batch_size * n,
            prompts=list(self.prompts) * n,
            extrinsics=None if self.extrinsics is None else _repeat_payload(self.extrinsics, n),
        )


    def rows(self, start: int, stop: int) -> Condition:
        """The condition of samples ``start .. stop - 1`` (payloads sliced along the batch dimension)."""
        return Condition(
            cond=_slice_payload(self.cond, start, stop),
            uncond=None if self.uncond is None else _slice_payload(self.uncond, start, stop),
            batch_size=stop - start,
            prompts=list(self.prompts[start:stop]),
            extrinsics=None if self.extrinsics is None else self.extrinsics[start:stop],
        )


def _slice_payload(payload: Any, start: int, stop: int) -> Any:
    if isinstance(payload, Tensor):
        return payload[start:stop]
    if isinstance(payload, dict):
        return {k: _slice_payload(v, start, stop) for k, v in payload.items()}
    raise TypeError(f"cannot slice a condition payload of type {type(payload).__name__}")


def _repeat_payload(payload: Any, n: int) -> Any:
    if isinstance(payload, Tensor):
        return payload.repeat(n, *([1] * (payload.ndim - 1)))
    if isinstance(payload, dict):
        return {k: _repeat_payload(v, n) for k, v in payload.items()}
    raise TypeError(f"cannot repeat a condition payload of type {type(payload).__name__}")


def _concat_payloads(a: Any, b: Any) -> Any:
    if isinstance(a, Tensor):
        return torch.cat([a, b], dim=0)
    if isinstance(a, dict):
        return {k: _concat_payloads(a[k], b[k]) for k in a}
    raise TypeError(f"cannot concatenate condition payloads of type {type(a).__name__}")


@dataclass
class ConditionRequest:
    """The arguments of one :meth:`DiffusionPrior.condition` call, for asking for several at once."""

    prompts: list[str]
    negative_prompt: str = ""
    cameras: Any | None = None
    shading: str | None = None
    light_positions: Any | None = None
    ambient_ratio: float = 0.1


@dataclass
class TrainableDenoiserConfig:
    """A trainable copy of a prior's denoiser: a low-rank adapter (LoRA) of its network, and optionally a
    camera embedding (the camera-to-world matrix, flattened, added to the time embedding as ProlificDreamer does)."""

    rank: int = 4
    """LoRA rank of the attention projections (threestudio's LoRAAttnProcessor: 4)."""
    alpha: float = 4.0
    """LoRA scale numerator: the update is ``alpha / rank * B A`` (alpha = rank: scale 1, as threestudio)."""
    camera_conditioning: bool = True
    """Condition the copy on each sample's camera (ProlificDreamer's ``camera_condition_type: extrinsics``)."""
    seed: int = 0
    """Seed of the adapter's initial weights (independent of the run's other random numbers)."""


class TrainableDenoiser(abc.ABC):
    """A denoiser initialised as its prior's and trained while a run goes (VSD's estimate of the score of
    the current renders). It starts equal to the prior's conditional denoiser and shares its counter."""

    @abc.abstractmethod
    def denoise(self, z: Tensor, sigma: Tensor, cond: Condition, camera_mask: Tensor | None = None,
                guidance_scale: float = 1.0) -> Tensor:
        """``D_phi(z, sigma, cond, camera)`` (B, *data) for z (B, *data) and sigma (B,), differentiable in
        the adapter's parameters. ``camera_mask`` (B,) bool drops the camera of the samples where it is
        False; ``guidance_scale`` != 1 is classifier-free guidance over the camera (with vs. without)."""

    @abc.abstractmethod
    def parameters(self) -> list[torch.nn.Parameter]:
        """The adapter's trainable tensors (float32), in a fixed order."""

    def state_dict(self) -> dict[str, Tensor]:
        return {str(i): p.detach().clone() for i, p in enumerate(self.parameters())}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        params = self.parameters()
        if len(state) != len(params):
            raise ValueError(f"the saved adapter has {len(state)} tensors, this one {len(params)}")
        with torch.no_grad():
            for i, p in enumerate(params):
                p.copy_(state[str(i)])


@dataclass
class DenoiserCounter:
    """How much denoising a prior has done: batched forward passes and per-sample evaluations."""

    calls: int = 0
    evaluations: int = 0

    def reset(self) -> None:
        self.calls = 0
        self.evaluations = 0


class DiffusionPrior(abc.ABC):
    """A diffusion model in VE-denoiser coordinates.

    Subclasses implement :meth:`condition` and :meth:`denoise_raw`; the shared :meth:`denoise`
    adds classifier-free guidance, ``D = D_u + s (D_c - D_u)`` (the standard convention: ``s = 1``
    is plain conditional sampling), evaluating both branches in one batched call.
    """

    #: Noise schedule used to turn diffusion time into sigma (SD's own, or SD's default).
    schedule: VPSchedule
    device: torch.device = torch.device("cpu")
    #: dtype of the data the denoiser takes and returns.
    dtype: torch.dtype = torch.float32

    def __init__(self) -> None:
        self.counter = DenoiserCounter()

    # -- conditioning --------------------------------------------------------------------------
    @abc.abstractmethod
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
        """Encode one prompt per sample. ``cameras`` lets view-aware priors (the oracle) see the
        exact camera of each sample, and ``shading`` / ``light_positions`` (B, 3) / ``ambient_ratio``
        how the step's render was shaded; other priors ignore them."""

    #: Whether conditioning is expensive enough to compute for several steps at once (:meth:`condition_many`,
    #: ``train.prefetch_steps``): the oracle renders images for it; text embeddings are cached anyway.
    prefetch_conditions: bool = False

    def condition_many(self, requests: Sequence[ConditionRequest]) -> list[Condition]:
        """One :class:`Condition` per request, each equal to ``condition(**request)``. Priors whose
        conditioning batches well (the oracle: one render of every request's cameras) override this.
        Conditions never draw random numbers, so when they are computed does not change a run."""
        return [
            self.condition(
                r.prompts, negative_prompt=r.negative_prompt, cameras=r.cameras, shading=r.shading,
                light_positions=r.light_positions, ambient_ratio=r.ambient_ratio,
            )
            for r in requests
        ]

    def trainable_denoiser(self, config: TrainableDenoiserConfig) -> TrainableDenoiser:
        """A trainable copy of this prior's denoiser (a LoRA of its network) for methods that learn the
        distribution of the current renders (VSD). Priors without a network refuse in one line."""
        from msd3d.errors import UnsupportedByPrior

        raise UnsupportedByPrior(f"{self.describe()} has no network to fine-tune")

    def describe(self) -> str:
        """The prior in a few words, for messages ("the oracle prior")."""
        return f"the {type(self).__name__}"

    def validate_prompt(self, prompt: str) -> None:
        """Raise a one-line :class:`~msd3d.errors.Msd3dError` if this prior cannot serve ``prompt``
        (checked before any work starts); every prompt is fine for text-conditioned priors."""

    # -- denoising -----------------------------------------------------------------------------
    @abc.abstractmethod
    def denoise_raw(self, z: Tensor, sigma: Tensor, payload: Any) -> Tensor:
        """``E[y | z]`` for a batch: ``z`` (B, *data), ``sigma`` (B,), payload with batch B."""

    def denoise(
        self, z: Tensor, sigma: Tensor | float, cond: Condition, guidance_scale: float = 1.0
    ) -> Tensor:
        """Guided denoiser ``D(z, sigma, cond)``.

        z: (B, *data) noisy data; sigma: scalar or (B,); returns (B, *data).
        """
        batch = z.shape[0]
        if cond.batch_size != batch:
            raise ValueError(f"condition has batch {cond.batch_size} but z has batch {batch}")
        if isinstance(sigma, Tensor):
            sigma = sigma.to(dtype=torch.float32, device=z.device)
            if sigma.ndim == 0:
                sigma = sigma.expand(batch)
        else:  # a fill on the device, not a host-to-device copy (which would wait for queued work)
            sigma = torch.full((batch,), float(sigma), dtype=torch.float32, device=z.device)
        use_cfg = cond.uncond is not None and guidance_scale != 1.0
        if not use_cfg:
            self._count(batch)
            return self.denoise_raw(z, sigma, cond.cond)
        self._count(2 * batch)
        both = self.denoise_raw(
            torch.cat([z, z], dim=0),
            torch.cat([sigma, sigma], dim=0),
            _concat_payloads(cond.cond, cond.uncond),
        )
        d_cond, d_uncond = both[:batch], both[batch:]
        return d_uncond + guidance_scale * (d_cond - d_uncond)

    def _count(self, evaluations: int) -> None:
        self.counter.calls += 1
        self.counter.evaluations += evaluations

    # -- data space ----------------------------------------------------------------------------
    def encode(self, images: Tensor) -> Tensor:
        """Rendered images (B, 3, H, W) in [0, 1] -> data the denoiser works on (differentiable)."""
        return images

    def decode(self, data: Tensor) -> Tensor:
        """Data -> images (B, 3, H, W) in [0, 1]."""
        return data

    # -- scoring -------------------------------------------------------------------------------
    def evaluate(self, prompt: str, renders: Tensor, cameras: Any) -> dict[str, Any] | None:
        """Score finished renders (N, 3, H, W) at ``cameras``; None for priors that cannot (SD)."""
        return None

    def evaluate_geometry(self, prompt: str, mesh: Any) -> dict[str, Any] | None:
        """Score an exported mesh (a ``trimesh.Trimesh`` in world units) against the prompt's true
        shapes; None for priors that have none (SD)."""
        return None

    # -- noise levels --------------------------------------------------------------------------
    @property
    def sigma_min(self) -> float:
        return self.schedule.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.schedule.sigma_max

    def sigma_from_time(self, u: Tensor) -> Tensor:
        """Noise level at normalised diffusion time ``u in [0, 1]`` (threestudio's ``t / 1000``)."""
        return self.schedule.sigma_from_time(u)
