"""Mesh files: OBJ (+MTL/PNG when textured), GLB (+y up) and PLY, each written atomically.

The axes and units of the files are described in ``msd3d.export.mesh``'s docstring.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from msd3d.atomic_io import atomic_path, atomic_paths
from msd3d.errors import Msd3dError
from msd3d.export.mesh_config import MESH_FORMATS
from msd3d.lazy import lazy_module

trimesh = lazy_module("trimesh")  # imported on first use: `render` and `--help` never need it

__all__ = ["Y_UP_FROM_Z_UP", "srgb_to_linear_u8", "export_mesh", "export_mesh_files"]

Y_UP_FROM_Z_UP = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
"""-90° about x: msd3d world (+z up) → glTF (+y up); ``(x, y, z) → (x, z, -y)``."""


def srgb_to_linear_u8(rgba: np.ndarray) -> np.ndarray:
    """sRGB-encoded uint8 RGB(A) → linear uint8 (glTF's COLOR_0 is linear; albedo images are sRGB)."""
    c = rgba[..., :3].astype(np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    out = rgba.copy()
    out[..., :3] = np.clip(np.rint(linear * 255.0), 0, 255).astype(np.uint8)
    return out


def _glb_material():
    """Diffuse-looking glTF material (the glTF default material is fully metallic)."""
    return trimesh.visual.material.PBRMaterial(
        name="albedo", baseColorFactor=[255, 255, 255, 255], metallicFactor=0.0, roughnessFactor=1.0, doubleSided=False
    )


def _glb_bytes(mesh: trimesh.Trimesh) -> bytes:
    """Binary glTF, +y up (see ``msd3d.export.mesh``), with vertex colours or the baked texture.

    Vertex colours are converted from sRGB to linear, as glTF's ``COLOR_0`` is linear while the
    field's albedo (like every image the prior saw) is sRGB-encoded; textures stay sRGB per spec.
    """
    y_up = mesh.copy()
    y_up.apply_transform(Y_UP_FROM_Z_UP)
    # the metadata travels into the GLB (mesh extras): it must describe the converted axes
    y_up.metadata = dict(mesh.metadata)
    y_up.metadata["msd3d"] = {
        **dict(mesh.metadata.get("msd3d", {})),
        "up_axis": "+y",
        "front_axis": "+x",
        "axes_from_msd3d_world": "(x, y, z) -> (x, z, -y)",
    }
    if isinstance(y_up.visual, trimesh.visual.TextureVisuals):
        material = y_up.visual.material
        if isinstance(material, trimesh.visual.material.SimpleMaterial):
            material = material.to_pbr()
        material.metallicFactor = 0.0
        material.roughnessFactor = 1.0
        y_up.visual.material = material
    else:
        visual = trimesh.visual.TextureVisuals(material=_glb_material())
        visual.vertex_attributes["color"] = srgb_to_linear_u8(np.asarray(y_up.visual.vertex_colors, np.uint8))
        y_up.visual = visual
    return trimesh.exchange.gltf.export_glb(y_up, include_normals=True)


def _ply_bytes(mesh: trimesh.Trimesh) -> bytes:
    """Binary PLY with per-vertex RGBA (a textured mesh is sampled at its vertex UVs)."""
    out = mesh.copy()
    if isinstance(out.visual, trimesh.visual.TextureVisuals):
        out.visual = out.visual.to_color()
    return trimesh.exchange.ply.export_ply(out, encoding="binary", vertex_normal=True, include_attributes=False)


def _welded_textured_obj(mesh: trimesh.Trimesh, header: str, mtllib: str, material: str) -> str:
    """OBJ text of a UV-textured mesh as one welded surface: ``v`` and ``vn`` once per distinct
    position, ``vt`` once per UV-atlas vertex, faces ``f v/vt/vn`` index them separately.

    The texture baker splits vertices along UV seams (every split copy has the same position); OBJ
    can index positions and UVs separately, so the seams need not cut the surface apart.
    """
    vertices = np.asarray(mesh.vertices)
    positions, position_of = np.unique(vertices, axis=0, return_inverse=True)
    position_of = position_of.reshape(-1)
    faces_v = position_of[np.asarray(mesh.faces)]
    welded = trimesh.Trimesh(positions, faces_v, process=False)
    normals = welded.vertex_normals
    uv = np.asarray(mesh.visual.uv)
    f = np.asarray(mesh.faces) + 1
    fv = faces_v + 1
    lines = [f"# {header}", f"mtllib {mtllib}"]
    lines += [f"v {x:.8g} {y:.8g} {z:.8g}" for x, y, z in positions]
    lines += [f"vt {u:.8g} {v:.8g}" for u, v in uv]
    lines += [f"vn {x:.6g} {y:.6g} {z:.6g}" for x, y, z in normals]
    lines.append(f"usemtl {material}")
    lines += [f"f {a}/{ta}/{a} {b}/{tb}/{b} {c}/{tc}/{c}" for (a, b, c), (ta, tb, tc) in zip(fv, f)]
    return "\n".join(lines) + "\n"


def _obj_files(mesh: trimesh.Trimesh, path: Path) -> dict[Path, bytes]:
    """OBJ text (+ MTL and texture image when textured), companions first, the .obj last."""
    stem = path.stem
    if isinstance(mesh.visual, trimesh.visual.TextureVisuals):
        out = mesh.copy()
        material = out.visual.material
        image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
        # a matte MTL (Ks 0): the albedo is the whole appearance
        out.visual.material = trimesh.visual.material.SimpleMaterial(
            image=image,
            diffuse=[255, 255, 255, 255],
            ambient=[255, 255, 255, 255],
            specular=[0, 0, 0, 255],
            glossiness=1.0,
            name=stem,
        )
        text, companions = trimesh.exchange.obj.export_obj(
            out,
            include_normals=True,
            include_color=False,
            include_texture=True,
            return_texture=True,
            mtl_name=f"{stem}.mtl",
            header=None,
        )
        # trimesh's MTL and texture image, but our own OBJ body: one welded surface (see above)
        material_name = next(line.split(None, 1)[1] for line in text.splitlines() if line.startswith("usemtl "))
        text = _welded_textured_obj(out, "msd3d: +z up, front +x, metres", f"{stem}.mtl", material_name)
        files = {path.parent / name: data for name, data in companions.items()}
    else:
        text = trimesh.exchange.obj.export_obj(
            mesh,
            include_normals=True,
            include_color=True,
            include_texture=False,
            header="msd3d: +z up, front +x, metres; vertex colours as 'v x y z r g b'",
        )
        files = {}
    files[path] = text.encode("utf-8")
    return files


def export_mesh(mesh: trimesh.Trimesh, path: str | os.PathLike[str]) -> list[Path]:
    """Write ``mesh`` to ``path`` by extension (.obj / .glb / .ply), atomically; returns every file written.

    ``.obj`` writes ``<stem>.mtl`` and ``<stem>.png`` next to it when the mesh is textured, and
    ``v x y z r g b`` vertex colours otherwise; the whole set is renamed into place together.
    """
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in MESH_FORMATS:
        raise Msd3dError(f"unknown mesh format {path.suffix!r} for {path}; use one of .obj, .glb, .ply")
    if len(mesh.faces) == 0:
        raise Msd3dError(f"refusing to write an empty mesh to {path}")
    if suffix == "obj":
        files = _obj_files(mesh, path)
        with atomic_paths(list(files)) as temps:
            for tmp, data in zip(temps, files.values()):
                tmp.write_bytes(data)
        return list(files)
    data = _glb_bytes(mesh) if suffix == "glb" else _ply_bytes(mesh)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return [path]


def export_mesh_files(
    mesh: trimesh.Trimesh, directory: str | os.PathLike[str], stem: str = "mesh", formats=("glb", "obj")
) -> list[Path]:
    """Write ``<directory>/<stem>.<format>`` for each format; returns every file written."""
    written: list[Path] = []
    for fmt in formats:
        written += export_mesh(mesh, Path(directory) / f"{stem}.{fmt.lower().lstrip('.')}")
    return written
