"""Mesh clean-up after marching cubes: drop floaters (small connected components), quadric decimation."""

from __future__ import annotations

import numpy as np

from msd3d.errors import Msd3dError
from msd3d.lazy import lazy_module

trimesh = lazy_module("trimesh")  # imported on first use: `render` and `--help` never need it

__all__ = ["keep_largest_components", "decimate"]


def _component_labels(num_vertices: int, faces: np.ndarray) -> np.ndarray:
    """Connected-component label of every face (faces sharing a vertex are connected)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows = np.concatenate([faces[:, 0], faces[:, 1]])
    cols = np.concatenate([faces[:, 1], faces[:, 2]])
    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(num_vertices, num_vertices))
    _, vertex_labels = connected_components(graph, directed=False)
    return vertex_labels[faces[:, 0]]


def keep_largest_components(mesh: trimesh.Trimesh, keep: int = 0, min_fraction: float = 0.0) -> trimesh.Trimesh:
    """Remove floaters: keep the ``keep`` largest components (0 = all) with at least ``min_fraction`` of the faces.

    Components are ranked by face count; the largest one always survives.
    """
    if len(mesh.faces) == 0:
        return mesh
    labels = _component_labels(len(mesh.vertices), mesh.faces)
    counts = np.bincount(labels)
    order = np.argsort(-counts, kind="stable")
    order = order[counts[order] > 0]
    kept = order[:keep] if keep > 0 else order
    kept = kept[counts[kept] >= min_fraction * len(mesh.faces)]
    if len(kept) == 0:
        kept = order[:1]
    if len(kept) == len(order):
        return mesh
    mask = np.isin(labels, kept)
    return _submesh(mesh, mask)


def _submesh(mesh: trimesh.Trimesh, face_mask: np.ndarray) -> trimesh.Trimesh:
    """The faces selected by ``face_mask`` with unreferenced vertices dropped (no other processing)."""
    faces = mesh.faces[face_mask]
    used, inverse = np.unique(faces.reshape(-1), return_inverse=True)
    return trimesh.Trimesh(mesh.vertices[used], inverse.reshape(-1, 3), process=False)


def decimate(mesh: trimesh.Trimesh, face_budget: int) -> trimesh.Trimesh:
    """Quadric edge-collapse decimation to at most ``face_budget`` faces (fast-simplification)."""
    if face_budget <= 0 or len(mesh.faces) <= face_budget:
        return mesh
    try:
        from fast_simplification import simplify
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise Msd3dError(
            "mesh decimation needs the fast-simplification package; pip install fast-simplification "
            "or set mesh.decimate_faces=0"
        ) from error
    vertices, faces = mesh.vertices, mesh.faces
    target = face_budget
    for _ in range(5):  # the simplifier stops near, not always under, the target: tighten until it fits
        vertices, faces = simplify(
            np.ascontiguousarray(mesh.vertices, np.float64),
            np.ascontiguousarray(mesh.faces, np.int64),
            target_count=target,
        )
        if len(faces) <= face_budget:
            break
        target = max(4, int(target * face_budget / len(faces) * 0.98))
    else:  # pragma: no cover - not observed
        raise Msd3dError(f"could not decimate the mesh to {face_budget} faces; raise mesh.decimate_faces")
    result = trimesh.Trimesh(vertices, faces, process=False)
    result.remove_unreferenced_vertices()
    return result
