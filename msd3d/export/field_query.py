"""Chunked queries of a radiance field at numpy points: shared by the mesh exporter and the texture baker."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor

from msd3d.scene.base import RadianceField

__all__ = ["field_device", "query_field"]


def field_device(field: RadianceField) -> torch.device:
    """The device a field's parameters live on (CPU for parameter-free analytic fields)."""
    if isinstance(field, torch.nn.Module):
        for tensor in field.parameters():
            return tensor.device
        for tensor in field.buffers():
            return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def query_field(
    fn: Callable[[Tensor], Tensor],
    points: np.ndarray,
    chunk_size: int = 262144,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Evaluate ``fn`` (``field.density`` or ``field.albedo``) at points (P, 3) in chunks → float32 numpy."""
    device = torch.device("cpu") if device is None else torch.device(device)
    outputs = []
    for start in range(0, len(points), chunk_size):
        chunk = torch.as_tensor(points[start : start + chunk_size], dtype=torch.float32, device=device)
        outputs.append(fn(chunk).float().cpu().numpy())
    if not outputs:
        return np.zeros((0,), np.float32)
    return np.concatenate(outputs, axis=0)
