"""The 2-D toy experiment: datasets, metrics, a tiny end-to-end run, and the CLI's error handling."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from msd3d.commands.toy2d import toy2d
from msd3d.errors import Msd3dError
from msd3d.experiments.datasets2d import fractal, load_dataset, load_gmm_json, pinwheel, save_gmm_json, spiral
from msd3d.experiments.metrics2d import mmd_rbf, particle_metrics, precision_recall
from msd3d.experiments.toy2d import (
    EfficiencyConfig,
    Toy2DConfig,
    auto_lambdas,
    grid_particles,
    parse_method,
    run_toy2d,
    run_toy2d_suite,
)
from msd3d.priors.gmm import GaussianMixturePrior


# -- datasets -------------------------------------------------------------------------------------
def test_fractal_is_a_deterministic_two_class_tree():
    a, b = fractal(), fractal()
    torch.testing.assert_close(a.means, b.means)
    assert a.class_names == ["orange", "gray"]
    assert a.num_components == 2 * (2**5 - 1) * 4
    assert set(a.labels.tolist()) == {0, 1}
    # thin and anisotropic: every component is well over 1.5x longer than wide
    eig = torch.linalg.eigvalsh(a.covs)
    assert (eig[:, 1] / eig[:, 0] >= 1.5**2).all()
    # the classes grow in opposite directions from the origin
    orange, gray = a.means[a.labels == 0].mean(0), a.means[a.labels == 1].mean(0)
    assert float(orange @ gray) < 0
    assert not torch.allclose(fractal(seed=1).means, a.means)


@pytest.mark.parametrize("name", ["fractal", "spiral", "pinwheel"])
def test_builtin_datasets_have_canvas_around_their_class(name):
    ds = load_dataset(name)
    x0, x1, y0, y1 = ds.bounds
    assert x1 - x0 == pytest.approx(y1 - y0)  # square canvas
    mask = ds.prior.component_log_weights(ds.prompt).isfinite()
    m = ds.prior.means[mask]
    assert (m[:, 0] > x0).all() and (m[:, 0] < x1).all() and (m[:, 1] > y0).all() and (m[:, 1] < y1).all()
    lam_start, lam_end = auto_lambdas(ds.prior, ds.prompt)
    assert 0 < lam_end < lam_start < (x1 - x0)


def test_spiral_and_pinwheel_shapes():
    assert spiral().num_components == 80 and pinwheel().num_components == 40
    with pytest.raises(ValueError):
        spiral(components=2)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gmm.json"
    path.write_text(text)
    return path


GOOD = {"means": [[0, 0], [1, 1]], "covs": [[[1, 0], [0, 1]], [[0.5, 0.1], [0.1, 0.5]]], "weights": [1, 3]}


def test_load_gmm_json_roundtrip(tmp_path):
    path = _write(tmp_path, json.dumps({**GOOD, "labels": [0, 1], "class_names": ["a", "b"]}))
    prior = load_gmm_json(path)
    torch.testing.assert_close(prior.weights, torch.tensor([0.25, 0.75], dtype=torch.float64))
    assert prior.class_names == ["a", "b"]
    out = tmp_path / "again.json"
    save_gmm_json(prior, out)
    torch.testing.assert_close(load_gmm_json(out).covs, prior.covs)


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        (json.dumps({"means": [[0, 0]], "covs": [[[1, 0], [0, 1]]]}), "missing key(s) 'weights'"),
        (json.dumps({**GOOD, "means": [0, 1]}), "'means' must be a list of K points"),
        (json.dumps({**GOOD, "covs": [[[1, 0], [0, 1]]]}), "'covs' must have shape (K, D, D)"),
        (json.dumps({**GOOD, "weights": [1, 2, 3]}), "'weights' must be a list of 2 numbers"),
        (json.dumps({**GOOD, "weights": [1, -1]}), "non-negative"),
        (json.dumps({**GOOD, "covs": [[[1, 0], [0, -1]], [[1, 0], [0, 1]]]}), "covariance 0 is not positive definite"),
        (json.dumps({**GOOD, "covs": [[[1, 0.5], [0, 1]], [[1, 0], [0, 1]]]}), "covariance 0 is not symmetric"),
        (json.dumps({**GOOD, "means": [[0, "a"], [1, 1]]}), "'means' must be a (nested) list of numbers"),
        (json.dumps({**GOOD, "labels": [0]}), "'labels' must be 2 non-negative integers"),
        (json.dumps({**GOOD, "labels": [0, 2], "class_names": ["a", "b"]}), "'class_names' has 2 names"),
    ],
)
def test_load_gmm_json_rejects_malformed_files(tmp_path, text, message):
    with pytest.raises(Msd3dError) as err:
        load_gmm_json(_write(tmp_path, text))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_load_gmm_json_missing_file(tmp_path):
    with pytest.raises(Msd3dError, match="cannot read"):
        load_gmm_json(tmp_path / "nope.json")


# -- metrics --------------------------------------------------------------------------------------
def test_precision_recall_and_mmd_extremes():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(300, 2, generator=gen, dtype=torch.float64)
    b = torch.randn(300, 2, generator=gen, dtype=torch.float64)
    p, r = precision_recall(a, a, k=3)
    assert p == 1.0 and r == 1.0
    p, r = precision_recall(a + 50.0, b, k=3)
    assert p == 0.0 and r == 0.0
    # a collapsed set is precise but has no recall
    p, r = precision_recall(torch.zeros(300, 2, dtype=torch.float64) + 1e-3 * a, b, k=3)
    assert p == 1.0 and r < 0.05
    same = mmd_rbf(a, b, 0.5)
    assert abs(same) < 0.02 and mmd_rbf(a + 2.0, b, 0.5) > 10 * max(abs(same), 1e-3)


def test_particle_metrics_on_component_means():
    prior = GaussianMixturePrior([[0.0, 0.0], [3.0, 0.0]], [[[0.1, 0], [0, 0.1]]] * 2)
    ref = prior.sample(400, torch.Generator().manual_seed(0))
    at_means = prior.means.repeat(50, 1)
    m = particle_metrics(prior, at_means, ref, mmd_bandwidth=0.5)
    assert m["on_mode"] == 1.0 and m["mean_dist_to_mean"] == pytest.approx(0.0, abs=1e-12)
    assert m["nll"] == pytest.approx(float(-prior.log_prob(prior.means).mean()))
    off = particle_metrics(prior, at_means + torch.tensor([0.0, 5.0], dtype=torch.float64), ref, mmd_bandwidth=0.5)
    assert off["on_mode"] == 0.0 and off["nll"] > m["nll"] + 50 and off["mmd"] > m["mmd"]


# -- the experiment -------------------------------------------------------------------------------
def _tiny_config(**kw) -> Toy2DConfig:
    cfg = Toy2DConfig(
        dataset="spiral",
        steps=4,
        grid=4,
        plot_resolution=32,
        curve_points=3,
        efficiency=EfficiencyConfig(
            points=4, lambda_factors=(1.0,), kernels=("exp", "posterior"), msd_sampler_steps=(1,),
            msd_samples=(1, 2), draws=(1, 2),
        ),
        **kw,
    )
    cfg.guidance.msd = replace(cfg.guidance.msd, sampler_steps=2)
    cfg.guidance.sdi = replace(cfg.guidance.sdi, inversion_steps=2)
    return cfg


def test_tiny_run_writes_results_table_and_plots(tmp_path):
    out = tmp_path / "run"
    results = run_toy2d(_tiny_config(methods=("sds", "msd", "sdi")), out, show_progress=False)
    for name in ("results.json", "table.md", "particles.png", "particles_msd.png", "particles_sds.png",
                 "particles_sdi.png", "nll_curves.png", "efficiency.png"):
        path = out / name
        assert path.is_file() and path.stat().st_size > 0, name
    assert (out / "particles.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries
    data = json.loads((out / "results.json").read_text())
    assert set(data["methods"]) == {"sds", "msd", "sdi"}
    for metrics in data["methods"].values():
        for key in ("nll", "precision", "recall", "mmd", "mean_dist_to_mean", "on_mode"):
            assert math.isfinite(metrics[key]), key
        assert 0 <= metrics["on_mode"] <= 1
    assert data["methods"]["msd"]["evaluations_per_particle_step"] == pytest.approx(2.0)
    assert data["methods"]["sdi"]["evaluations_per_particle_step"] == pytest.approx(3.0)
    assert data["config"]["steps"] == 4 and data["particles"] == 16
    eff = data["efficiency"]
    assert {r["method"] for r in eff} == {"sds", "msd", "sdi"}
    assert all(math.isfinite(r["cos_error"]) for r in eff)
    post = [r for r in eff if r["kernel"] == "posterior"]
    assert all(r["rel_error"] < 0.1 for r in post)  # one posterior step is nearly exact
    assert [r["evaluations"] for r in post] == [1.0, 2.0]
    table = (out / "table.md").read_text()
    assert "| msd |" in table and "MMD" in table and "bandwidth" in table
    assert results["methods"]["msd"]["nll"] == data["methods"]["msd"]["nll"]


def test_suite_writes_one_folder_per_dataset(tmp_path):
    cfg = _tiny_config(methods=("msd-exp",))
    cfg.efficiency.enabled = False
    results = run_toy2d_suite(cfg, ["spiral", "pinwheel"], tmp_path, show_progress=False)
    assert set(results) == {"spiral", "pinwheel"}
    assert results["spiral"]["config"]["guidance"]["msd"]["kernel"] == "posterior"  # the variant overrides it
    assert (tmp_path / "spiral" / "particles_msd-exp.png").is_file()
    assert (tmp_path / "spiral" / "results.json").is_file() and (tmp_path / "pinwheel" / "particles.png").is_file()
    assert "spiral NLL" in (tmp_path / "table.md").read_text()


def test_grid_and_methods():
    g = grid_particles((-1.0, 1.0, 0.0, 2.0), 4)
    assert (
        g.shape == (16, 2)
        and float(g[:, 0].min()) == pytest.approx(-0.75)
        and float(g[:, 1].max()) == pytest.approx(1.75)
    )
    assert parse_method("msd-exp") == ("msd", {"kernel": "exp"}) and parse_method("SDS") == ("sds", {})
    with pytest.raises(ValueError, match="unknown method"):
        parse_method("csd")


def test_run_rejects_bad_prompt_and_settings():
    with pytest.raises(Msd3dError, match="unknown class"):
        run_toy2d(_tiny_config(prompt="purple"), None, show_progress=False)
    with pytest.raises(Msd3dError, match="steps must be at least 1"):
        run_toy2d(replace(_tiny_config(), steps=0), None, show_progress=False)


# -- the command ----------------------------------------------------------------------------------
def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("toy2d")(toy2d)

    @app.command("noop")
    def noop() -> None:  # a second command so that "toy2d" stays a subcommand
        pass

    return app


def test_cli_tiny_run_with_gmm_file(tmp_path):
    gmm = tmp_path / "two.json"
    gmm.write_text(json.dumps(GOOD))
    out = tmp_path / "out"
    res = CliRunner().invoke(
        _app(),
        ["toy2d", "--gmm", str(gmm), "--steps", "3", "--grid", "3", "--methods", "msd,sds", "--sampler-steps", "1",
         "--no-efficiency", "--out", str(out)],  # with the (rich) progress bar
    )
    assert res.exit_code == 0, res.output
    data = json.loads((out / "results.json").read_text())
    assert data["dataset"]["name"] == "two" and set(data["methods"]) == {"msd", "sds"}
    assert (out / "particles_msd.png").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--methods", "sds,csd"], "unknown method 'csd'"),
        (["--methods", "sds,vsd"], "has no network to fine-tune"),
        (["--methods", ","], "at least one method"),
        (["--dataset", "moons"], "unknown --dataset"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--steps", "-5"], "--steps must be at least 1"),
        (["--lambda-start", "0"], "--lambda-start must be positive"),
        (["--lambda-end", "-0.1"], "--lambda-end must be positive"),
        (["--kernel", "gauss"], "unknown --kernel"),
        (["--grid", "1"], "--grid must be at least 2"),
    ],
)
def test_cli_rejects_bad_input_with_one_line(args, message):
    res = CliRunner().invoke(_app(), ["toy2d", *args, "--no-progress"])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], res.stderr


@pytest.mark.parametrize(
    "text, message",
    [
        ("{oops", "not valid JSON"),
        (json.dumps({"means": [[0, 0]], "covs": [[[1, 0], [0, 1]]]}), "missing key"),
        (json.dumps({**GOOD, "covs": [[[1, 0], [0, -1]], [[1, 0], [0, 1]]]}), "not positive definite"),
        (json.dumps({**GOOD, "weights": [-1, 2]}), "non-negative"),
        (json.dumps({"means": [[0, 0, 0]], "covs": [[[1, 0, 0], [0, 1, 0], [0, 0, 1]]], "weights": [1]}), "2-D"),
    ],
)
def test_cli_rejects_malformed_gmm_file(tmp_path, text, message):
    path = _write(tmp_path, text)
    res = CliRunner().invoke(_app(), ["toy2d", "--gmm", str(path), "--no-progress", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], res.stderr
    assert not (tmp_path / "o" / "results.json").exists()


def test_toy2d_takes_key_value_overrides_into_its_dataclass(tmp_path):
    """Settings without a flag are reachable as key=value, checked by the dataclass (the error names the key)."""
    from typer.testing import CliRunner

    from msd3d.cli import app

    runner = CliRunner()
    bad = runner.invoke(app, ["toy2d", "guidance.msd.kernel=gauss", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "guidance.msd.kernel must be one of exp, diffused, posterior" in bad.output
    unknown = runner.invoke(app, ["toy2d", "optim.nope=1", "--out", str(tmp_path / "bad")])
    assert unknown.exit_code == 2 and "unknown config key 'optim.nope'" in unknown.output
    ok = runner.invoke(
        app,
        ["toy2d", "--dataset", "spiral", "--steps", "2", "--grid", "2", "--methods", "msd", "--no-efficiency",
         "--no-progress", "--out", str(tmp_path / "ok"),
         "guidance.msd.eta=0.5", "metrics.knn_k=2"],
    )
    assert ok.exit_code == 0, ok.output
    config = json.loads((tmp_path / "ok" / "results.json").read_text())["config"]
    assert config["guidance"]["msd"]["eta"] == 0.5 and config["metrics"]["knn_k"] == 2
