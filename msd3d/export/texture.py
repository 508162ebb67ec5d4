"""Albedo texture baking on the CPU: xatlas UV unwrap + numpy barycentric rasterisation in UV space.

No GPU rasteriser is needed: every UV triangle is rasterised in texture space with vectorised
numpy (texel centres tested against the triangle's barycentric coordinates), the 3-D surface point
of each covered texel is interpolated from the triangle's vertices, and ``field.albedo`` is queried
there. Uncovered texels are then filled with the colour of the nearest covered texel (a full
"dilation"), so bilinear filtering and mip-mapping never bleed background into the charts.

UV convention (trimesh / OBJ): ``u`` to the right, ``v`` **up**; image row 0 is ``v = 1``.
Texel ``(row r, column c)`` has its centre at ``u = (c + 0.5) / W``, ``v = 1 - (r + 0.5) / H``.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from msd3d.errors import Msd3dError
from msd3d.export.field_query import field_device, query_field
from msd3d.lazy import lazy_module
from msd3d.scene.base import RadianceField

trimesh = lazy_module("trimesh")  # imported on first use: `render` and `--help` never need it

__all__ = ["UVAtlas", "unwrap_uv", "rasterize_uv", "fill_empty_texels", "bake_albedo_texture"]


class UVAtlas:
    """Result of a UV unwrap: seams split vertices, so the mesh gets new vertex/face arrays."""

    def __init__(self, vertex_map: np.ndarray, faces: np.ndarray, uv: np.ndarray):
        self.vertex_map = vertex_map  # (V',) index of each new vertex in the original mesh
        self.faces = faces  # (F, 3) faces into the new vertices (same order as the input faces)
        self.uv = uv  # (V', 2) in [0, 1]


def unwrap_uv(vertices: np.ndarray, faces: np.ndarray, texture_size: int, padding: int = 4) -> UVAtlas:
    """Chart, parameterise and pack the mesh into one square atlas with xatlas.

    ``padding`` is the gap between charts in texels (at ``texture_size``), so that the dilation
    in ``fill_empty_texels`` has room and bilinear lookups near a seam stay inside their chart.
    """
    try:
        import xatlas
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise Msd3dError("texture baking needs the xatlas package; pip install xatlas or drop --texture") from error
    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(vertices, np.float32), np.ascontiguousarray(faces, np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = int(texture_size)
    pack.padding = int(padding)
    pack.bilinear = True
    atlas.generate(pack_options=pack)
    vertex_map, new_faces, uv = atlas[0]
    return UVAtlas(vertex_map.astype(np.int64), new_faces.astype(np.int64), np.clip(uv.astype(np.float64), 0.0, 1.0))


def rasterize_uv(
    uv: np.ndarray, faces: np.ndarray, size: int, max_texels_per_chunk: int = 1 << 22
) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise UV triangles into a ``size`` x ``size`` texture.

    Returns ``face_index`` (H, W) int64 (-1 where no triangle covers the texel centre) and
    ``barycentric`` (H, W, 3) float64 weights of the covering face's three corners.
    Triangles are expanded into the texel centres of their bounding boxes (a ragged, vectorised
    expansion processed in chunks of at most ``max_texels_per_chunk`` candidates).
    """
    h = w = int(size)
    corners = uv[faces]  # (F, 3, 2)
    px = np.stack([corners[..., 0] * w, (1.0 - corners[..., 1]) * h], axis=-1)  # pixel units, y down
    # texel (r, c) has its centre at (c + 0.5, r + 0.5)
    cmin = np.clip(np.ceil(px[..., 0].min(1) - 0.5), 0, w - 1).astype(np.int64)
    cmax = np.clip(np.floor(px[..., 0].max(1) - 0.5), 0, w - 1).astype(np.int64)
    rmin = np.clip(np.ceil(px[..., 1].min(1) - 0.5), 0, h - 1).astype(np.int64)
    rmax = np.clip(np.floor(px[..., 1].max(1) - 0.5), 0, h - 1).astype(np.int64)
    box_w = np.maximum(cmax - cmin + 1, 0)
    box_h = np.maximum(rmax - rmin + 1, 0)
    counts = box_w * box_h

    a, b, c = px[:, 0], px[:, 1], px[:, 2]  # (F, 2) each
    area2 = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    valid = np.abs(area2) > 1e-12
    counts = np.where(valid, counts, 0)

    face_index = np.full((h, w), -1, np.int64)
    barycentric = np.zeros((h, w, 3), np.float64)
    cumulative = np.cumsum(counts)
    start = 0
    while start < len(faces):
        # as many whole triangles as fit in the chunk (at least one)
        base = cumulative[start - 1] if start > 0 else 0
        stop = int(np.searchsorted(cumulative, base + max_texels_per_chunk, side="right"))
        stop = max(stop, start + 1)
        tri = np.arange(start, stop)
        n = counts[tri]
        start = stop
        if n.sum() == 0:
            continue
        tri_of = np.repeat(tri, n)
        offsets = np.repeat(np.cumsum(n) - n, n)
        local = np.arange(len(tri_of)) - offsets
        col = cmin[tri_of] + local % box_w[tri_of]
        row = rmin[tri_of] + local // box_w[tri_of]
        x, y = col + 0.5, row + 0.5
        ax, ay = a[tri_of, 0], a[tri_of, 1]
        bx, by = b[tri_of, 0], b[tri_of, 1]
        cx, cy = c[tri_of, 0], c[tri_of, 1]
        inv = 1.0 / area2[tri_of]
        w_a = ((bx - x) * (cy - y) - (by - y) * (cx - x)) * inv
        w_b = ((cx - x) * (ay - y) - (cy - y) * (ax - x)) * inv
        w_c = 1.0 - w_a - w_b
        inside = (w_a >= -1e-9) & (w_b >= -1e-9) & (w_c >= -1e-9)
        row, col = row[inside], col[inside]
        face_index[row, col] = tri_of[inside]
        barycentric[row, col] = np.stack([w_a[inside], w_b[inside], w_c[inside]], axis=-1)
    return face_index, barycentric


