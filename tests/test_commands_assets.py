"""``msd3d export`` and ``msd3d render`` on a real (very short) oracle run.

One run is trained once per module (8 steps at 16x16) and shared. Files are checked by loading
them back: meshes with trimesh (``process=False``, so counts are exactly what was written),
videos by decoding every frame.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
import typer
from PIL import Image
from typer.testing import CliRunner

from msd3d.commands.export import export
from msd3d.commands.render import render
from msd3d.config import load_config
from msd3d.export.mesh import Y_UP_FROM_Z_UP, srgb_to_linear_u8, vertex_albedo
from msd3d.export.video import read_video_frames
from msd3d.workflows.assets import load_trained_renderer
from msd3d.workflows.text_to_3d import generate

TINY_RECIPE = """\
prior: {name: oracle, oracle: {supersample: 1, max_steps: 16}}
background: {type: solid}
field: {nerf: {resolutions: [16, 32], hidden_dim: 16}}
render: {resolution: 16, samples_per_ray: 16, eval_resolution: 16}
guidance:
  name: msd
  msd: {guidance_scale: 1.0, kernel: posterior, sampler_steps: 2, lambda_start: 20, lambda_end: 0.5}
train: {steps: 8, val_every: 0, checkpoint_every: 4, eval_views: 2, val_views: 1}
shading: {albedo_only_steps: 100000}
export: {mesh: false, video: false}
mesh: {resolution: 24, formats: [ply]}
video: {frames: 4, size: 16}
"""

runner = CliRunner()


def make_app() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)
    app.command("export")(export)
    app.command("render")(render)
    return app


def invoke(*args: object):
    return runner.invoke(make_app(), [str(a) for a in args])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("assets")
    recipe = root / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    config = load_config(recipe, ["device=cpu"])
    config.prompt = "a red mushroom"
    run = root / "run"
    generate(config, run, show_progress=False, log=lambda message: None)
    return run


def counts_from(output: str) -> tuple[int, int]:
    match = re.search(r"(\d+) vertices, (\d+) faces", output)
    assert match, output
    return int(match.group(1)), int(match.group(2))


def load_glb(path: Path) -> trimesh.Trimesh:
    """The GLB's single mesh, keeping its COLOR_0 attribute (``force="mesh"`` would drop it)."""
    scene = trimesh.load(path, process=False)
    (mesh,) = scene.geometry.values()
    return mesh


def test_export_all_formats_round_trip(run_dir, tmp_path):
    out = tmp_path / "meshes"
    result = invoke(
        "export", run_dir, "--format", "obj,glb", "-f", "ply", "--out", out, "--resolution", "32", "--device", "cpu"
    )
    assert result.exit_code == 0, result.output
    n_vertices, n_faces = counts_from(result.stdout)
    assert n_faces > 100
    written = sorted(p.name for p in out.iterdir())
    assert written == ["mesh.glb", "mesh.obj", "mesh.ply"]  # no temporary files left behind
    for name in written:
        assert f"wrote {out / name}" in result.stdout

    ply = trimesh.load(out / "mesh.ply", process=False)
    obj = trimesh.load(out / "mesh.obj", process=False)
    glb = load_glb(out / "mesh.glb")
    for mesh in (ply, obj, glb):
        assert (len(mesh.vertices), len(mesh.faces)) == (n_vertices, n_faces)
    np.testing.assert_array_equal(obj.faces, ply.faces)

    # 1 unit = 1 m inside the field's box; OBJ/PLY +z up, GLB the same points rotated to +y up
    _, renderer, step = load_trained_renderer(run_dir, "cpu")
    assert step == 8
    assert np.abs(ply.vertices).max() <= renderer.field.bound + 1e-6
    np.testing.assert_allclose(obj.vertices, ply.vertices, atol=1e-5)
    z_up_homogeneous = np.c_[ply.vertices, np.ones(len(ply.vertices))]
    np.testing.assert_allclose(glb.vertices, (z_up_homogeneous @ Y_UP_FROM_Z_UP.T)[:, :3], atol=1e-5)

    # colours: the field's albedo at the vertices (sRGB in PLY/OBJ, linear in the GLB's COLOR_0)
    albedo = vertex_albedo(renderer.field, np.asarray(ply.vertices))
    ply_rgba = np.asarray(ply.visual.vertex_colors)
    assert ply_rgba.dtype == np.uint8 and ply_rgba.shape == (n_vertices, 4)
    assert np.abs(ply_rgba.astype(int) - albedo.astype(int)).max() <= 1
    assert np.abs(np.asarray(obj.visual.vertex_colors).astype(int) - ply_rgba.astype(int)).max() <= 1
    glb_rgba = np.asarray(glb.visual.vertex_attributes["color"])
    assert np.abs(glb_rgba.astype(int) - srgb_to_linear_u8(ply_rgba).astype(int)).max() <= 1
    assert ply_rgba[:, :3].std() > 0  # a real albedo, not one flat colour


