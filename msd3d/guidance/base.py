"""What every guidance method returns, and what it may keep between steps.

A guidance method looks at the current data ``x`` (a render, encoded by the prior) and returns a
detached ``target`` and a per-sample ``weight``. The trainer minimises
``loss = 1/2 * sum_b w_b * ||x_b - target_b||^2 / B`` (threestudio's reduction), so the gradient
reaching ``x_b`` is ``w_b (x_b - target_b) / B``. Methods only use the prior's VE-denoiser interface.
"""

from __future__ import annotations

import abc
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
    aux_loss: Tensor | None = None
    """A scalar loss on the method's own parameters (e.g. a LoRA); the trainer adds it as "guidance_aux"."""

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
    def denoiser_calls(self) -> int:
        """Batched denoiser calls one ``__call__`` makes (classifier-free guidance runs inside each)."""

    # -- trainable state (none by default): a method with learned parts (a LoRA, an EMA) overrides these;
    # the trainer optimises ``parameters()`` in the "guidance" group (``train.lr_network``) and keeps
    # ``state_dict()`` in every checkpoint.
    def parameters(self) -> list[torch.nn.Parameter]:
        """Tensors the trainer optimises together with the scene."""
        return []

    def learning_rate(self) -> float | None:
        """The learning rate of :meth:`parameters` (None: the trainer's ``train.lr_network``)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue this method exactly."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

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


def stat(value: Tensor | float, defer: bool = False) -> Tensor | float:
    """A logging statistic: a float, or with ``defer`` a detached 0-dim tensor left on its accelerator.

    CPU tensors always become floats (free); reading an accelerator tensor waits for the device.
    """
    if isinstance(value, Tensor):
        value = value.detach()
        if defer and value.device.type != "cpu":
            return value
    return float(value)
