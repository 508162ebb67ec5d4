"""Issue 10: safe by default. Each test reproduces one failure found by fault testing.

Checkpoints are data (never code), user strings are literals, one process per run folder, bad
numbers fail before work, nothing is lost or half-written on a full disk, SIGTERM is handled in
every stage. Runs are tiny oracle runs on the CPU (a few seconds each).
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from msd3d.cli import app
from msd3d.config import load_config, to_yaml
from msd3d.errors import ConfigError, Msd3dError
from msd3d.run_dir import RunDir, load_checkpoint
from msd3d.train import Trainer, TrainingDiverged
from msd3d.workflows.text_to_3d import generate

runner = CliRunner()

TINY_RECIPE = """\
prior: {name: oracle, oracle: {supersample: 1, max_steps: 16}}
background: {type: solid}
field: {nerf: {resolutions: [16, 32], hidden_dim: 16}}
render: {resolution: 16, samples_per_ray: 16, eval_resolution: 16}
guidance:
  name: msd
  msd: {guidance_scale: 1.0, kernel: posterior, sampler_steps: 2, lambda_start: 20, lambda_end: 0.5}
train: {steps: 4, val_every: 0, log_every: 1, checkpoint_every: 2, eval_views: 2, val_views: 1}
shading: {albedo_only_steps: 100000}
export: {mesh: false, video: false}
mesh: {resolution: 16, formats: [ply]}
video: {frames: 4, size: 16}
device: cpu
"""


def _run(args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def _one_error_line(err: str) -> str:
    """The one ``error:`` line of stderr (progress lines such as "resuming ..." may precede it)."""
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("resuming ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text(TINY_RECIPE)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, recipe) -> Path:
    """A finished 4-step run (checkpoint at step 4); tests copy it."""
    config = load_config(recipe, [], {"prompt": "a red mushroom"})
    run = tmp_path_factory.mktemp("trained") / "run"
    generate(config, run, show_progress=False, log=lambda message: None)
    return run


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "run"))


# ------------------------------------------------------------------------------------------------
# security


class _Payload:
    """Unpickling this calls os.system (creates a marker file): what a crafted checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("command", ["export", "render", "resume"])
def test_a_crafted_checkpoint_runs_no_code(run_copy, tmp_path, command):
    marker = tmp_path / "pwned"
    torch.save({"step": 4, "field": {}, "payload": _Payload(marker)}, run_copy / "checkpoints" / "last.pt")
    args = {
        "export": ["export", run_copy, "--device", "cpu"],
        "render": ["render", run_copy, "--device", "cpu", "-q"],
        "resume": ["generate", "--resume", run_copy, "-q"],
    }[command]
    code, _, err = _run(args)
    assert not marker.exists(), "loading the checkpoint ran its code"
    assert code == 2
    assert "refused" in _one_error_line(err)


def test_a_real_checkpoint_loads_with_weights_only(trained):
    state = torch.load(RunDir(trained).checkpoint, weights_only=True)
    assert state["step"] == 4 and "optimizer" in state and "generator" in state


BATCH = """\
defaults: {{config: tiny.yaml}}
prompts:
  - {{prompt: a red mushroom, out: {out}}}
"""


@pytest.mark.parametrize("out", ["../escaped", "/tmp/msd3d-escaped", "~/msd3d-escaped", "a/../../b"])
def test_batch_out_must_stay_inside_the_root(tmp_path, recipe, out):
    from msd3d.workflows.batch_runner import load_batch_file, plan_batch

    shutil.copy(recipe, tmp_path / "tiny.yaml")
    (tmp_path / "b.yaml").write_text(BATCH.format(out=json.dumps(out)))
    (item,) = plan_batch(load_batch_file(tmp_path / "b.yaml"), tmp_path / "root")
    assert item.action == "invalid"
    assert "entry 0" in item.error and "out" in item.error and "--allow-outside-root" in item.error
    (allowed,) = plan_batch(load_batch_file(tmp_path / "b.yaml"), tmp_path / "root", allow_outside_root=True)
    assert allowed.action == "train"


def test_batch_never_writes_into_a_foreign_folder(tmp_path, recipe):
    from msd3d.workflows.batch_runner import load_batch_file, plan_batch

    shutil.copy(recipe, tmp_path / "tiny.yaml")
    (tmp_path / "b.yaml").write_text(BATCH.format(out="mine"))
    mine = tmp_path / "root" / "mine"
    mine.mkdir(parents=True)
    (mine / "config.yaml").write_text("my: own file\n")
    (item,) = plan_batch(load_batch_file(tmp_path / "b.yaml"), tmp_path / "root")
    assert item.action == "invalid" and "not an msd3d run folder" in item.error
    assert (mine / "config.yaml").read_text() == "my: own file\n"


