"""Choosing the torch device from a user's ``--device`` / ``device:`` value."""

from __future__ import annotations

import torch

from msd3d.errors import Msd3dError


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """"auto" -> CUDA when present, else CPU; otherwise the named device, checked to exist."""
    if isinstance(name, torch.device):
        device = name
    elif name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(name)
        except RuntimeError:
            raise Msd3dError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise Msd3dError(f"device {str(name)!r} requested but CUDA is not available; use --device cpu")
    return device
