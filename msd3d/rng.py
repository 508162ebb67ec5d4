"""Random numbers drawn with an optional ``torch.Generator``, on the generator's device.

The trainer's generator lives on the CPU so a run is reproducible on any device and its state can be
checkpointed; draws happen there and the result moves to where it is used. Without a generator the
global RNG draws on ``device``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def draw_device(generator: torch.Generator | None, like: Tensor | torch.device | str) -> torch.device:
    """Where random numbers are drawn: the generator's device, else ``like``'s (a tensor or a device)."""
    if generator is not None:
        return generator.device
    return like.device if isinstance(like, Tensor) else torch.device(like)


def to_device(t: Tensor, device: torch.device | str) -> Tensor:
    """``t`` on ``device``. A CPU -> CUDA copy is staged in pinned memory and does not block the
    host: a plain ``.to("cuda")`` of pageable memory waits for all queued GPU work first."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def rand(
    shape: int | tuple[int, ...], generator: torch.Generator | None, device: torch.device | str = "cpu"
) -> Tensor:
    """Uniform numbers in [0, 1) of ``shape``, drawn on the generator's device, returned on ``device``."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if generator is None:
        return torch.rand(shape, device=device)
    return to_device(torch.rand(shape, generator=generator, device=generator.device), device)


def randn(
    shape: int | tuple[int, ...], generator: torch.Generator | None, device: torch.device | str = "cpu"
) -> Tensor:
    """Standard normal numbers of ``shape``, drawn on the generator's device, returned on ``device``."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if generator is None:
        return torch.randn(shape, device=device)
    return to_device(torch.randn(shape, generator=generator, device=generator.device), device)


def randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like x, drawn (float32) on the generator's device then moved."""
    if generator is None:
        return torch.randn_like(x)
    noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=torch.float32)
    return to_device(noise, x.device).to(x.dtype)
