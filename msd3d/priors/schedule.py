"""The discrete variance-preserving (DDPM) noise schedule, seen in VE coordinates.

A VP timestep ``t`` with cumulative product ``alpha_bar_t`` corresponds to the VE noise level
``sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)``; a VP latent ``z_vp`` is ``z * sqrt(alpha_bar_t)``.
Every prior exposes one of these so that guidance methods can sample "diffusion time" the way
threestudio does (a fraction of the 1000 training steps) and convert it to a noise level.
"""

from __future__ import annotations

import torch
from torch import Tensor


class VPSchedule:
    """Maps between discrete timesteps, normalised diffusion time ``u in [0, 1]`` and VE ``sigma``."""

    def __init__(self, alphas_cumprod: Tensor) -> None:
        alphas_cumprod = alphas_cumprod.detach().double().cpu()
        if alphas_cumprod.ndim != 1 or len(alphas_cumprod) < 2:
            raise ValueError("alphas_cumprod must be a 1-D tensor with at least two entries")
        self.alphas_cumprod = alphas_cumprod
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()  # (T,), increasing
        self.log_sigmas = self.sigmas.log()
        self.num_timesteps = len(alphas_cumprod)
        self._log_sigma_tables: dict[torch.device, Tensor] = {torch.device("cpu"): self.log_sigmas}

    @classmethod
    def scaled_linear(
        cls, num_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
    ) -> VPSchedule:
        """Stable Diffusion's schedule (also the default for the analytic priors)."""
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2
        return cls(torch.cumprod(1.0 - betas, dim=0))

    @classmethod
    def linear(
        cls, num_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02
    ) -> VPSchedule:
        betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
        return cls(torch.cumprod(1.0 - betas, dim=0))

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def log_sigma_table(self, device: torch.device | str = "cpu") -> Tensor:
        """``log_sigmas`` (T,) on ``device``, copied there once and cached.

        float64 wherever the device supports it (CPU, CUDA), so the conversions below give the same
        numbers on every device and never move their inputs to the host (no device sync).
        """
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        table = self._log_sigma_tables.get(device)
        if table is None:
            dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
            table = self.log_sigmas.to(device=device, dtype=dtype)
            self._log_sigma_tables[device] = table
        return table

    def timestep_from_sigma(self, sigma: Tensor) -> Tensor:
        """Continuous timestep in ``[0, T-1]`` whose (log-interpolated) sigma equals ``sigma``.

        Computed on ``sigma``'s device (no host round trip); returns float32 there.
        """
        table = self.log_sigma_table(sigma.device)
        log_sigma = sigma.detach().to(table.dtype).clamp(self.sigma_min, self.sigma_max).log()
        idx = torch.searchsorted(table, log_sigma).clamp(1, self.num_timesteps - 1)
        lo, hi = table[idx - 1], table[idx]
        frac = ((log_sigma - lo) / (hi - lo)).clamp(0, 1)
        return (idx - 1 + frac).to(torch.float32)

    def sigma_from_timestep(self, timestep: Tensor) -> Tensor:
        """Sigma at a (possibly fractional) timestep, interpolated in log sigma, on ``timestep``'s device."""
        table = self.log_sigma_table(timestep.device)
        t = timestep.detach().to(table.dtype).clamp(0, self.num_timesteps - 1)
        lo = t.floor().long().clamp(max=self.num_timesteps - 2)
        frac = t - lo
        log_sigma = (1 - frac) * table[lo] + frac * table[lo + 1]
        return log_sigma.exp().to(torch.float32)

    def sigma_from_time(self, u: Tensor) -> Tensor:
        """Sigma at normalised diffusion time ``u in [0, 1]`` (``u * (T-1)`` timesteps)."""
        return self.sigma_from_timestep(u * (self.num_timesteps - 1))

    def alpha_bar(self, sigma: Tensor) -> Tensor:
        """``alpha_bar = 1 / (1 + sigma^2)``, the VP signal fraction at noise level sigma."""
        return 1.0 / (1.0 + sigma**2)

    def __repr__(self) -> str:
        return (
            f"VPSchedule(T={self.num_timesteps}, sigma_min={self.sigma_min:.4g}, "
            f"sigma_max={self.sigma_max:.4g})"
        )