def test_generate_never_writes_into_a_foreign_folder(tmp_path, recipe):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my: own file\n")
    code, _, err = _run(["generate", "a red mushroom", "-c", recipe, "--out", mine, "-q"])
    assert code == 2 and "not an msd3d run folder" in _one_error_line(err)
    assert sorted(p.name for p in mine.iterdir()) == ["config.yaml"]
    assert (mine / "config.yaml").read_text() == "my: own file\n"


def test_interpolation_in_user_strings_is_literal(tmp_path, monkeypatch):
    monkeypatch.setenv("MSD3D_SECRET", "hunter2")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("negative_prompt: ${oc.env:MSD3D_SECRET}\nprior: {sd: {model: '${oc.env:MSD3D_SECRET}'}}\n")
    config = load_config(recipe, ["device=${oc.env:MSD3D_SECRET}x"], {"prompt": "a ${oc.env:MSD3D_SECRET} mushroom"})
    assert config.prompt == "a ${oc.env:MSD3D_SECRET} mushroom"
    assert config.negative_prompt == "${oc.env:MSD3D_SECRET}"
    assert config.prior.sd.model == "${oc.env:MSD3D_SECRET}"
    assert config.device == "${oc.env:MSD3D_SECRET}x"
    text = to_yaml(config)
    assert "hunter2" not in text
    (tmp_path / "config.yaml").write_text(text)
    assert load_config(tmp_path / "config.yaml").prompt == config.prompt  # and back, unchanged


# ------------------------------------------------------------------------------------------------
# one process per run folder


