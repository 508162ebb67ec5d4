"""The shipped oracle recipes (configs/*-oracle.yaml) and the oracle benchmark script.

The recipes must load and validate, describe the same scene for every method (so the benchmark
compares guidance methods and nothing else), match the oracle's images (white background, albedo
only), and train: a 3-step run of each recipe through ``generate`` yields oracle scores. The bench
script runs for real on one family with 2 steps, then resumes with ``--skip-existing`` without
retraining.
"""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from msd3d.catalogue.families import CATALOGUE
from msd3d.config import load_config, recipe_dir, resolve_recipe
from msd3d.registry import GUIDANCE
from msd3d.render.cameras import turntable_cameras
from msd3d.render.shading import choose_shading
from msd3d.workflows.text_to_3d import generate

#: Every method but those that fine-tune the prior's network (the oracle has none; tests/test_vsd.py checks
#: that it refuses them): each has a configs/<method>-oracle.yaml.
METHODS = [m for m in GUIDANCE.names() if m != "vsd"]
SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "oracle_bench.py"

#: Shrinks only what happens after training (scoring, validation, mesh, video): the training
#: settings stay the recipe's own.
QUICK_FINISH = [
    "train.eval_views=2",
    "train.val_views=2",
    "train.val_every=0",
    "render.eval_resolution=16",
    "mesh.resolution=16",
    "mesh.formats=[obj]",
    "video.frames=2",
    "video.size=16",
]


def _recipe(method: str) -> Path:
    return recipe_dir() / f"{method}-oracle.yaml"


def _load(method: str, overrides=(), **values):
    return load_config(_recipe(method), list(overrides), {"prompt": "a red mushroom", "device": "cpu", **values})


@pytest.mark.parametrize("method", METHODS)
def test_recipe_loads_and_matches_the_oracle(method):
    config = _load(method)
    assert config.prior.name == "oracle"
    assert config.guidance.name == method
    # the NeRF's background is the colour the oracle renders its variants over
    assert config.background.type == "solid"
    assert tuple(config.background.color) == tuple(config.prior.oracle.background)
    # DreamFusion's schedule (issue 8): albedo-only warm-up, then lit steps, which the oracle shades alike
    steps = config.train.steps
    assert choose_shading(0, config.shading) == "albedo"
    assert 0 < config.shading.albedo_only_steps < steps // 2 and config.shading.lit_prob > 0
    assert config.prior.oracle.shading == "match"
    assert not config.regularisers.needs_normals(0, steps)
    assert not config.regularisers.needs_normals(steps - 1, steps)
    # no CFG: the oracle's default has no unconditional branch, and the recipe does not pretend to use one
    assert config.prior.oracle.unconditional == "none"
    assert getattr(config.guidance, method).guidance_scale == 1.0


def test_msd_bandwidth_spans_the_inter_variant_distances():
    """lambda starts near the closest variants' L2 distance at the training size and ends far below it."""
    config = _load("msd")
    msd = config.guidance.msd
    assert msd.kernel == "posterior"
    cams = turntable_cameras(4, config.render.resolution)
    closest = math.inf
    for family in CATALOGUE.values():
        images = family.render(cams, background=config.prior.oracle.background)  # (4, V, 3, H, W)
        v = images.shape[1]
        for i in range(v):
            for j in range(i + 1, v):
                closest = min(closest, float((images[:, i] - images[:, j]).flatten(1).norm(dim=1).mean()))
    assert 0.5 * closest <= msd.lambda_start <= 2.0 * closest
    assert msd.lambda_end <= 0.2 * closest


def test_recipes_share_everything_but_the_guidance():
    """A fair comparison: the scene, renderer, cameras, optimiser and exports are identical."""
    trees = []
    for method in METHODS:
        tree = OmegaConf.to_container(OmegaConf.structured(_load(method)))
        tree["guidance"] = {k: v for k, v in tree["guidance"].items() if k not in ("name", *METHODS)}
        trees.append(tree)
    assert trees[0] == trees[1] == trees[2]
    # and the method sections differ from the code defaults where the oracle needs it
    assert _load("sds").guidance.sds.t_max < 0.98


def test_prior_and_guidance_flags_pick_the_oracle_recipes():
    assert resolve_recipe(None, prior="oracle") == _recipe("msd")
    for method in METHODS:
        assert resolve_recipe(None, prior="oracle", guidance=method) == _recipe(method)
        assert resolve_recipe(f"{method}-oracle") == _recipe(method)