def fill_empty_texels(image: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Give every uncovered texel the colour of its nearest covered texel (seam-free dilation)."""
    if covered.all() or not covered.any():
        return image
    from scipy.ndimage import distance_transform_edt

    rows, cols = distance_transform_edt(~covered, return_distances=False, return_indices=True)
    return image[rows, cols]


@torch.no_grad()
def bake_albedo_texture(
    mesh: trimesh.Trimesh,
    field: RadianceField,
    texture_size: int = 1024,
    chunk_size: int = 262144,
    device: torch.device | str | None = None,
) -> trimesh.Trimesh:
    """UV-unwrap ``mesh`` and bake ``field.albedo`` into a ``texture_size``² RGB image.

    Returns a new mesh (vertices split along UV seams, same faces in the same order, same
    geometry) whose visual is ``TextureVisuals`` with a PBR material (metallic 0, roughness 1)
    holding the image as its base-colour texture.
    """
    device = field_device(field) if device is None else device
    atlas = unwrap_uv(mesh.vertices, mesh.faces, texture_size)
    vertices = mesh.vertices[atlas.vertex_map]
    face_index, barycentric = rasterize_uv(atlas.uv, atlas.faces, texture_size)
    covered = face_index >= 0

    rows, cols = np.nonzero(covered)
    corners = vertices[atlas.faces[face_index[rows, cols]]]  # (T, 3, 3)
    points = np.einsum("tk,tkd->td", barycentric[rows, cols], corners)  # (T, 3) surface points
    rgb = query_field(field.albedo, points, chunk_size, device).reshape(len(points), 3)
    image = np.zeros((texture_size, texture_size, 3), np.uint8)
    image[rows, cols] = np.clip(np.rint(np.nan_to_num(rgb) * 255.0), 0, 255).astype(np.uint8)
    image = fill_empty_texels(image, covered)

    material = trimesh.visual.material.PBRMaterial(
        name="albedo",
        baseColorTexture=Image.fromarray(image),
        baseColorFactor=[255, 255, 255, 255],
        metallicFactor=0.0,
        roughnessFactor=1.0,
    )
    textured = trimesh.Trimesh(vertices, atlas.faces, process=False)
    textured.visual = trimesh.visual.TextureVisuals(uv=atlas.uv, material=material)
    textured.metadata.update(mesh.metadata)
    return textured
