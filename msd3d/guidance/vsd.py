"""Variational score distillation (VSD, ProlificDreamer), threestudio-equivalent, in VE coordinates.

threestudio (stable-diffusion-vsd-guidance) applies ``grad = w(t) (eps_pretrained - eps_lora)`` with
``w = 1 - alpha_bar_t``, where ``eps_pretrained`` is the prior with classifier-free guidance and
``eps_lora`` a LoRA of the prior's UNet, conditioned on the camera, that is trained every step on the
current renders with the standard denoising loss (so it tracks the distribution the scene renders now).
With ``eps = (z - D) / sigma`` the gradient is ``w(t) (D_lora - D_pretrained) / sigma``: here the target
``x - D_lora + D_pretrained`` with SDS's VE weight ``w(t) / sigma``, and the LoRA's loss as ``aux_loss``
on the method's own parameters (:meth:`Guidance.parameters`, optimised at ``lora_lr``).

The method only asks the prior for :meth:`~msd3d.priors.base.DiffusionPrior.trainable_denoiser`; priors
without a network (the oracle) refuse it in one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from msd3d.errors import UnsupportedByPrior
from msd3d.guidance.base import Guidance, GuidanceOutput, stat
from msd3d.guidance.sds import WEIGHTINGS, TimestepConfig, noised_render, sds_weight
from msd3d.priors.base import Condition, DiffusionPrior, TrainableDenoiserConfig
from msd3d.rng import draw_device, rand, randn_like, to_device
from msd3d.validation import check_choice, join


@dataclass
class VSDConfig(TimestepConfig):
    guidance_scale: float = 7.5
    """Standard CFG scale of the pretrained branch (threestudio prolificdreamer: 7.5, diffusers' convention)."""
    guidance_scale_lora: float = 1.0
    """CFG over the LoRA's camera condition (threestudio: 1.0, the camera-conditioned branch alone)."""
    weighting: str = "sds"
    """w(t) of ``w (eps_pretrained - eps_lora)``: "sds" = 1 - alpha_bar (threestudio), "uniform", "constant"."""
    weight: float = 1.0
    """Extra multiplier of the distillation loss (threestudio lambda_vsd)."""
    lora_rank: int = 4
    """LoRA rank (threestudio's LoRAAttnProcessor default)."""
    lora_lr: float = 1.0e-4
    """Learning rate of the LoRA and camera embedding (threestudio prolificdreamer: guidance lr 0.0001)."""
    lora_weight: float = 1.0
    """Multiplier of the LoRA's denoising loss (threestudio lambda_lora)."""
    lora_t_min: float = 0.0
    """Smallest diffusion time the LoRA trains on: t ~ U(lora_t_min, lora_t_max) (threestudio: all 1000 steps)."""
    lora_t_max: float = 1.0
    """Largest diffusion time the LoRA trains on."""
    lora_samples: int = 1
    """Noise draws per render in the LoRA's loss (threestudio lora_n_timestamp_samples)."""
    camera_dropout: float = 0.1
    """Chance per step that the LoRA trains without the camera, so camera CFG works (lora_cfg_training)."""
    camera_conditioning: bool = True
    """Condition the LoRA on the camera-to-world matrix (threestudio camera_condition_type: extrinsics)."""
    seed: int = 0
    """Seed of the LoRA's initial weights."""

    def validate(self, path: str = "guidance.vsd") -> None:
        super().validate(path)
        check_choice(join(path, "weighting"), self.weighting, WEIGHTINGS)
        if not 0 <= self.lora_t_min < self.lora_t_max <= 1:
            raise ValueError(f"{path}.lora_t_min and {path}.lora_t_max must satisfy 0 <= lora_t_min < lora_t_max <= 1")
        if self.lora_rank < 1 or self.lora_samples < 1:
            raise ValueError(f"{path}.lora_rank and {path}.lora_samples must be at least 1")
        if self.lora_lr <= 0:
            raise ValueError(f"{path}.lora_lr must be positive (threestudio: 0.0001)")
        if not 0 <= self.camera_dropout < 1:
            raise ValueError(f"{path}.camera_dropout must be in [0, 1)")


class VSD(Guidance):
    """``target = x - D_lora(z) + D_cfg(z)``, weight ``w(t)/sigma``; the LoRA learns the renders' denoiser."""

    name = "vsd"
    config_class = VSDConfig
    config: VSDConfig

    def __init__(self, prior: DiffusionPrior, config: VSDConfig | None = None) -> None:
        super().__init__(prior, config)
        c = self.config
        try:
            self.estimate = prior.trainable_denoiser(TrainableDenoiserConfig(
                rank=c.lora_rank, alpha=float(c.lora_rank), camera_conditioning=c.camera_conditioning, seed=c.seed,
            ))
        except UnsupportedByPrior as err:
            raise UnsupportedByPrior(
                f"{err}, and guidance vsd trains a LoRA of the prior's UNet; "
                "use --prior learned or --prior sd, or another --guidance (msd, sds, sdi)"
            ) from None

    def denoiser_calls(self) -> int:
        return 3  # the prior (CFG batched), the LoRA's estimate (camera CFG batched), the LoRA's training pass

    def parameters(self) -> list[torch.nn.Parameter]:
        return self.estimate.parameters()

    def learning_rate(self) -> float | None:
        return self.config.lora_lr

    def state_dict(self) -> dict[str, Any]:
        return {"lora": self.estimate.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "lora" in state:
            self.estimate.load_state_dict(state["lora"])

    def __call__(
        self,
        x: Tensor,
        cond: Condition,
        step: int = 0,
        total_steps: int = 1,
        generator: torch.Generator | None = None,
    ) -> GuidanceOutput:
        c = self.config
        x = x.detach()
        b = x.shape[0]
        t, sigma_t, sigma, z = noised_render(self.prior, c, x, step, total_steps, generator)
        with torch.no_grad():
            d_pretrained = self.prior.denoise(z, sigma, cond, c.guidance_scale)
            d_lora = self.estimate.denoise(z, sigma, cond, guidance_scale=c.guidance_scale_lora)
        target = x - d_lora + d_pretrained
        weight = c.weight * sds_weight(sigma, c.weighting)

        # the LoRA's denoising loss on the (detached) renders: epsilon MSE, as threestudio's train_lora
        n = c.lora_samples
        where = draw_device(generator, x)
        shape = (-1, *([1] * (x.ndim - 1)))
        x_l = x.repeat(n, *([1] * (x.ndim - 1)))
        t_l = c.lora_t_min + (c.lora_t_max - c.lora_t_min) * rand(b * n, generator, where)
        sigma_l = to_device(self.prior.sigma_from_time(t_l), x.device)
        noise = randn_like(x_l, generator)
        z_l = x_l + sigma_l.view(shape).to(x.dtype) * noise
        # threestudio drops the camera for the whole batch (lora_cfg_training); a tensor, so CUDA never syncs
        keep_camera = to_device(rand(1, generator, where) >= c.camera_dropout, x.device)
        mask = keep_camera.expand(b * n)
        cond_l = cond if n == 1 else cond.repeat(n)
        d = self.estimate.denoise(z_l, sigma_l, cond_l, camera_mask=mask)
        eps = (z_l - d) / sigma_l.view(shape).to(d.dtype)
        lora_loss = (eps.float() - noise.float()).pow(2).mean()

        stats = {
            "t": stat(t.mean(), self.defer_stats),
            "sigma": stat(sigma_t.mean(), self.defer_stats),
            "lora_loss": stat(lora_loss, self.defer_stats),
        }
        return GuidanceOutput(target=target.detach(), weight=weight, stats=stats, aux_loss=c.lora_weight * lora_loss)