@pytest.mark.parametrize("method", METHODS)
def test_three_steps_of_each_recipe_train_and_score(tmp_path, method):
    config = _load(method, QUICK_FINISH, **{"train.steps": 3})
    summary = generate(config, tmp_path / method, show_progress=False, log=lambda _: None)
    assert summary["steps"] == 3 and summary["nonfinite_steps"] == 0
    scores = summary["scores"]
    assert scores["family"] == "mushroom"
    assert scores["nearest_variant"] in CATALOGUE["mushroom"].variant_names
    # a 3-step blob is far from every variant: finite, positive, well below a good fit
    assert 5.0 < scores["mode_psnr"] < 30.0 and 5.0 < scores["blend_psnr"] < 30.0
    assert scores["mode_psnr"] == max(scores["variant_psnr"].values())
    assert Path(summary["validation_png"]).is_file() and Path(summary["video"]["file"]).is_file()
    metrics = [json.loads(line) for line in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
    assert metrics and all(math.isfinite(m["loss"]) for m in metrics)


def _bench_module():
    spec = importlib.util.spec_from_file_location("oracle_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["oracle_bench"] = module
    spec.loader.exec_module(module)
    return module


def test_bench_runs_one_family_and_resumes(tmp_path, capsys):
    bench = _bench_module()
    out = tmp_path / "bench"
    argv = ["--families", "donut", "--methods", "msd,sds", "--steps", "2", "--out", str(out), "--threads", "1"]
    argv += [f"--set={o}" for o in QUICK_FINISH]
    assert bench.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert [(r["family"], r["method"], r["steps"]) for r in rows] == [("donut", "msd", 2), ("donut", "sds", 2)]
    for r in rows:
        assert r["it_per_s"] > 0 and r["wall_s"] > 0
        assert r["nearest_variant"] in CATALOGUE["donut"].variant_names
        run_scores = json.loads((Path(r["run_dir"]) / "summary.json").read_text())["scores"]
        assert (r["mode_psnr"], r["blend_psnr"]) == (run_scores["mode_psnr"], run_scores["blend_psnr"])
        assert Path(r["validation_png"]).is_file() and Path(r["video"]).is_file()
    summary = results["summary"]
    assert summary["msd_beats"]["sds"]["families"] == 1
    msd_row, sds_row = rows
    assert summary["msd_beats"]["sds"]["msd_wins"] == int(msd_row["mode_psnr"] > sds_row["mode_psnr"])
    assert summary["per_method"]["msd"]["mean_mode_psnr"] == pytest.approx(msd_row["mode_psnr"])
    table = (out / "table.md").read_text()
    assert "| donut | msd | 2 |" in table and "MSD > SDS" in table

    # an existing bench is not overwritten by accident ...
    assert bench.main(argv) == 2
    # ... and --skip-existing keeps finished runs without training them again
    stamp = (out / "donut-msd" / "summary.json").stat().st_mtime_ns
    assert bench.main([*argv, "--skip-existing"]) == 0
    assert (out / "donut-msd" / "summary.json").stat().st_mtime_ns == stamp
    again = json.loads((out / "results.json").read_text())["rows"]
    assert [r["mode_psnr"] for r in again] == [r["mode_psnr"] for r in rows]
    assert "kept" in capsys.readouterr().out


def test_attribute_prompts_name_exactly_their_variant():
    """Every everyday prompt of ``--attributes`` picks its family and, by the prompt-attribute rules the
    oracle and the scores use, only the variant it is filed under."""
    from msd3d.catalogue.families import match_family
    from msd3d.catalogue.prompt_attributes import variant_log_weights

    bench = _bench_module()
    assert len(bench.ATTRIBUTE_PROMPTS) == sum(len(f) for f in CATALOGUE.values()) == 30
    for (family, variant), prompt in bench.ATTRIBUTE_PROMPTS.items():
        found = match_family(prompt)
        weights = variant_log_weights(prompt, found)
        named = [found.variant_names[i] for i in range(len(weights)) if math.isfinite(weights[i])]
        assert (found.name, named) == (family, [variant]), prompt


def test_attribute_bench_counts_hits_and_draws_the_grid(tmp_path):
    bench = _bench_module()
    out = tmp_path / "bench"
    argv = ["--families", "mug", "--attributes", "--methods", "msd", "--steps", "2", "--out", str(out),
            "--threads", "1", "--grid", str(tmp_path / "grid.png"), *[f"--set={o}" for o in QUICK_FINISH]]
    assert bench.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert [r["prompt"] for r in rows] == ["a red mug", "a blue teacup", "a green mug"]
    assert [Path(r["run_dir"]).name for r in rows] == ["mug-red_coffee-msd-s0", "mug-blue_teacup-msd-s0",
                                                       "mug-green_travel-msd-s0"]
    hits = sum(r["nearest_variant"] == r["named_variant"] for r in rows)
    assert results["summary"]["per_method"]["msd"]["hits"] == hits
    assert results["summary"]["per_method"]["msd"]["named_runs"] == 3
    assert f"{hits}/3 hits" in (out / "table.md").read_text()
    spec = importlib.util.spec_from_file_location("compare_bench", SCRIPT.parent / "compare_bench.py")
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    side_by_side = compare.compare([results])
    assert f"| msd | 3 | {hits}/3 |" in side_by_side and "| a blue teacup | 0 | blue_teacup |" in side_by_side
    family_mean = statistics.fmean(r["mode_psnr"] for r in rows)
    assert f"| mug | {family_mean:.1f} / " in compare.by_family([results])  # the 3 prompts' mean
    from PIL import Image

    grid = Image.open(tmp_path / "grid.png")
    assert grid.size == (190 + 96, 24 + 3 * (96 + 24))
    assert len(set(grid.convert("L").getdata())) > 10  # the stills were pasted, not a blank sheet


def test_learned_prior_bench_runs_the_sd_guidance_on_the_oracle_scene(tmp_path):
    """``--prior learned``: the *-oracle scene with the *-sd guidance section, the prior swapped, and
    named settings adding their overrides on top."""
    from msd3d.config import load_config, recipe_dir

    bench = _bench_module()
    args = bench.parse_args(["--prior", "learned", "--weights", "w.safetensors", "--methods", "msd,msd-exp,sds-cfg7.5"])
    sd = {m: load_config(recipe_dir() / f"{m}-sd.yaml") for m in ("msd", "sds")}
    oracle = load_config(recipe_dir() / "msd-oracle.yaml")
    entry = bench.BenchEntry("mushroom", "a mushroom", None, 0)
    plain = bench.run_config("msd", entry, args, tmp_path / "a")
    assert plain.prior.name == "learned" and plain.prior.learned.weights == "w.safetensors"
    assert plain.guidance.msd == sd["msd"].guidance.msd  # every guidance key from msd-sd.yaml
    assert plain.render == oracle.render and plain.train.steps == oracle.train.steps  # the oracle's scene
    exp = bench.run_config("msd-exp", entry, args, tmp_path / "b")
    assert exp.guidance.msd.kernel == "exp" and exp.guidance.msd.sampler_steps == sd["msd"].guidance.msd.sampler_steps
    sds = bench.run_config("sds-cfg7.5", entry, args, tmp_path / "c")
    assert sds.guidance.name == "sds" and sds.guidance.sds.guidance_scale == 7.5
    assert sds.guidance.sds.t_min == sd["sds"].guidance.sds.t_min
    with pytest.raises(SystemExit):
        bench.parse_args(["--methods", "msd-nonsense"])


def test_learned_recipe_is_the_oracle_scene_with_the_sd_guidance():
    """configs/msd-learned.yaml = msd-oracle.yaml's scene + msd-sd.yaml's guidance, so it runs (and the
    learned-prior bench measures) exactly the Stable Diffusion defaults."""
    from msd3d.config import load_config, recipe_dir

    learned = load_config(resolve_recipe(None, prior="learned"))
    oracle = load_config(recipe_dir() / "msd-oracle.yaml")
    sd = load_config(recipe_dir() / "msd-sd.yaml")
    assert learned.prior.name == "learned" and learned.prior.learned.weights == ""
    assert learned.guidance == sd.guidance
    for section in ("field", "render", "shading", "regularisers", "camera", "background", "train", "mesh", "video"):
        assert getattr(learned, section) == getattr(oracle, section), section


def test_vsd_recipes_pair_like_the_msd_ones(tmp_path):
    """configs/vsd-learned.yaml = msd-learned.yaml's scene + vsd-sd.yaml's guidance (threestudio's
    prolificdreamer values); ``--prior learned --guidance vsd`` picks it, and the learned bench runs vsd
    on the shared oracle scene (there is no vsd-oracle.yaml: the oracle has no network to fine-tune)."""
    from msd3d.config import load_config, recipe_dir

    assert resolve_recipe(None, prior="learned", guidance="vsd") == recipe_dir() / "vsd-learned.yaml"
    assert resolve_recipe(None, prior="sd", guidance="vsd") == recipe_dir() / "vsd-sd.yaml"
    learned = load_config(recipe_dir() / "vsd-learned.yaml")
    msd_learned = load_config(recipe_dir() / "msd-learned.yaml")
    sd = load_config(recipe_dir() / "vsd-sd.yaml")
    assert learned.guidance == sd.guidance and learned.guidance.name == "vsd"
    assert (sd.guidance.vsd.guidance_scale, sd.guidance.vsd.lora_lr, sd.train.steps) == (7.5, 1e-4, 25000)
    for section in ("prior", "field", "render", "shading", "regularisers", "camera", "background", "train", "mesh"):
        assert getattr(learned, section) == getattr(msd_learned, section), section

    bench = _bench_module()
    args = bench.parse_args(["--prior", "learned", "--methods", "vsd"])
    config = bench.run_config("vsd", bench.BenchEntry("mushroom", "a mushroom", None, 0), args, tmp_path / "v")
    assert config.guidance.name == "vsd" and config.guidance.vsd == sd.guidance.vsd
    assert config.render == msd_learned.render and config.prior.name == "learned"
    assert bench.scene_recipe("vsd", args) == recipe_dir() / "msd-oracle.yaml"  # what results.json records
