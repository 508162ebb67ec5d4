"""What every guidance method returns, and the schedules they share.

A guidance method looks at the current data ``x`` (a render, encoded by the prior) and returns a
detached ``target`` and a per-sample ``weight``. The trainer minimises
``loss = 1/2 * sum_b w_b * ||x_b - target_b||^2 / B`` (threestudio's reduction), so the gradient
reaching ``x_b`` is ``w_b (x_b - target_b) / B``. Methods only use the prior's VE-denoiser interface.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field

from typing import Any

import torch
from torch import Tensor

from msd3d.priors.base import Condition, DiffusionPrior


@dataclass
class GuidanceOutput:
    """target: (B, *data) detached; weight: (B,); stats: scalars for logging.

    ``stats`` values are floats, or 0-dim device tensors when the method's ``defer_stats`` is on
    (both convert with ``float()``; see :func:`stat`).
    """

    target: Tensor
    weight: Tensor
    stats: dict[str, float] = field(default_factory=dict)

    def loss(self, x: Tensor) -> Tensor:
        """``1/2 * sum_b w_b ||x_b - target_b||^2 / B``: a scalar whose gradient is ``w (x - target) / B``."""
        sq = (x - self.target).pow(2).flatten(1).sum(1)
        return 0.5 * (self.weight.to(sq.dtype) * sq).sum() / x.shape[0]

    def gradient(self, x: Tensor) -> Tensor:
        """The gradient this output applies to ``x`` (B, *data), without the 1/B batch reduction."""
        w = self.weight.view(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        return w * (x.detach() - self.target)


class Guidance(abc.ABC):
    """A distillation method written against :class:`DiffusionPrior` only."""

    name: str = "guidance"
    #: Leave statistics computed on an accelerator as 0-dim tensors in ``GuidanceOutput.stats``
    #: instead of copying each to the host (a device sync per value); a caller that reads them all
    #: with one transfer (the trainer) turns this on.
    defer_stats: bool = False
    #: The method's settings dataclass (with ``validate()``); subclasses set it.
    config_class: type = object

    def __init__(self, prior: DiffusionPrior, config: Any = None) -> None:
        self.prior = prior
        self.config = config if config is not None else self.config_class()
        self.config.validate()

    @abc.abstractmethod
    def __call__(
        self,
        x: Tensor,
        cond: Condition,
        step: int = 0,
        total_steps: int = 1,
        generator: torch.Generator | None = None,
    ) -> GuidanceOutput:
        """Target for data ``x`` (B, *data) at optimisation ``step`` of ``total_steps``."""

    def at_end(self, step: int, total_steps: int) -> bool:
        """Whether the method has reached a natural stopping point (MSD: lambda reached its end)."""
        return step >= total_steps


SCHEDULE_KINDS = ("constant", "linear", "log_linear", "cosine")


def interpolate(start: float, end: float, frac: float, kind: str = "linear") -> float:
    """A value moving from ``start`` (frac=0) to ``end`` (frac=1) with the given shape."""
    frac = min(max(float(frac), 0.0), 1.0)
    if kind == "constant":
        return float(start)
    if kind == "linear":
        return start + (end - start) * frac
    if kind == "log_linear":
        if start <= 0 or end <= 0:
            raise ValueError("log_linear schedules need positive start and end")
        return math.exp(math.log(start) + (math.log(end) - math.log(start)) * frac)
    if kind == "cosine":
        return end + (start - end) * 0.5 * (1 + math.cos(math.pi * frac))
    raise ValueError(f"unknown schedule {kind!r}; choose one of {', '.join(SCHEDULE_KINDS)}")


def progress(step: int, total_steps: int) -> float:
    """Fraction of the run done, in [0, 1]."""
    return min(max(step / max(total_steps - 1, 1), 0.0), 1.0)


def stat(value: Tensor | float, defer: bool = False) -> Tensor | float:
    """A logging statistic: a float, or with ``defer`` a detached 0-dim tensor left on its accelerator.

    CPU tensors always become floats (free); reading an accelerator tensor waits for the device.
    """
    if isinstance(value, Tensor):
        value = value.detach()
        if defer and value.device.type != "cpu":
            return value
    return float(value)


def draw_device(generator: torch.Generator | None, like: Tensor) -> torch.device:
    """Where random numbers are drawn: the generator's device (the trainer's is the CPU), else ``like``'s."""
    return generator.device if generator is not None else like.device


def to_device(t: Tensor, device: torch.device | str) -> Tensor:
    """``t`` on ``device``. A CPU -> CUDA copy is staged in pinned memory and does not block the
    host: a plain ``.to("cuda")`` of pageable memory waits for all queued GPU work first."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like x, drawn on the generator's device then moved."""
    if generator is None:
        return torch.randn_like(x)
    noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=torch.float32)
    return to_device(noise, x.device).to(x.dtype)


def rand(n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    """n uniform numbers in [0, 1)."""
    if generator is None:
        return torch.rand(n, device=device)
    return to_device(torch.rand(n, generator=generator, device=generator.device), device)
