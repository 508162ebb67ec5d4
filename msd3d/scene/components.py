"""Parts shared by fields and backgrounds: MLPs and density activations."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DENSITY_ACTIVATIONS = ("softplus", "exp", "trunc_exp")


class _TruncExp(torch.autograd.Function):
    """exp(x) whose backward clamps x at 15 (torch-ngp), avoiding overflowing gradients."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: Tensor) -> Tensor:
    return _TruncExp.apply(x)


def density_activation(name: str, raw: Tensor) -> Tensor:
    """Non-negative density from a raw density."""
    if name == "softplus":
        return F.softplus(raw)
    if name == "exp":
        return torch.exp(raw)
    if name == "trunc_exp":
        return trunc_exp(raw)
    raise ValueError(f"unknown density activation {name!r}")


def mlp(in_dim: int, hidden_dim: int, hidden_layers: int, out_dim: int) -> nn.Sequential:
    """A ReLU MLP with ``hidden_layers`` hidden layers of width ``hidden_dim``."""
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(hidden_layers):
        layers += [nn.Linear(dim, hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*layers)
