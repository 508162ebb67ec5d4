"""``msd3d batch`` on Ray (``--executor ray``): the local executor's semantics, entries in parallel,
and a killed worker's entry retried from its checkpoint.

One embedded Ray with 2 CPUs is shared by the module; entries train 4-30 steps at 16x16 on the
oracle prior. Skipped when Ray is not installed (``pip install -e ".[test,ray]"``).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from test_batch import invoke, read_summary, write_batch

from msd3d.run_dir import RunDir
from msd3d.workflows.batch_ray import RayOptions, run_ray_batch
from msd3d.workflows.batch_runner import load_batch_file, plan_batch

try:
    import ray  # noqa: F401

    HAVE_RAY = True
except ImportError:
    HAVE_RAY = False
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason='Ray is not installed (pip install -e ".[test,ray]")')

BATCH = """\
defaults: {config: tiny.yaml}
prompts:
  - a red mushroom
  - {prompt: a donut, seed: 2, steps: 30}
  - {prompt: a mug, seed: 1, steps: 3}
  - a flying teapot                  # not in the oracle's catalogue: invalid in the plan
  - {prompt: a chair, stpes: 4}      # invalid: recorded without a task
"""
GOOD = {0: "a-red-mushroom-msd-oracle-0", 1: "a-donut-msd-oracle-2", 2: "a-mug-msd-oracle-1"}


@pytest.fixture(scope="module")
def ray_instance():
    """One embedded Ray (2 CPUs) for the module: starting Ray costs seconds."""
    import ray

    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False, logging_level="warning")
    # two workers with torch and msd3d imported, so both start their first entry at once (on a busy
    # 2-core machine the second worker's imports alone can outlast the short entries)
    def warm_worker() -> int:  # nested: Ray ships it by value (workers cannot import the tests)
        import msd3d.workflows.batch_ray  # noqa: F401
        import msd3d.workflows.text_to_3d  # noqa: F401  (torch, the renderer, the exporters)

        time.sleep(1.0)  # hold this worker so the second call lands on the other one
        return os.getpid()

    warm = ray.remote(num_cpus=1)(warm_worker)
    assert len(set(ray.get([warm.remote() for _ in range(2)]))) == 2
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def batches(tmp_path_factory, ray_instance):
    """The same batch file run by the local executor and by the Ray executor (CLI, exit codes)."""
    folder = tmp_path_factory.mktemp("ray_batch")
    path = write_batch(folder, BATCH)
    local = invoke(path, "--out", folder / "local", "-q")
    t0 = time.perf_counter()
    on_ray = invoke(path, "--executor", "ray", "--out", folder / "ray", "-q")
    return {"path": path, "folder": folder, "local": local, "ray": on_ray, "ray_seconds": time.perf_counter() - t0}


def field_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(RunDir(run_dir).checkpoint, map_location="cpu", weights_only=False)["field"]


def assert_same_field(a: Path, b: Path) -> None:
    sa, sb = field_state(a), field_state(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), (key, a, b)


@needs_ray
def test_ray_entries_run_in_parallel_and_equal_the_local_executor(batches):
    assert batches["local"].exit_code == 1 and batches["ray"].exit_code == 1, batches["ray"].output
    folder = batches["folder"]
    local_doc, _ = read_summary(folder / "local")
    ray_doc, ray_rows = read_summary(folder / "ray")
    assert [e["status"] for e in ray_doc["entries"]] == ["ok", "ok", "ok", "failed", "failed"]
    assert [e["status"] for e in local_doc["entries"]] == [e["status"] for e in ray_doc["entries"]]
    assert [e["index"] for e in ray_doc["entries"]] == [0, 1, 2, 3, 4]  # plan order, not finishing order
    assert ray_doc["executor"] == "ray local"
    for index, name in GOOD.items():
        run = folder / "ray" / name
        assert_same_field(run, folder / "local" / name)  # same seeds, same parameters, bit for bit
        summary = json.loads((run / "summary.json").read_text())
        assert ray_doc["entries"][index]["steps"] == summary["steps"] == [4, 30, 3][index]
        assert ray_doc["entries"][index]["mode_psnr"] == local_doc["entries"][index]["mode_psnr"]
        assert Path(ray_doc["entries"][index]["video"]).is_file()

    # parallel: two entries' training (config.yaml written at its start, summary.json at its end) overlap
    spans = [
        ((folder / "ray" / n / "config.yaml").stat().st_mtime, (folder / "ray" / n / "summary.json").stat().st_mtime)
        for n in GOOD.values()
    ]
    overlapping = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1 :] if a[0] < b[1] and b[0] < a[1]]
    assert overlapping, spans


@needs_ray
def test_ray_failures_are_recorded_and_a_rerun_skips_finished_entries(batches):
    folder = batches["folder"]
    document, rows = read_summary(folder / "ray")
    errors = [e["error"] for e in document["entries"]]
    assert errors[:3] == [None, None, None]
    assert errors[3].startswith("entry 3: the oracle prior has no shape for prompt")
    assert errors[4].startswith("entry 4: unknown key 'stpes'")
    assert [r["error"] for r in rows][3:] == errors[3:]
    assert document["counts"] == {"ok": 3, "failed": 2}
    stamps = {n: RunDir(folder / "ray" / n).checkpoint.stat().st_mtime_ns for n in GOOD.values()}

    again = invoke(batches["path"], "--executor", "ray", "--out", folder / "ray", "-q")
    assert again.exit_code == 1, again.output  # the two failures fail again
    document, _ = read_summary(folder / "ray")
    assert [e["status"] for e in document["entries"]] == ["skipped"] * 3 + ["failed"] * 2
    assert {n: RunDir(folder / "ray" / n).checkpoint.stat().st_mtime_ns for n in GOOD.values()} == stamps
    assert document["entries"][1]["steps"] == 30


def kill_first_attempt(index: int, killed: list):
    """An ``on_progress`` hook: SIGKILL the worker of entry ``index`` once it has reported a step."""

    def hook(board: dict) -> None:
        row = board.get(index, {})
        if not killed and row.get("attempts") == 1 and (row.get("step") or 0) >= 1 and row.get("pid"):
            killed.append((row["pid"], row["step"]))
            os.kill(row["pid"], signal.SIGKILL)

    return hook


@needs_ray
def test_a_killed_worker_is_retried_and_resumes_from_its_checkpoint(batches, tmp_path):
    """SIGKILL the worker training entry 1 (30 steps, a checkpoint every step) a few steps in."""
    plan = [p for p in plan_batch(load_batch_file(batches["path"]), tmp_path / "root") if p.index == 1]
    assert plan[0].action == "train"
    killed: list[tuple[int, int]] = []
    result = run_ray_batch(plan, tmp_path / "root", RayOptions(poll_seconds=0.05), show_progress=False,
                           log=lambda m: None, on_progress=kill_first_attempt(1, killed))
    assert killed and killed[0][1] < 30, f"the worker was not killed during training: {killed}"
    (entry,) = result.entries
    assert entry.status == "ok", entry.error
    assert result.progress[1]["attempts"] == 2 and result.progress[1]["pid"] != killed[0][0]
    run = plan[0].run_dir
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == entry.steps == 30
    assert summary["steps_this_session"] < 30  # the retry resumed; it did not start over
    assert 30 - summary["steps_this_session"] >= killed[0][1]  # from a checkpoint at or after the kill's step
    steps_logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps_logged == list(range(30))  # no step lost or logged twice
    assert_same_field(run, batches["folder"] / "local" / GOOD[1])  # equals the uninterrupted run


def test_ray_missing_is_one_line_error(tmp_path, monkeypatch):
    """Runs with or without Ray: an import of ray that fails is one line naming the extra."""
    import sys

    path = write_batch(tmp_path, "defaults: {config: tiny.yaml}\nprompts: [a donut]\n")
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    result = invoke(path, "--ray", "auto", "--out", tmp_path / "out", "--dry-run")
    assert result.exit_code == 2
    assert 'pip install "msd3d[ray]"' in result.stderr.strip().splitlines()[-1]
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_grid_sample_probe_leaves_the_global_rng_alone():
    """The once-per-process capability probe used to draw from torch's global RNG, so the first run
    in a process (a fresh Ray worker) trained differently from later ones (the local executor)."""
    from msd3d.scene.encodings import grid_sample_is_twice_differentiable

    grid_sample_is_twice_differentiable.cache_clear()
    before = torch.get_rng_state()
    grid_sample_is_twice_differentiable("cpu")
    assert torch.equal(torch.get_rng_state(), before)


def test_a_node_without_the_shared_batch_root_fails_its_entry_in_one_line(tmp_path):
    """The check a task makes before training: the driver's token file must be readable."""
    from msd3d.workflows.batch_ray import _shared_root_error

    path = write_batch(tmp_path, "defaults: {config: tiny.yaml}\nprompts: [a donut]\n")
    (item,) = plan_batch(load_batch_file(path), tmp_path / "root")
    marker = tmp_path / "root" / ".msd3d-ray-driver-abc"
    error = _shared_root_error(item, marker, "abc")  # as on a node whose disk does not hold the root
    assert error is not None and error.startswith("entry 0: node ") and "cannot see the batch root" in error
    assert "\n" not in error
    marker.parent.mkdir(parents=True)
    marker.write_text("abc")
    assert _shared_root_error(item, marker, "abc") is None
    assert _shared_root_error(item, marker, "other batch") is not None