def test_export_defaults_and_texture(run_dir, tmp_path):
    # defaults: the run's mesh section (formats [ply], resolution 24), written next to the checkpoint
    result = invoke("export", run_dir, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert (run_dir / "mesh.ply").is_file()
    assert "grid 24^3" in result.stdout

    out = tmp_path / "textured"
    result = invoke(
        "export", run_dir, "--texture", "--texture-size", "32", "--format", "obj,glb", "--decimate", "200",
        "--stem", "asset", "--out", out, "--threshold", "auto",
    )
    assert result.exit_code == 0, result.output
    n_vertices, n_faces = counts_from(result.stdout)
    assert n_faces <= 200
    assert {p.name for p in out.iterdir()} == {"asset.obj", "asset.mtl", "asset.png", "asset.glb"}
    assert Image.open(out / "asset.png").size == (32, 32)
    for mesh in (trimesh.load(out / "asset.obj", process=False), load_glb(out / "asset.glb")):
        assert (len(mesh.vertices), len(mesh.faces)) == (n_vertices, n_faces)
        uv = np.asarray(mesh.visual.uv)
        assert uv.shape == (n_vertices, 2)
        assert uv.min() >= 0.0 and uv.max() <= 1.0


def test_export_rejects_bad_options(run_dir, tmp_path):
    for args, words in (
        (["--format", "fbx"], "--format 'fbx'"),
        (["--threshold", "-3"], "--threshold must be positive"),
        (["--resolution", "4"], "mesh.resolution must be at least 8"),
        (["--fringe-transmittance", "0"], "mesh.fringe_transmittance must lie in (0, 1]"),
        (["--fringe-skin", "-0.1"], "mesh.fringe_skin must be >= 0"),
        (["--stem", "a/b"], "--stem"),
    ):
        result = invoke("export", run_dir, "--out", tmp_path, *args)
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_render_mp4_and_gif(run_dir, tmp_path):
    path = tmp_path / "spin.mp4"
    result = invoke(
        "render", run_dir, "--frames", "5", "--size", "24", "--panels", "rgb,normals", "--fps", "10",
        "--out", path, "-q",
    )
    assert result.exit_code == 0, result.output
    frames = read_video_frames(path)
    assert frames.shape == (5, 24, 48, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["spin.mp4"]

    # a folder as --out, GIF, three panels, lit shading; Pillow merges identical consecutive frames,
    # so check the total duration (frames x 1/fps) as well as the frame size
    result = invoke(
        "render", run_dir, "--format", "gif", "--frames", "3", "--size", "16", "--fps", "10",
        "--panels", "rgb", "--panels", "normals,depth", "--shading", "lambertian", "--out", tmp_path, "--quiet",
    )
    assert result.exit_code == 0, result.output
    gif = tmp_path / "turntable.gif"
    frames = read_video_frames(gif)
    assert frames.shape[1:] == (16, 48, 3) and 1 <= len(frames) <= 3
    with Image.open(gif) as image:
        durations = []
        for i in range(image.n_frames):
            image.seek(i)
            durations.append(image.info["duration"])
    assert sum(durations) == 3 * 100

    # defaults from the run's video section (4 frames, 16 px) into RUN_DIR/turntable.mp4
    result = invoke("render", run_dir, "-q")
    assert result.exit_code == 0, result.output
    assert read_video_frames(run_dir / "turntable.mp4").shape == (4, 16, 16, 3)


def test_render_rejects_bad_options(run_dir, tmp_path):
    for args, words in (
        (["--shading", "phong"], "--shading 'phong'"),
        (["--panels", "rgb,alpha"], "--panels 'alpha'"),
        (["--format", "avi"], "--format 'avi'"),
        (["--out", tmp_path / "x.avi"], "extension must be .mp4 or .gif"),
        (["--format", "gif", "--out", tmp_path / "x.mp4"], "does not match"),
        (["--frames", "0"], "video.frames must be at least 1"),
    ):
        result = invoke("render", run_dir, "-q", *args)
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0]


@pytest.mark.parametrize("command", ["export", "render"])
def test_missing_and_corrupt_checkpoints(run_dir, tmp_path, command):
    no_checkpoint = tmp_path / "no-checkpoint"
    no_checkpoint.mkdir()
    shutil.copy(run_dir / "config.yaml", no_checkpoint / "config.yaml")
    corrupt = tmp_path / "corrupt"
    (corrupt / "checkpoints").mkdir(parents=True)
    shutil.copy(run_dir / "config.yaml", corrupt / "config.yaml")
    data = (run_dir / "checkpoints" / "last.pt").read_bytes()
    (corrupt / "checkpoints" / "last.pt").write_bytes(data[: len(data) // 3])  # a truncated write

    for folder, words in (
        (no_checkpoint, "no checkpoint in"),
        (corrupt, "is unreadable"),
        (tmp_path / "missing", "does not exist"),
    ):
        result = invoke(command, folder, "-q" if command == "render" else "--device=cpu")
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], result.stderr
        assert result.stdout == ""
    assert sorted(p.name for p in no_checkpoint.iterdir()) == ["config.yaml"]  # nothing written


PROBE = """
import json, sys, typer
from msd3d.commands.export import export
from msd3d.commands.render import render
from msd3d.catalogue.oracle import OraclePrior
from msd3d.priors.stable_diffusion import StableDiffusionPrior

built = []
def record(cls):
    original = cls.__init__
    def init(self, *args, **kwargs):
        built.append(cls.__name__)
        original(self, *args, **kwargs)
    cls.__init__ = init
record(StableDiffusionPrior)
record(OraclePrior)

app = typer.Typer()
app.command("export")(export)
app.command("render")(render)
run_dir, out = sys.argv[1], sys.argv[2]
codes = []
for args in (["export", run_dir, "--out", out, "--device", "cpu"],
             ["render", run_dir, "--out", out, "--frames", "2", "--size", "8", "-q", "--device", "cpu"]):
    try:
        codes.append(app(args, standalone_mode=False) or 0)
    except SystemExit as exc:
        codes.append(exc.code)
heavy = sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in ("diffusers", "transformers", "accelerate")})
print(json.dumps({"codes": codes, "priors_built": built, "heavy_modules": heavy}))
"""


def test_export_and_render_never_load_a_diffusion_model(run_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(run_dir), str(tmp_path)], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"codes": [0, 0], "priors_built": [], "heavy_modules": []}
    assert (tmp_path / "mesh.ply").is_file() and (tmp_path / "turntable.mp4").is_file()


def test_export_out_that_is_a_file_is_one_line(run_dir, tmp_path):
    target = tmp_path / "mesh.obj"
    target.write_text("keep me")
    result = invoke("export", run_dir, "--out", target, "--device", "cpu")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --out") and "is a file" in lines[0]
    assert target.read_text() == "keep me"


def test_export_prints_geometry_scores_of_an_oracle_run(run_dir, tmp_path):
    """Issue 8: msd3d export scores an oracle run's mesh against the true shapes."""
    result = invoke("export", run_dir, "--out", tmp_path, "--format", "obj", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert re.search(r"geometry vs mushroom/\w+: Chamfer \d\.\d{4}, F@0\.02", result.stdout), result.stdout


def test_render_out_with_a_trailing_slash_is_a_new_folder(run_dir, tmp_path):
    """`--out clips/` for a folder that does not exist yet wrote a file `clips.mp4` next to it."""
    result = invoke("render", run_dir, "--frames", "2", "--size", "16", "--out", f"{tmp_path / 'clips'}/", "-q")
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.iterdir()] == ["clips"]
    assert read_video_frames(tmp_path / "clips" / "turntable.mp4").shape == (2, 16, 16, 3)
