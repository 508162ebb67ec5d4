"""Ground-truth geometry scores (msd3d.catalogue.scoring): the truth scores ~0, damaged copies clearly worse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from msd3d.catalogue.families import CATALOGUE
from msd3d.catalogue.scoring import format_geometry_scores, score_mesh_against_family, surface_scores, true_surface
from msd3d.catalogue.shapes import SDFField
from msd3d.export.mesh import MeshExportConfig, extract_mesh

SAMPLES = 20000  # plenty for these margins, and ~3x faster than the default


@pytest.fixture(scope="module")
def mushroom():
    return CATALOGUE["mushroom"]


@pytest.fixture(scope="module")
def exported_truth(mushroom):
    """The first mushroom variant's own SDF as a sharp VolSDF field, meshed by the exporter (auto level)."""
    field = mushroom.shape(0).field(beta=0.002)
    return extract_mesh(field, MeshExportConfig(resolution=96))


def test_true_surface_is_closed_and_outward(mushroom):
    truth = true_surface(mushroom, 0)
    assert truth.is_watertight and truth.volume > 0
    # the surface lies on the SDF's zero set
    sdf = mushroom.shape(0).sdf(torch.as_tensor(truth.vertices[::50], dtype=torch.float32))
    assert sdf.abs().max() < 0.005


def test_exported_true_shape_scores_near_zero(mushroom, exported_truth):
    scores = score_mesh_against_family(exported_truth, mushroom, samples=SAMPLES)
    assert scores["nearest_variant"] == mushroom.variant_names[0]
    assert scores["chamfer"] < 0.012  # the 96^3 grid's cell is 0.021
    assert scores["fscore@0.02"] > 0.98 and scores["fscore@0.05"] == pytest.approx(1.0)
    assert scores["normal_consistency"] > 0.93
    assert scores["height_ratio"] == pytest.approx(1.0, abs=0.05)
    assert scores["components"] == 1 and scores["watertight"]
    # the other variants are clearly further away
    others = [c for n, c in scores["variant_chamfer"].items() if n != scores["nearest_variant"]]
    assert min(others) > 3 * scores["chamfer"]
    assert "Chamfer" in format_geometry_scores(scores)


def test_shrunk_and_stemless_copies_score_clearly_worse(mushroom, exported_truth):
    truth = true_surface(mushroom, 0)
    good = surface_scores(exported_truth, truth, SAMPLES)

    shrunk = exported_truth.copy()
    shrunk.apply_scale(0.8)
    bad = surface_scores(shrunk, truth, SAMPLES)
    assert bad["chamfer"] > 3 * good["chamfer"] and bad["chamfer"] > 0.03
    assert bad["fscore@0.02"] < 0.5 * good["fscore@0.02"]
    assert bad["height_ratio"] == pytest.approx(0.8 * good["height_ratio"], rel=0.01)

    # the cap alone: the SDF cut by a horizontal plane halfway up the shape
    z_lo, z_hi = truth.bounds[0, 2], truth.bounds[1, 2]
    cut = z_lo + 0.5 * (z_hi - z_lo)
    shape = mushroom.shape(0)
    capped = SDFField(lambda p: torch.maximum(shape.sdf(p), cut - p[..., 2]), shape.albedo, beta=0.002)
    stemless = surface_scores(extract_mesh(capped, MeshExportConfig(resolution=64)), truth, SAMPLES)
    assert stemless["chamfer"] > 2 * good["chamfer"]
    assert stemless["completeness"] > 3 * good["completeness"]  # the missing stem is far from the mesh
    assert stemless["fscore@0.02"] < 0.9 * good["fscore@0.02"]
    assert stemless["height_ratio"] < 0.6


def test_scores_repeat_within_five_percent(mushroom, exported_truth):
    truth = true_surface(mushroom, 0)
    runs = [surface_scores(exported_truth, truth, seed=seed) for seed in (0, 7)]
    for key in ("chamfer", "fscore@0.02", "normal_consistency"):
        assert runs[0][key] == pytest.approx(runs[1][key], rel=0.05)


def test_components_and_watertightness_are_counted(mushroom):
    a = trimesh.creation.icosphere(subdivisions=2, radius=0.2)
    b = a.copy()
    b.apply_translation([0.5, 0.0, 0.0])
    two = trimesh.util.concatenate([a, b])
    scores = surface_scores(two, true_surface(mushroom, 0), 5000)
    assert scores["components"] == 2 and scores["watertight"]
    holed = trimesh.Trimesh(a.vertices, a.faces[1:], process=False)
    assert not surface_scores(holed, true_surface(mushroom, 0), 5000)["watertight"]
    assert np.isfinite(scores["chamfer"])


def test_oracle_run_summary_holds_geometry_scores(tmp_path, tiny_run_overrides):
    """Issue 8: generate writes scores.geometry (the default mesh against the true shapes) for oracle runs."""
    import json

    from msd3d.config import load_config
    from msd3d.workflows.text_to_3d import generate

    config = load_config(None, tiny_run_overrides + ["export.video=false"],
                         {"prompt": "a red mushroom", "device": "cpu", "seed": 0, "train.steps": 2})
    generate(config, tmp_path / "run", show_progress=False, log=lambda _: None)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    geometry = summary["scores"]["geometry"]
    assert geometry["family"] == "mushroom" and geometry["nearest_variant"] in geometry["variant_chamfer"]
    assert 0 < geometry["chamfer"] < 1 and 0 <= geometry["fscore@0.05"] <= 1
    assert geometry["components"] >= 1 and isinstance(geometry["watertight"], bool)
    assert summary["mesh"]["threshold"] > 0 and "geometry" not in summary["mesh"]
    assert summary["mesh"]["fringe_optical_depth"] >= 0.0  # what the auto surface carved (0: nothing)
    assert summary["mesh"]["fringe_skin"] >= 0.0


def test_mesh_sections_script_draws_every_family(tiny_run_overrides, tmp_path):
    """scripts/mesh_sections.py: one panel per family from a bench folder, written as a PNG."""
    import importlib.util

    from PIL import Image

    from msd3d.config import load_config
    from msd3d.workflows.text_to_3d import generate

    config = load_config(None, tiny_run_overrides + ["export.video=false"],
                         {"prompt": "a mushroom", "device": "cpu", "seed": 0, "train.steps": 2})
    generate(config, tmp_path / "bench" / "mushroom-msd", show_progress=False, log=lambda _: None)
    script = Path(__file__).parents[1] / "scripts" / "mesh_sections.py"
    spec = importlib.util.spec_from_file_location("mesh_sections", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "sections.png"
    assert module.main([str(tmp_path / "bench"), "--families", "mushroom", "--out", str(out)]) == 0
    width, height = Image.open(out).size
    assert width > 100 and height > 100
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".png"] == ["sections.png"]


def test_family_scores_equal_the_pairwise_scores_against_each_variant():
    """issue 25: scoring against a family samples the mesh once and caches the truths' samples; the
    numbers are exactly those of :func:`surface_scores` against each variant's true surface."""
    family = CATALOGUE["mushroom"]
    mesh = true_surface(family, 1).copy()
    mesh.apply_translation([0.01, 0.0, -0.02])
    scores = score_mesh_against_family(mesh, family, samples=SAMPLES)
    for name in family.variant_names:
        pair = surface_scores(mesh, true_surface(family, name), samples=SAMPLES)
        assert scores["variant_chamfer"][name] == pair["chamfer"]
        if name == scores["nearest_variant"]:
            assert {k: scores[k] for k in pair} == pair
    assert scores["nearest_variant"] == family.variant_names[1]