@needs_ray
def test_a_worker_lost_more_often_than_max_retries_fails_its_entry_in_one_line(batches, tmp_path):
    plan = [p for p in plan_batch(load_batch_file(batches["path"]), tmp_path / "root") if p.index == 1]
    killed: list[tuple[int, int]] = []
    result = run_ray_batch(plan, tmp_path / "root", RayOptions(poll_seconds=0.05, max_retries=0), show_progress=False,
                           log=lambda m: None, on_progress=kill_first_attempt(1, killed))
    assert killed
    (entry,) = result.entries
    assert entry.status == "failed" and not result.interrupted
    assert entry.error.startswith("entry 1: its Ray worker was lost on each of 1 attempt(s)"), entry.error
    assert "rerun the batch to resume it" in entry.error and "\n" not in entry.error
    assert RunDir(plan[0].run_dir).checkpoint.is_file()  # what the lost attempt did is kept for the rerun


def test_executor_options_are_checked_before_any_work(tmp_path):
    path = write_batch(tmp_path, "defaults: {config: tiny.yaml}\nprompts: [a donut]\n")
    cases = {
        ("--executor", "gpu"): "--executor 'gpu' is not local or ray",
        ("--executor", "local", "--ray", "auto"): "contradict",
    }
    for args, words in cases.items():
        result = invoke(path, *args, "--out", tmp_path / "out")
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], lines
    assert not (tmp_path / "out").exists()
