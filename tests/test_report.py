"""HTML reports: every link resolves to a file next to the page, nothing reaches the network.

The pages are parsed with html.parser here; scripts/screenshot_report.py checks them in a real browser.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from msd3d import report as report_module
from msd3d.config import load_config, resolve_recipe
from msd3d.export.video import turntable_cameras_for
from msd3d.report import write_batch_index, write_run_report
from msd3d.workflows.assets import frame_turntable, load_trained_renderer
from msd3d.workflows.batch_runner import EntryResult, write_batch_summary
from msd3d.workflows.text_to_3d import generate

STEPS = 4


class Page(HTMLParser):
    """Every URL-valued attribute and every tag of a page."""

    URL_ATTRS = {"href", "src", "poster", "srcset", "data", "action", "formaction"}

    def __init__(self, text: str) -> None:
        super().__init__()
        self.urls: list[tuple[str, str]] = []  # (tag, url)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        for name, value in attrs:
            if name in self.URL_ATTRS and value is not None:
                self.urls.append((tag, value))

    def count(self, tag: str, css_class: str | None = None) -> int:
        return sum(
            t == tag and (css_class is None or css_class in (a.get("class") or "").split()) for t, a in self.tags
        )


def check_offline_page(page: Path) -> Page:
    """The page parses, each URL is relative and names an existing file, and nothing names http(s)."""
    text = page.read_text()
    assert "http://" not in text and "https://" not in text
    parsed = Page(text)
    assert parsed.urls
    for tag, url in parsed.urls:
        parts = urlparse(url)
        assert not parts.scheme and not parts.netloc, f"<{tag}> points off the file system: {url}"
        target = (page.parent / unquote(parts.path)).resolve()
        assert target.is_file(), f"<{tag}> {url} does not exist"
    assert parsed.count("script") == 0 and parsed.count("link") == 0  # inline CSS, no scripts or fonts
    return parsed


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from conftest import TINY_RUN

    overrides = [o for o in TINY_RUN if not o.startswith(("train.val_every", "video."))]
    overrides += [
        f"train.steps={STEPS}", "train.val_every=2", "video.frames=8", "video.size=32", "mesh.formats=[obj,glb]"
    ]
    config = load_config(
        resolve_recipe("msd-oracle", None, None), overrides, {"prompt": "a red mushroom", "device": "cpu"}
    )
    run = tmp_path_factory.mktemp("report") / "run"
    shown = io.StringIO()  # what the progress display printed (rich writes to sys.stderr)
    with contextlib.redirect_stderr(shown):
        generate(config, run, show_progress=True, log=lambda _: None)
    (run.parent / "progress.txt").write_text(shown.getvalue())
    return run


def test_every_finishing_stage_shows_progress(run_dir):
    shown = (run_dir.parent / "progress.txt").read_text()
    for stage in ("training", "scoring", "validation render", "mesh", "turntable", "report"):
        assert re.search(rf"^{stage}\b.*\d+/\d+", shown, flags=re.M), f"no progress row for {stage!r}:\n{shown}"
    assert re.search(r"^turntable\b.*8/8", shown, flags=re.M)  # frame by frame


def test_generate_writes_an_offline_report(run_dir):
    page = run_dir / "report.html"
    assert page.is_file()
    parsed = check_offline_page(page)
    srcs = {url for _, url in parsed.urls}
    # the turntable as a video plus still frames as PNG
    assert parsed.count("video") == 1 and "turntable.mp4" in srcs
    stills = sorted((run_dir / "report").glob("turntable_*.png"))
    assert len(stills) == report_module.STILLS and all(f"report/{p.name}" in srcs for p in stills)
    assert Image.open(stills[0]).size == (32, 32)
    # plots of loss, lambda, it/s and the oracle's scores, each a real PNG
    for name in ("loss", "schedule", "speed", "scores"):
        assert f"report/{name}.png" in srcs
        with Image.open(run_dir / "report" / f"{name}.png") as image:
            assert image.format == "PNG" and image.size[0] >= 300
    # validation images over time (steps 2 and 4) and the mesh files
    assert {"validation/step_000002.png", "validation/step_000004.png"} <= srcs
    assert {"mesh.obj", "mesh.glb"} <= srcs
    # the summary table shows the run's real numbers
    summary = json.loads((run_dir / "summary.json").read_text())
    assert not report_module._report_is_stale(run_dir)  # a batch index will not write it again
    text = page.read_text()
    assert f"{summary['scores']['mode_psnr']:.4g}" in text and summary["scores"]["nearest_variant"] in text


def test_scores_are_logged_during_training_and_plotted(run_dir):
    lines = [json.loads(line) for line in (run_dir / "scores.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2]  # the validation step; the final scores are in summary.json
    assert 0.0 < lines[0]["mode_psnr"] < 100.0
    summary = json.loads((run_dir / "summary.json").read_text())
    records = report_module.read_metrics(run_dir / "scores.jsonl")
    series = {s.label.split()[0]: s for s in report_module.score_series(records, summary)}
    assert series["mode"].steps == [2.0, float(STEPS)]
    assert series["mode"].values == [lines[0]["mode_psnr"], summary["scores"]["mode_psnr"]]


def test_report_command_regenerates_and_rejects_bad_paths(run_dir, tmp_path):
    from msd3d.cli import app

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "report.html").unlink()
    shutil.rmtree(copy / "report")
    result = CliRunner().invoke(app, ["report", str(copy)])
    assert result.exit_code == 0, result.output
    check_offline_page(copy / "report.html")

    result = CliRunner().invoke(app, ["report", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "not a folder" in result.output
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(app, ["report", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "summary.json" in result.output


def test_a_failed_regeneration_keeps_the_previous_page(run_dir, tmp_path, monkeypatch):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    before = (copy / "report.html").read_bytes()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report_module, "turntable_stills", broken)
    with pytest.raises(RuntimeError):
        write_run_report(copy)
    assert (copy / "report.html").read_bytes() == before
    assert not [p for p in copy.rglob("*") if ".tmp" in p.name]


def test_batch_index_has_a_card_per_entry_and_the_table(run_dir, tmp_path):
    root = tmp_path / "batch"
    shutil.copytree(run_dir, root / "a-red-mushroom-0")
    (root / "a-red-mushroom-0" / "report.html").unlink()
    summary = json.loads((run_dir / "summary.json").read_text())
    entries = [
        EntryResult(
            0, "a red mushroom", "ok", seed=0, steps=STEPS, scores=summary["scores"],
            run_dir=str(root / "a-red-mushroom-0"),
        ),
        EntryResult(
            1, "a blue teapot", "failed", seed=0, error="prompt not in the oracle catalogue", run_dir=str(root / "b")
        ),
    ]
    write_batch_summary(entries, root)
    page = write_batch_index(root)
    parsed = check_offline_page(page)
    assert parsed.count("div", "card") == 2
    assert parsed.count("tr") == 3  # header + one row per entry
    srcs = {url for _, url in parsed.urls}
    assert "a-red-mushroom-0/report.html" in srcs  # the entry's own report, written on the way
    check_offline_page(root / "a-red-mushroom-0" / "report.html")
    assert {"batch_summary.json", "batch_summary.csv"} <= srcs
    text = page.read_text()
    assert "prompt not in the oracle catalogue" in text and f"{summary['scores']['mode_psnr']:.2f}" in text
    # `msd3d report BATCH_ROOT` picks the index
    assert report_module.write_report(root) == page


def test_trained_turntable_is_framed_by_the_field(run_dir):
    """A real trained field: the half-opaque silhouette spans most of the frame in the widest view."""
    config, renderer, _ = load_trained_renderer(run_dir)
    framed, target = frame_turntable(renderer.field, config.video)
    with torch.no_grad():
        out = renderer.render_image(turntable_cameras_for(framed, target), shading="albedo")
    spans = []
    for opacity in out.opacity[..., 0] >= 0.5:
        rows, cols = opacity.any(1).nonzero(), opacity.any(0).nonzero()
        spans.append(max(int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1) / opacity.shape[0])
    assert 0.6 <= max(spans) <= 0.95, spans


def test_report_of_an_unfinished_run(run_dir, tmp_path):
    """Interrupted before the finishing stage: metrics and validation only; the page says so."""
    copy = tmp_path / "unfinished"
    copy.mkdir()
    shutil.copy(run_dir / "metrics.jsonl", copy)
    shutil.copy(run_dir / "config.yaml", copy)
    shutil.copytree(run_dir / "validation", copy / "validation")
    parsed = check_offline_page(write_run_report(copy))
    srcs = {url for _, url in parsed.urls}
    assert "report/loss.png" in srcs and "validation/step_000002.png" in srcs
    assert parsed.count("video") == 0 and "has not finished" in (copy / "report.html").read_text()
    assert "<h1>a red mushroom</h1>" in (copy / "report.html").read_text()  # from config.yaml


def test_msd3d_batch_writes_the_index(tmp_path):
    """The batch command ends with index.html: a card per entry, each finished run's report linked."""
    from test_batch import write_batch

    from msd3d.cli import app

    path = write_batch(
        tmp_path,
        """\
defaults: {config: tiny.yaml, overrides: {train.steps: 2, export.video: true}}
prompts:
  - a red mushroom
  - a flying teapot                   # not in the oracle's catalogue: fails
""",
    )
    root = tmp_path / "out"
    result = CliRunner().invoke(app, ["batch", str(path), "--out", str(root), "-q"])
    assert result.exit_code == 1, result.output  # one entry failed
    parsed = check_offline_page(root / "index.html")
    assert parsed.count("div", "card") == 2
    assert "a-red-mushroom-msd-oracle-0/report.html" in {url for _, url in parsed.urls}
    check_offline_page(root / "a-red-mushroom-msd-oracle-0" / "report.html")
