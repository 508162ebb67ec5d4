"""Grid encodings of 3-D points built on ``torch.nn.functional.grid_sample``.

Why grid_sample and not a hash grid: a pure-PyTorch multi-resolution hash grid is one to two orders of
magnitude slower than ``grid_sample``-based grids of similar capacity (measurements: docs/design.md §6), because
its gathers, hashing and scatter-add backward run as many small kernels. ``grid_sample`` is one fused
kernel per call (forward and backward) on CPU and CUDA, and in current PyTorch it is twice
differentiable, which analytic (autograd) normals need when they are trained through shading.

Two encodings are provided:

Each is registered by name in :data:`msd3d.registry.ENCODINGS` (``field.nerf.encoding``):

* :class:`TriplaneEncoding` (the default): three axis-aligned feature planes (xy, xz, yz), optionally at
  several resolutions. A point's feature is the concatenation, over levels and planes, of the bilinearly
  interpolated plane features. Memory grows as R^2, so resolutions of 128-256 are cheap, and a 2-D
  bilinear lookup is the fastest grid_sample variant (several times faster than a hand-written
  gather-based bilinear lookup).
* :class:`DenseGridEncoding`: multi-resolution dense 3-D feature volumes (trilinear). More expressive per
  level but memory grows as R^3, so resolutions stay small (32-64).

Both map world points in ``[-bound, bound]^3`` to ``[-1, 1]`` with ``align_corners=True`` and clamp
outside points to the border (the field zeroes their density anyway).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# plane (a, b) uses point coordinates a and b as grid_sample's (x, y)
_PLANE_AXES = ((0, 1), (0, 2), (1, 2))


class TriplaneEncoding(nn.Module):
    """Multi-resolution tri-plane: features (N, 3 * features * len(resolutions)) at points (N, 3)."""

    def __init__(self, resolutions: tuple[int, ...] = (64, 128), features: int = 8, init_std: float = 0.1) -> None:
        super().__init__()
        self.resolutions = tuple(int(r) for r in resolutions)
        self.features = int(features)
        self.planes = nn.ParameterList(
            [nn.Parameter(init_std * torch.randn(3, self.features, r, r)) for r in self.resolutions]
        )

    @property
    def output_dim(self) -> int:
        return 3 * self.features * len(self.resolutions)

    def forward(self, coords: Tensor) -> Tensor:
        """coords (N, 3) in [-1, 1] -> features (N, output_dim)."""
        n = coords.shape[0]
        # (3, 1, N, 2): one grid per plane, sampled as a batch of 3 images in one call
        grid = torch.stack([coords[:, list(ax)] for ax in _PLANE_AXES], dim=0)[:, None]
        out = []
        for planes in self.planes:
            sampled = F.grid_sample(planes, grid, mode="bilinear", padding_mode="border", align_corners=True)
            out.append(sampled[:, :, 0].permute(2, 0, 1).reshape(n, -1))  # (3, C, 1, N) -> (N, 3C)
        return torch.cat(out, dim=-1)


class DenseGridEncoding(nn.Module):
    """Multi-resolution dense voxel grid: features (N, features * len(resolutions)) at points (N, 3)."""

    def __init__(self, resolutions: tuple[int, ...] = (16, 32, 64), features: int = 4, init_std: float = 0.1) -> None:
        super().__init__()
        self.resolutions = tuple(int(r) for r in resolutions)
        self.features = int(features)
        self.grids = nn.ParameterList(
            [nn.Parameter(init_std * torch.randn(1, self.features, r, r, r)) for r in self.resolutions]
        )

    @property
    def output_dim(self) -> int:
        return self.features * len(self.resolutions)

    def forward(self, coords: Tensor) -> Tensor:
        """coords (N, 3) in [-1, 1] -> features (N, output_dim)."""
        n = coords.shape[0]
        grid = coords.view(1, 1, 1, n, 3)  # grid_sample 3-D: (x, y, z) index (W, H, D)
        out = []
        for volume in self.grids:
            sampled = F.grid_sample(volume, grid, mode="bilinear", padding_mode="border", align_corners=True)
            out.append(sampled.view(self.features, n).t())
        return torch.cat(out, dim=-1)


def build_encoding(kind: str, resolutions: tuple[int, ...], features: int, init_std: float = 0.1) -> nn.Module:
    """The encoding registered as ``kind`` (msd3d.registry.ENCODINGS) with these per-level resolutions."""
    from msd3d.registry import ENCODINGS

    return ENCODINGS.factory(kind)(resolutions, features, init_std)


@functools.lru_cache(maxsize=None)
def grid_sample_is_twice_differentiable(device_type: str) -> bool:
    """Whether this PyTorch build can differentiate grid_sample's backward on ``device_type``.

    Older releases raise "derivative for grid_sampler_2d_backward is not implemented"; analytic normals
    trained through shading need that second derivative.
    """
    try:
        # fixed values, not torch.randn: a probe must not move the global RNG (runs would depend on order)
        plane = torch.linspace(-1.0, 1.0, 9, device=device_type).reshape(1, 1, 3, 3).requires_grad_()
        grid = torch.zeros(1, 1, 1, 2, device=device_type, requires_grad=True)
        value = F.grid_sample(plane, grid, align_corners=True)
        (g,) = torch.autograd.grad(value.sum(), grid, create_graph=True)
        g.sum().backward()
        return True
    except RuntimeError:
        return False
