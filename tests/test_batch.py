"""``msd3d batch``: schema checks, precedence, failures recorded, skip/resume, sharding.

Entries train for 3-4 steps at 16x16 on the oracle prior (a few seconds each with one thread).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from msd3d.commands.batch import batch
from msd3d.errors import Msd3dError
from msd3d.train import Trainer
from msd3d.workflows.batch_runner import load_batch_file, parse_shard, plan_batch

TINY_RECIPE = """\
prior: {name: oracle, oracle: {supersample: 1, max_steps: 16}}
background: {type: solid}
field: {nerf: {resolutions: [16, 32], hidden_dim: 16}}
render: {resolution: 16, samples_per_ray: 16, eval_resolution: 16}
guidance:
  name: msd
  msd: {guidance_scale: 1.0, kernel: posterior, sampler_steps: 2, lambda_start: 20, lambda_end: 0.5}
train: {steps: 4, val_every: 0, checkpoint_every: 1, eval_views: 2, val_views: 1, log_every: 1}
shading: {albedo_only_steps: 100000}
mesh: {resolution: 16, formats: [ply]}
video: {frames: 2, size: 16}
device: cpu
"""

runner = CliRunner()


def make_app() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)
    app.command("batch")(batch)

    @app.command("noop")  # a second command keeps "batch" a sub-command, as in msd3d's app
    def noop() -> None:
        pass

    return app


def invoke(*args: object):
    # wide enough that run directories (<slug>-<guidance>-<prior>-<seed>) are not wrapped in the tables
    return runner.invoke(make_app(), ["batch", *[str(a) for a in args]], env={"COLUMNS": "200"})


def write_batch(folder: Path, text: str, name: str = "batch.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tiny.yaml").write_text(TINY_RECIPE)
    path = folder / name
    path.write_text(text)
    return path


def read_summary(root: Path, stem: str = "batch_summary") -> tuple[dict, list[dict]]:
    document = json.loads((root / f"{stem}.json").read_text())
    with (root / f"{stem}.csv").open() as f:
        rows = list(csv.DictReader(f))
    return document, rows


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


# ------------------------------------------------------------------------------------------------
# the file and the plan (no training)


def test_file_level_errors_fail_fast(tmp_path):
    cases = {
        "prompts: [a donut, a mug\n": "is not valid YAML",
        "defaults: {steps: 3}\n": "has no prompts",
        "prompts: []\n": "has no prompts",
        "promts: [a donut]\n": "unknown top-level key 'promts'",
        "defaults: {stpes: 3}\nprompts: [a donut]\n": "defaults: unknown key 'stpes'",
        "defaults: {config: nowhere.yaml}\nprompts: [a donut]\n": "does not exist",
        "just text\n": "must be a mapping",
    }
    for i, (text, words) in enumerate(cases.items()):
        path = write_batch(tmp_path, text, f"bad{i}.yaml")
        result = invoke(path, "--out", tmp_path / f"out{i}")
        assert result.exit_code == 2, (text, result.output)
        assert words in one_error_line(result), text
        assert not (tmp_path / f"out{i}").exists()  # nothing ran, nothing was written
    result = invoke(tmp_path / "missing.yaml")
    assert result.exit_code == 2 and "does not exist" in one_error_line(result)


def test_shard_syntax():
    assert parse_shard(None) is None
    assert parse_shard("1/3") == (1, 3)
    for text in ("1-2", "2/2", "-1/2", "a/b", "0/0", "1/2/3"):
        with pytest.raises(Msd3dError, match="--shard"):
            parse_shard(text)


def test_bad_shard_option_exits_with_one_line(tmp_path):
    path = write_batch(tmp_path, "prompts: [a donut]\n")
    for text in ("1-2", "3/2"):
        result = invoke(path, "--shard", text, "--dry-run")
        assert result.exit_code == 2
        assert "--shard" in one_error_line(result)


def test_plan_precedence_and_entry_errors(tmp_path):
    path = write_batch(
        tmp_path,
        """\
defaults:
  config: tiny.yaml
  steps: 5
  overrides: [train.steps=7, seed=3]