_HOLD = """\
import sys, time
from msd3d.run_lock import RunLock
RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_process_on_a_run_folder_fails_at_once(tmp_path, recipe):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(out / ".msd3d.lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.perf_counter()
        code, _, err = _run(["generate", "a red mushroom", "-c", recipe, "--out", out, "-q"])
        line = _one_error_line(err)
        assert code == 2 and f"process {holder.pid} on " in line and "since" in line
        assert time.perf_counter() - t0 < 5
        assert not (out / "checkpoints").exists()
    finally:
        holder.kill()  # a dead holder: the lock is taken over
        holder.wait()
    code, _, err = _run(["generate", "a red mushroom", "-c", recipe, "--out", out, "-q"])
    assert code == 0, err
    holder_record = json.loads((out / ".msd3d.lock").read_text())
    assert holder_record["pid"] == os.getpid()


def test_resume_of_a_running_run_and_a_second_batch_fail(run_copy, tmp_path, recipe):
    from msd3d.run_lock import RunLock

    with RunLock(run_copy / ".msd3d.lock"):
        code, _, err = _run(["generate", "--resume", run_copy, "-q"])
        assert code == 2 and "is in use by process" in _one_error_line(err)
    shutil.copy(recipe, tmp_path / "tiny.yaml")
    (tmp_path / "b.yaml").write_text("defaults: {config: tiny.yaml}\nprompts: [a red mushroom]\n")
    root = tmp_path / "root"
    with RunLock(root / ".batch_summary.lock"):
        code, _, err = _run(["batch", tmp_path / "b.yaml", "--out", root, "-q"])
        assert code == 2 and "batch root" in _one_error_line(err)
    assert not (root / "batch_summary.json").exists()


# ------------------------------------------------------------------------------------------------
# prompts and numbers


PROMPTS = [
    "a child's mushroom",
    'a "quoted" mushroom',
    "a back\\slash \\\\ mushroom \\n",
    "un champignon d'été — 一个蘑菇, гриб 🍄",
    "a: mushroom # not a comment [1, 2] {x}",
    "${oc.env:HOME} \\${x}",
]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_any_printable_prompt_round_trips_through_config_yaml(tmp_path, prompt):
    config = load_config(None, [], {"prompt": prompt})
    assert config.prompt == prompt
    (tmp_path / "config.yaml").write_text(to_yaml(config))
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["prompt"] == prompt
    assert load_config(tmp_path / "config.yaml").prompt == prompt


def test_generate_with_an_apostrophe(tmp_path, recipe):
    out = tmp_path / "run"
    code, _, err = _run(["generate", "a child's mushroom", "-c", recipe, "--out", out, "-q"])
    assert code == 0, err
    assert load_config(out / "config.yaml").prompt == "a child's mushroom"
    assert json.loads((out / "summary.json").read_text())["prompt"] == "a child's mushroom"


@pytest.mark.parametrize("char", ["\x1b", "\x07", "\x00", "\n", "\x9b"])
def test_control_characters_in_a_prompt_are_rejected(tmp_path, recipe, char):
    code, _, err = _run(["generate", f"a red{char}[31m mushroom", "-c", recipe, "--out", tmp_path / "r", "-q"])
    line = _one_error_line(err)
    assert code == 2 and f"U+{ord(char):04X}" in line and char not in err.rstrip("\n")
    assert not (tmp_path / "r").exists()


def test_batch_tables_never_print_control_characters(tmp_path, recipe):
    shutil.copy(recipe, tmp_path / "tiny.yaml")
    (tmp_path / "b.yaml").write_text('defaults: {config: tiny.yaml}\nprompts: ["a red\\e[2J mushroom\\a"]\n')
    code, out, err = _run(["batch", tmp_path / "b.yaml", "--out", tmp_path / "root", "--dry-run"])
    assert code == 1  # the entry is invalid
    assert "\x1b" not in out + err and "\x07" not in out + err
    assert "U+001B" in out + err


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.lr=nan", "train.lr"),
        ("train.lr=inf", "train.lr"),
        ("train.lr_network=-inf", "train.lr_network"),
        ("field.nerf.bound=nan", "field.nerf.bound"),
        ("train.betas=[0.9,1.0]", "train.betas"),
        ("train.betas=[1.5,0.99]", "train.betas"),
        ("train.adam_eps=nan", "train.adam_eps"),
        ("train.adam_eps=0", "train.adam_eps"),
        ("seed=18446744073709551616", "seed"),
        ("seed=4294967296", "seed"),
        ("render.resolution=100000", "render.resolution"),
        ("render.eval_resolution=100000", "render.eval_resolution"),
        ("render.samples_per_ray=1000000", "render.samples_per_ray"),
        ("video.size=100000", "video.size"),
        ("video.frames=1000000", "video.frames"),
        ("video.frames=3000", "video.frames x video.size"),  # fine alone, 8+ GiB with size 256 x 4 panels
        ("mesh.resolution=100000", "mesh.resolution"),
        ("mesh.texture_size=100000", "mesh.texture_size"),
        ("camera.batch_size=100000", "camera.batch_size"),
        ("train.eval_views=100000", "train.eval_views"),
    ],
)
def test_bad_numbers_fail_naming_the_key(override, key):
    extra = ["video.panels=[rgb,normals,depth,opacity]", "video.size=512"] if "x video.size" in key else []
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override, *extra])


def test_export_and_render_sizes_are_bounded(trained):
    code, _, err = _run(["export", trained, "--resolution", "100000", "--device", "cpu"])
    assert code == 2 and "mesh.resolution" in _one_error_line(err)
    code, _, err = _run(["render", trained, "--size", "100000", "--device", "cpu", "-q"])
    assert code == 2 and "video.size" in _one_error_line(err)


def test_parameters_that_turn_nonfinite_in_the_step_are_restored_and_never_checkpointed(tmp_path, recipe):
    config = load_config(recipe, [], {"prompt": "a red mushroom"})
    config.train.lr = float("nan")  # what validation now rejects: finite gradients, non-finite update
    trainer = Trainer(config, tmp_path / "run", show_progress=False)
    before = {k: v.detach().clone() for k, v in trainer.renderer.named_parameters()}
    trainer.fit()
    assert trainer.nonfinite_total == 4
    state = load_checkpoint(RunDir(tmp_path / "run"))
    for key, value in state["field"].items():
        assert torch.isfinite(value).all() if value.is_floating_point() else True, key
    for key, value in before.items():
        assert torch.equal(state["field"][key], value), key  # every step was undone
    assert [r["finite"] for r in trainer.metrics.read()] == [False] * 4
    # and a non-finite state is never written, whatever produced it
    with torch.no_grad():
        next(trainer.renderer.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="refusing to checkpoint"):
        trainer.save_checkpoint()
    assert load_checkpoint(RunDir(tmp_path / "run"))["step"] == 4


# ------------------------------------------------------------------------------------------------
# disk full and other I/O failures


def _good_video(path: Path) -> bytes:
    from msd3d.export.video import write_video

    frames = (torch.rand(4, 16, 16, 3) * 255).to(torch.uint8).numpy()
    write_video(frames, path, fps=4)
    return path.read_bytes()


@pytest.mark.parametrize("failure", ["empty", "truncated"])
def test_a_failed_video_write_keeps_the_old_file(tmp_path, monkeypatch, failure):
    import msd3d.export.video as video

    path = tmp_path / "turntable.mp4"
    old = _good_video(path)
    real = video._write_mp4

    def broken(frames, out, fps, quality):  # what ffmpeg leaves on a full disk; its exit code is ignored
        if failure == "truncated":
            real(frames[:1], out, fps, quality)

    monkeypatch.setattr(video, "_write_mp4", broken)
    frames = (torch.rand(4, 16, 16, 3) * 255).to(torch.uint8).numpy()
    with pytest.raises(Msd3dError, match="turntable.mp4") as info:
        video.write_video(frames, path, fps=4)
    assert "\n" not in str(info.value)
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["turntable.mp4"]  # no temp file left


def test_render_onto_a_full_disk_fails_and_keeps_the_video(trained, tmp_path, monkeypatch):
    import msd3d.export.video as video

    path = tmp_path / "turntable.mp4"
    old = _good_video(path)
    monkeypatch.setattr(video, "_write_mp4", lambda frames, out, fps, quality: None)
    monkeypatch.setattr(video.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1 << 30, 1 << 30, 0))
    code, _, err = _run(["render", trained, "--out", path, "--device", "cpu", "-q", "--frames", "4", "--size", "16"])
    assert code == 2 and "no space left on device writing" in _one_error_line(err)
    assert path.read_bytes() == old


def _fail_writes(monkeypatch, predicate):
    """Make ``Path.open`` for matching files return a file whose writes raise ENOSPC (a full disk)."""
    real_open = pathlib.Path.open

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def __getattr__(self, name):
            return getattr(self.f, name)

    def fake_open(self, mode="r", *args, **kwargs):
        f = real_open(self, mode, *args, **kwargs)
        return Full(f) if predicate(self, mode) else f

    monkeypatch.setattr(pathlib.Path, "open", fake_open)


def test_disk_full_writing_a_checkpoint_is_one_line_and_keeps_the_last_one(run_copy, monkeypatch):
    _fail_writes(monkeypatch, lambda p, mode: "w" in mode and p.name.startswith(".last.pt."))
    code, _, err = _run(["generate", "--resume", run_copy, "train.steps=6", "-q"])
    line = _one_error_line(err)
    assert code == 2 and "no space left on device writing" in line and "last.pt" in line
    assert "the last good checkpoint is step 4" in line
    assert load_checkpoint(RunDir(run_copy))["step"] == 4
    assert not [p for p in (run_copy / "checkpoints").iterdir() if p.name != "last.pt"]


def test_disk_full_appending_metrics_is_one_line(run_copy, monkeypatch):
    _fail_writes(monkeypatch, lambda p, mode: mode == "a" and p.name == "metrics.jsonl")
    code, _, err = _run(["generate", "--resume", run_copy, "train.steps=6", "-q"])
    line = _one_error_line(err)
    assert code == 2 and "metrics.jsonl" in line and "the last good checkpoint is step 4" in line


def test_disk_full_during_export_is_one_line(trained, tmp_path, monkeypatch):
    _fail_writes(monkeypatch, lambda p, mode: "w" in mode and p.name.startswith(".mesh.ply."))
    code, _, err = _run(["export", trained, "--out", tmp_path / "mesh", "--device", "cpu", "--format", "ply"])
    assert code == 2 and "no space left on device writing" in _one_error_line(err)
    assert not (tmp_path / "mesh").exists() or not any((tmp_path / "mesh").iterdir())


def test_the_last_checkpoint_is_written_once(tmp_path, recipe, monkeypatch):
    import msd3d.train as train

    saved: list[int] = []
    real = train.save_checkpoint
    monkeypatch.setattr(train, "save_checkpoint", lambda path, state: (saved.append(state["step"]), real(path, state)))
    config = load_config(recipe, [], {"prompt": "a red mushroom"})  # steps 4, checkpoint_every 2
    Trainer(config, tmp_path / "run", show_progress=False).fit()
    assert saved == [2, 4]


def test_orphaned_temp_files_are_removed_on_the_next_start(run_copy):
    orphan = run_copy / "checkpoints" / ".last.pt.0123abcd.tmp.pt"
    orphan.write_bytes(b"half a checkpoint")
    other = run_copy / ".summary.json.89abcdef.tmp.json"
    other.write_text("{")
    keep = run_copy / "notes.tmp.txt"
    keep.write_text("mine")
    code, _, err = _run(["generate", "--resume", run_copy, "-q"])
    assert code == 0, err
    assert not orphan.exists() and not other.exists() and keep.exists()


def test_a_restart_after_a_run_died_before_its_first_checkpoint_starts_a_clean_log(tmp_path, recipe):
    out = tmp_path / "run"
    out.mkdir()
    config = load_config(recipe, [], {"prompt": "a red mushroom"})
    (out / "config.yaml").write_text(to_yaml(config))
    (out / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 9.0}) + "\n" for s in range(3)))
    code, _, err = _run(["generate", "a red mushroom", "-c", recipe, "--out", out, "-q"])
    assert code == 0, err
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3]


class _Unhandled(Exception):
    """Raised by the test's own SIGTERM handler: the command did not handle the signal itself."""


