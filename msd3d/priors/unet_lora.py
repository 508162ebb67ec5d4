"""A trainable copy of a prior's UNet: a peft LoRA of its attention projections plus a camera embedding.

VSD (ProlificDreamer) estimates the score of the current renders with a LoRA of the pretrained UNet,
conditioned on the camera by an embedding of the flattened camera-to-world matrix added to the time
embedding (threestudio's stable-diffusion-vsd-guidance: ``TimestepEmbedding(16, 1280)`` as the UNet's
``class_embedding``, LoRA on every attention processor).

The copy shares every frozen weight with the prior's UNet (a deep copy whose memo maps each parameter and
buffer to itself), so it costs only the adapter's memory and the prior's own UNet is never modified. It
starts equal to the prior's conditional denoiser: peft zero-initialises LoRA's B, and the camera
embedding's last layer is zero-initialised here (threestudio's is random, so its copy differs at step 0).
A prior whose UNet already has a class embedding (the camera-conditioned learned prior) keeps it: that
copy sees the camera through the prior's own view features.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from msd3d.priors.base import Condition, TrainableDenoiser, TrainableDenoiserConfig, _concat_payloads

#: The attention projections LoRA adapts (those of diffusers' attention processors).
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
CAMERA_FEATURES = 16  # a flattened 4x4 camera-to-world matrix


class _ToDtype(nn.Module):
    """Runs a float32 module and casts its output to the UNet's dtype (fp16 on CUDA)."""

    def __init__(self, module: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.module, self.dtype = module, dtype

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x.float()).to(self.dtype)


class UNetLoRA(TrainableDenoiser):
    """LoRA (rank ``config.rank``) of ``prior.unet`` with an optional camera embedding; see the module docstring."""

    def __init__(self, prior: Any, config: TrainableDenoiserConfig) -> None:
        from diffusers.models.embeddings import TimestepEmbedding
        from peft import LoraConfig

        self.prior = prior
        base = prior.unet
        memo = {id(t): t for t in (*base.parameters(), *base.buffers())}
        unet = copy.deepcopy(base, memo)
        self.camera_embedding: nn.Module | None = None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            unet.add_adapter(LoraConfig(r=config.rank, lora_alpha=config.alpha, init_lora_weights=True,
                                        target_modules=list(LORA_TARGETS)))
            if config.camera_conditioning and base.class_embedding is None:
                embedding = TimestepEmbedding(CAMERA_FEATURES, base.time_embedding.linear_2.out_features)
                nn.init.zeros_(embedding.linear_2.weight)
                nn.init.zeros_(embedding.linear_2.bias)
                self.camera_embedding = embedding.to(prior.device)
                unet.class_embedding = _ToDtype(self.camera_embedding, prior.model_dtype)
        self._params = [p for name, p in unet.named_parameters() if "lora_" in name]
        if self.camera_embedding is not None:
            self._params += list(self.camera_embedding.parameters())
        for p in self._params:
            p.data = p.data.to(device=prior.device, dtype=torch.float32)
            p.requires_grad_(True)
        self.unet = unet.train()  # (the prior's UNet has no dropout: train() changes nothing but the flag)

    def parameters(self) -> list[nn.Parameter]:
        return self._params

    def denoise(self, z: Tensor, sigma: Tensor, cond: Condition, camera_mask: Tensor | None = None,
                guidance_scale: float = 1.0) -> Tensor:
        b = z.shape[0]
        camera = self._camera_features(cond, b, z.device)
        if camera is not None and camera_mask is not None:
            camera = camera * camera_mask.to(camera.device, camera.dtype).view(-1, 1)
        if camera is None or guidance_scale == 1.0:
            self.prior._count(b)
            return self._raw(z, sigma, cond.cond, camera)
        self.prior._count(2 * b)
        both = self._raw(torch.cat([z, z]), torch.cat([sigma, sigma]), _concat_payloads(cond.cond, cond.cond),
                         torch.cat([camera, torch.zeros_like(camera)]))
        with_camera, without = both[:b], both[b:]
        return without + guidance_scale * (with_camera - without)

    def _camera_features(self, cond: Condition, batch: int, device: torch.device) -> Tensor | None:
        """(B, 16) flattened camera-to-world matrices (zeros when the condition has no cameras)."""
        if self.camera_embedding is None:
            return None
        if cond.extrinsics is None:
            return torch.zeros(batch, CAMERA_FEATURES, device=self.prior.device)
        return cond.extrinsics.reshape(batch, CAMERA_FEATURES).to(device=self.prior.device, dtype=torch.float32)

    def _raw(self, z: Tensor, sigma: Tensor, payload: Any, camera: Tensor | None) -> Tensor:
        conditioning = self.prior.unet_conditioning(payload)
        if camera is not None:
            conditioning["class_labels"] = camera
        return self.prior.denoise_with(self.unet, z, sigma, conditioning)