prompts:
  - a donut                                     # 0: defaults' overrides beat defaults' flags
  - {prompt: a mug, steps: 9}                   # 1: the entry's flags beat the defaults
  - prompt: a lamp                              # 2: the entry's overrides beat its flags; mapping form
    steps: 9
    overrides: {train: {steps: 11}, mesh.formats: [obj, glb], negative_prompt: "1e-3"}
  - {prompt: a tree, out: custom/tree}          # 3: 'out' is relative to the batch root
  - {prompt: a chair, stpes: 4}                 # 4: unknown entry key
  - {prompt: a house, overrides: [train.stpes=2]}   # 5: unknown config key
  - {prompt: a donut}                           # 6: same run directory as entry 0
  - {prompt: a rocket, seed: "three"}           # 7: wrong type
  - {steps: 3}                                  # 8: no prompt
  - {prompt: a snowman, overrides: [render.resolution=0]}  # 9: a value validate() rejects
  - {prompt: a mug, overrides: {out: elsewhere}}   # 10: the run directory is the entry's 'out' key
""",
    )
    batch_file = load_batch_file(path)
    plan = plan_batch(batch_file, tmp_path / "root", device="cpu")
    assert [p.index for p in plan] == list(range(11))
    steps = {p.index: p.config.train.steps for p in plan if p.config is not None}
    assert steps[0] == 7 and steps[1] == 9 and steps[2] == 11
    assert all(p.config.seed == 3 for p in plan if p.config is not None)
    assert plan[2].config.mesh.formats == ("obj", "glb")
    assert plan[2].config.negative_prompt == "1e-3"  # a string stays a string
    assert plan[0].run_dir == tmp_path / "root" / "a-donut-msd-oracle-3"
    assert plan[3].run_dir == tmp_path / "root" / "custom" / "tree"
    assert plan[0].config.out == str(plan[0].run_dir) and plan[0].config.prompt == "a donut"
    assert all(p.config.device == "cpu" for p in plan if p.config is not None)
    assert [p.action for p in plan] == ["train"] * 4 + ["invalid"] * 7
    errors = {p.index: p.error for p in plan}
    assert errors[4].startswith("entry 4: unknown key 'stpes'")
    assert errors[5].startswith("entry 5: unknown config key 'train.stpes'")
    assert errors[6].startswith("entry 6: run directory") and "also used by entry 0" in errors[6]
    assert errors[7] == "entry 7: 'seed' must be an integer, got 'three'"
    assert errors[8].startswith("entry 8: missing 'prompt'")
    assert errors[9].startswith("entry 9: render.resolution")
    assert errors[10] == "entry 10: set 'out' as an entry key, not as an override"
    assert all("\n" not in e for e in errors.values() if e)


def test_shard_selects_every_nth_entry_and_dry_run_lists_them(tmp_path):
    path = write_batch(
        tmp_path,
        "defaults: {config: tiny.yaml}\nprompts: [a mug, a lamp, a tree, a house, {prompt: a chair, stpes: 1}]\n",
    )
    batch_file = load_batch_file(path)
    assert [p.index for p in plan_batch(batch_file, tmp_path / "root", shard=(1, 2))] == [1, 3]
    shard0 = plan_batch(batch_file, tmp_path / "root", shard=(0, 3))
    assert [p.index for p in shard0] == [0, 3]

    result = invoke(path, "--out", tmp_path / "root", "--dry-run", "--shard", "1/2")
    assert result.exit_code == 0, result.output
    assert "a-lamp-msd-oracle-0" in result.stdout and "a-house-msd-oracle-0" in result.stdout
    assert "a-mug-msd-oracle-0" not in result.stdout and "a-tree-msd-oracle-0" not in result.stdout
    result = invoke(path, "--out", tmp_path / "root", "--dry-run", "--shard", "0/2")
    assert result.exit_code == 1  # a dry run that meets an invalid entry (entry 4) says so
    assert "a-mug-msd-oracle-0" in result.stdout and "stpes" in result.stdout
    assert not (tmp_path / "root").exists()  # a dry run writes nothing


# ------------------------------------------------------------------------------------------------
# running


def test_failures_are_recorded_and_finished_entries_skipped(tmp_path):
    path = write_batch(
        tmp_path,
        """\
# three good entries would be slow: one good, one failing in training, one good, one invalid
defaults: {config: tiny.yaml}
prompts:
  - a red mushroom
  - a flying teapot                   # not in the oracle's catalogue: fails in the plan, trains nothing
  - {prompt: a donut, seed: 2, overrides: {train.steps: 3}}
  - {prompt: a chair, stpes: 4}