def test_sigterm_while_meshing_exits_130_with_a_message(tmp_path, recipe, monkeypatch):
    import msd3d.workflows.text_to_3d

    def slow_mesh(*args, **kwargs):  # a real SIGTERM to this process in the middle of meshing
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(2)
        raise AssertionError("the signal was not delivered")

    def unhandled(signum, frame):  # instead of dying with 143 (what happened before), fail the test
        raise _Unhandled("SIGTERM reached the default handler")

    monkeypatch.setattr(msd3d.workflows.text_to_3d, "write_mesh", slow_mesh)
    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        out = tmp_path / "run"
        result = runner.invoke(app, ["generate", "a red mushroom", "-c", str(recipe), "--out", str(out), "-q",
                                     "export.mesh=true"])
        after = signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not isinstance(result.exception, _Unhandled), "SIGTERM was not handled while meshing"
    assert result.exit_code == 130, (result.exit_code, result.stderr)
    line = _one_error_line(result.stderr)
    assert "SIGTERM" in line and f"--resume {out}" in line
    assert load_checkpoint(RunDir(out))["step"] == 4
    assert after is unhandled  # the command put the handler back


@pytest.mark.parametrize("command", ["export", "render"])
def test_sigterm_during_export_and_render_exits_130(trained, tmp_path, monkeypatch, command):
    import msd3d.export.mesh
    import msd3d.workflows.assets

    def slow(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(2)
        raise AssertionError("the signal was not delivered")

    def unhandled(signum, frame):
        raise _Unhandled("SIGTERM reached the default handler")

    monkeypatch.setattr(msd3d.workflows.assets, "write_turntable", slow)
    monkeypatch.setattr(msd3d.export.mesh, "export_mesh_files", slow)
    args = {
        "export": ["export", trained, "--out", tmp_path / "mesh", "--device", "cpu"],
        "render": ["render", trained, "--out", tmp_path / "t.mp4", "--device", "cpu", "-q"],
    }[command]
    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        result = runner.invoke(app, [str(a) for a in args])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not isinstance(result.exception, _Unhandled), "SIGTERM was not handled"
    assert result.exit_code == 130 and "SIGTERM received" in _one_error_line(result.stderr)


# ------------------------------------------------------------------------------------------------
# honest claims


def test_occupancy_update_keeps_the_max_of_duplicate_cells(recipe, monkeypatch):
    """nerfacc's update writes duplicate cells in an unspecified order (last write wins, differing
    between CPU runs); each cell must keep the max of its samples whatever the order."""
    from msd3d.scene_builder import build_renderer

    config = load_config(recipe, ["render.use_occupancy_grid=true", "render.grid_warmup_steps=0"])
    renderer = build_renderer(config)
    renderer.update_occupancy(0, force=True)
    estimator = renderer.estimator
    estimator.occs.zero_()
    cells = torch.tensor([5, 9, 5, 5, 9, 17])  # duplicates, as random + occupied cell sampling gives
    densities = torch.tensor([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])  # the first sample of each cell is the largest
    monkeypatch.setattr(estimator, "_sample_uniform_and_occupied_cells", lambda n: [cells])
    monkeypatch.setattr(renderer.field, "density", lambda x: densities[: len(x)])
    renderer.update_occupancy(1, force=True)
    step = renderer._grid_step_size(torch.device("cpu"))
    expected = torch.zeros_like(estimator.occs)
    expected[[5, 9, 17]] = torch.tensor([6.0, 5.0, 1.0]) * step
    assert torch.equal(estimator.occs, expected)


def test_denoiser_calls_carry_across_a_resume(tmp_path, recipe):
    config = load_config(recipe, [], {"prompt": "a red mushroom"})
    full = Trainer(config, tmp_path / "full", show_progress=False)
    full.fit()
    first = Trainer(config, tmp_path / "split", show_progress=False)
    first.fit(stop_at=2)
    second = Trainer(config, tmp_path / "split", show_progress=False)
    second.resume()
    second.fit()
    calls_full = [r["denoiser_calls"] for r in full.metrics.read()]
    calls_split = [r["denoiser_calls"] for r in second.metrics.read()]
    assert calls_split == calls_full and calls_full[-1] > calls_full[0] > 0