""",
    )
    root = tmp_path / "out"
    result = invoke(path, "--out", root, "-q")
    assert result.exit_code == 1, result.output
    document, rows = read_summary(root)
    statuses = [e["status"] for e in document["entries"]]
    assert statuses == ["ok", "failed", "ok", "failed"]
    assert [r["status"] for r in rows] == statuses
    assert document["counts"] == {"ok": 2, "failed": 2} and document["failed"] == 2
    errors = [e["error"] for e in document["entries"]]
    assert errors[0] is None and errors[2] is None
    assert errors[1].startswith("entry 1: the oracle prior has no shape for prompt")
    assert errors[3].startswith("entry 3: unknown key 'stpes'")
    assert [r["error"] for r in rows][1:4:2] == [errors[1], errors[3]]
    assert "\n" not in errors[1] + errors[3]

    mushroom, donut = document["entries"][0], document["entries"][2]
    assert (mushroom["steps"], donut["steps"]) == (4, 3)
    run_summary = json.loads((root / "a-red-mushroom-msd-oracle-0" / "summary.json").read_text())
    assert mushroom["mode_psnr"] == run_summary["scores"]["mode_psnr"]
    assert mushroom["blend_psnr"] == run_summary["scores"]["blend_psnr"]
    assert float(rows[0]["mode_psnr"]) == pytest.approx(mushroom["mode_psnr"])
    assert mushroom["mesh"] == [str(root / "a-red-mushroom-msd-oracle-0" / "mesh.ply")]
    assert Path(mushroom["video"]).is_file() and Path(mushroom["mesh"][0]).is_file()
    assert rows[0]["mesh"] == mushroom["mesh"][0]
    assert mushroom["seconds"] > 0 and mushroom["train_seconds"] > 0
    assert "batch finished" in result.stdout and "2 ok, 2 failed" in result.stdout and "summary:" in result.stdout

    checkpoints = [
        root / "a-red-mushroom-msd-oracle-0" / "checkpoints" / "last.pt",
        root / "a-donut-msd-oracle-2" / "checkpoints" / "last.pt",
    ]
    stamps = [p.stat().st_mtime_ns for p in checkpoints]

    again = invoke(path, "--out", root, "-q")
    assert again.exit_code == 1  # the two failures fail again
    assert "2 skipped, 2 failed" in again.stdout
    document, rows = read_summary(root)
    assert [e["status"] for e in document["entries"]] == ["skipped", "failed", "skipped", "failed"]
    assert [p.stat().st_mtime_ns for p in checkpoints] == stamps  # not retrained
    assert document["entries"][0]["steps"] == 4 and document["entries"][0]["mode_psnr"] == mushroom["mode_psnr"]


def test_interrupted_entry_resumes_and_shard_runs_its_entries(tmp_path):
    path = write_batch(tmp_path, "defaults: {config: tiny.yaml}\nprompts: [a donut, a red mushroom]\n")
    root = tmp_path / "out"
    plan = plan_batch(load_batch_file(path), root)
    donut = plan[0]

    # an interrupted run: 2 of its 4 steps done, a checkpoint, no summary
    Trainer(donut.config, donut.run_dir, show_progress=False).fit(stop_at=2)
    assert (donut.run_dir / "checkpoints" / "last.pt").is_file() and not (donut.run_dir / "summary.json").exists()
    assert [p.action for p in plan_batch(load_batch_file(path), root)] == ["resume", "train"]

    result = invoke(path, "--out", root, "--shard", "0/2", "-q")  # entry 0 only
    assert result.exit_code == 0, result.output
    document, rows = read_summary(root, "batch_summary.shard-0-of-2")
    assert [(e["index"], e["status"]) for e in document["entries"]] == [(0, "ok")]
    assert document["shard"] == "0/2"
    run_summary = json.loads((donut.run_dir / "summary.json").read_text())
    assert run_summary["steps"] == 4 and run_summary["steps_this_session"] == 2  # resumed, not restarted
    assert not plan[1].run_dir.exists()  # entry 1 belongs to the other shard
    assert not (root / "batch_summary.json").exists()


def test_threads_option_caps_torch_threads_while_the_entries_run(tmp_path):
    """issue 25: ``msd3d batch --threads N`` runs the local executor's entries on N torch threads (on a
    shared machine oversubscribed threads wait on each other), and gives the count back afterwards."""
    import torch

    from msd3d.workflows.batch_runner import run_batch

    path = write_batch(tmp_path, "defaults: {config: tiny.yaml}\nprompts:\n  - a flying teapot\n")
    plan = plan_batch(load_batch_file(path), tmp_path / "out")
    before = torch.get_num_threads()
    seen: list[int] = []
    result = run_batch(plan, show_progress=False, log=lambda m: None, threads=3,
                       on_result=lambda r: seen.append(torch.get_num_threads()))
    assert seen == [3] and [e.status for e in result.entries] == ["failed"]
    assert torch.get_num_threads() == before
    assert "--threads" in invoke("--help").stdout
