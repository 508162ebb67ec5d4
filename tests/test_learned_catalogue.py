"""The learned catalogue prior: trains a few steps on a tiny config, saves, loads through the prior
interface (SD's code path), reads attribute words, and CFG changes its output."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from msd3d.catalogue.learned_prior import (
    LearnedPriorTrainConfig,
    WordTokenizer,
    catalogue_vocabulary,
    load_learned_prior,
    preferred_variant,
    prior_from_components,
    save_learned_prior,
    train_learned_prior,
)
from msd3d.catalogue.learned_prior_config import LearnedPriorConfig
from msd3d.errors import ModelLoadError
from msd3d.priors.base import DiffusionPrior
from msd3d.priors.choice import PriorConfig, build_prior
from msd3d.priors.stable_diffusion import StableDiffusionPrior

ROOT = Path(__file__).resolve().parents[1]


def _tiny() -> LearnedPriorTrainConfig:
    return LearnedPriorTrainConfig(render_size=8, block_out_channels=(8, 16), attention_head_dim=4, text_dim=8,
                                   families=("mushroom",), views_per_variant=2, steps=2, batch=2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    config = _tiny()
    comps, meta = train_learned_prior(config)
    path = tmp_path_factory.mktemp("learned") / "prior.safetensors"
    save_learned_prior(path, comps, config, meta)
    return config, comps, meta, path


def test_tokenizer_reads_family_attribute_and_view_words():
    vocab = catalogue_vocabulary()
    tok = WordTokenizer(vocab, max_length=6)
    ids = tok(["a red mushroom, side view", "a gray rocket", ""]).input_ids
    words = [[vocab[i] for i in row if i] for row in ids.tolist()]
    assert words == [["red", "mushroom", "side"], ["grey", "rocket"], []]  # "view", "a" dropped; gray -> grey


def test_trains_saves_and_loads_through_the_prior_interface(trained):
    config, comps, meta, path = trained
    assert meta["steps_run"] == 2 and meta["images"] == 3 * 2 and meta["families"] == ["mushroom"]
    prior = build_prior(PriorConfig(name="learned", learned=LearnedPriorConfig(weights=str(path))))
    assert isinstance(prior, StableDiffusionPrior) and isinstance(prior, DiffusionPrior)
    assert prior.schedule.sigma_max == pytest.approx(14.6, abs=0.05)  # SD's scaled-linear schedule
    in_memory = prior_from_components(comps, config)
    renders = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    x = prior.encode(renders)
    assert x.shape == (2, 3, 8, 8) and float(x.min()) >= -1 and float(x.max()) <= 1  # pixels in [-1, 1]
    torch.testing.assert_close(prior.decode(x), torch.nn.functional.interpolate(renders, size=(8, 8), mode="bilinear"))
    cond = prior.condition(["a red mushroom, front view", "a purple mushroom, front view"])
    z = x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    d = prior.denoise(z, 0.5, cond, guidance_scale=1.0)
    torch.testing.assert_close(d, in_memory.denoise(z, 0.5, in_memory.condition(cond.prompts), guidance_scale=1.0))
    # classifier-free guidance changes the output, and so do attribute words
    assert (prior.denoise(z, 0.5, cond, guidance_scale=5.0) - d).abs().max() > 1e-4
    same = prior.condition(["a red mushroom, front view"] * 2)
    assert (prior.denoise(z, 0.5, same) - d)[1].abs().max() > 1e-5 and torch.allclose(
        prior.denoise(z, 0.5, same)[0], d[0]
    )
    # which variant it prefers from the variants' blend: a distribution over the family's variants
    from msd3d.catalogue.families import CATALOGUE
    from msd3d.render.cameras import turntable_cameras

    share = preferred_variant(prior, "a red mushroom", CATALOGUE["mushroom"], turntable_cameras(1, 8), samples=4)
    assert share.shape == (3,) and float(share.sum()) == pytest.approx(1.0)
    prior.validate_prompt("a mushroom")
    with pytest.raises(Exception, match="trained on mushroom"):
        prior.validate_prompt("a donut")


def test_missing_or_foreign_weights_are_one_line_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="train one with"):
        load_learned_prior(tmp_path / "none.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="not a safetensors file"):
        load_learned_prior(bad)


def test_training_script_runs_a_tiny_configuration(tmp_path):
    spec = importlib.util.spec_from_file_location("train_learned_prior", ROOT / "scripts" / "train_learned_prior.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    card = module.main(["--out", str(tmp_path), "--size", "8", "--channels", "8,16", "--steps", "2", "--batch", "2",
                        "--views", "1", "--families", "mushroom", "--sample-steps", "2"])
    assert (tmp_path / "learned_prior.safetensors").is_file()
    saved = json.loads((tmp_path / "model_card.json").read_text())
    assert saved["training"]["steps_run"] == 2 and set(saved["sample_quality"]) == {"mushroom"}
    q = saved["sample_quality"]["mushroom"]
    assert 0 < q["blend_psnr"] < 60 and 0 < q["mode_psnr"] < 60
    assert "| mushroom |" in (tmp_path / "MODEL_CARD.md").read_text() and card["bytes"] < 25e6


def test_training_data_holds_the_trainers_shading_modes():
    from msd3d.catalogue.learned_prior import render_dataset

    config = LearnedPriorTrainConfig(render_size=16, families=("mushroom",), views_per_variant=12,
                                     shading_probs=(0.4, 0.3, 0.3))
    data = render_dataset(config)
    assert data["images"].shape == (36, 3, 16, 16) and len(data["shading"]) == 36
    assert set(data["shading"]) == {"albedo", "lambertian", "textureless"}
    grey = [i for i, s in enumerate(data["shading"]) if s == "textureless"]
    coloured = [i for i, s in enumerate(data["shading"]) if s == "albedo"]
    img = data["images"]
    # textureless renders are white albedo under a light: equal channels; albedo ones are coloured
    assert (img[grey].amax(1) - img[grey].amin(1)).max() < 1e-5
    assert (img[coloured].amax(1) - img[coloured].amin(1)).max() > 0.2
    with pytest.raises(ValueError, match="shading_probs"):
        LearnedPriorTrainConfig(shading_probs=(0.5, 0.5, 0.5)).validate()


def test_the_shipped_prior_loads_by_default_and_reads_attribute_words():
    """``prior.name: learned`` with no weights loads the trained prior shipped in the package (<= 25 MB,
    model card beside it); its CFG changes the output and colour words move it to the named variant."""
    from msd3d.catalogue.families import CATALOGUE
    from msd3d.catalogue.learned_prior_config import SHIPPED_WEIGHTS
    from msd3d.render.cameras import turntable_cameras

    assert SHIPPED_WEIGHTS.is_file() and SHIPPED_WEIGHTS.stat().st_size <= 25e6
    card = SHIPPED_WEIGHTS.parent / "MODEL_CARD.md"
    assert "Reproduce" in card.read_text() and (SHIPPED_WEIGHTS.parent / "samples.png").is_file()
    prior = build_prior(PriorConfig(name="learned"))
    assert set(prior.catalogue_families) == set(CATALOGUE) and prior.train_config.render_size == 32
    family = CATALOGUE["mushroom"]
    cams = turntable_cameras(2, 32)

    def share(prompt: str) -> torch.Tensor:  # (3,) over fly_agaric, porcini, purple_cone
        return sum(preferred_variant(prior, prompt, family, cams[i : i + 1], samples=16, seed=i) for i in range(2)) / 2

    red, purple = share("a red mushroom"), share("a purple mushroom")
    assert family.variant_names == ["fly_agaric", "porcini", "purple_cone"]
    assert red[0] > 0.5 and red[0] > purple[0] + 0.2  # "red" -> the red fly agaric
    assert purple[2] > red[2] + 0.2  # "purple" -> the purple cone
    x = prior.encode(family.render(cams[:1], variants=[0])[:, 0])
    cond = prior.condition(["a red mushroom, front view"])
    z = x + 1.0 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    assert (prior.denoise(z, 1.0, cond, guidance_scale=7.5) - prior.denoise(z, 1.0, cond, 1.0)).abs().mean() > 1e-3


def test_camera_conditioned_prior_reads_the_camera_and_refuses_without_one(tmp_path):
    """The camera-conditioned variant (MVDream-style view features on the time embedding) trains, saves and
    loads; its denoised estimate depends on the camera, CFG leaves the view alone, and a call without
    cameras is a one-line error."""
    from msd3d.catalogue.learned_prior import VIEW_FEATURES, view_features
    from msd3d.errors import Msd3dError
    from msd3d.render.cameras import CameraConfig, sample_cameras

    config = LearnedPriorTrainConfig(**{**_tiny().__dict__, "camera_conditioning": True})
    comps, meta = train_learned_prior(config)
    path = tmp_path / "camera.safetensors"
    save_learned_prior(path, comps, config, meta)
    prior = build_prior(PriorConfig(name="learned", learned=LearnedPriorConfig(weights=str(path))))
    assert prior.camera_conditioned
    cams = sample_cameras(CameraConfig(batch_size=2), 8, generator=torch.Generator().manual_seed(0))
    feats = view_features(cams, ["albedo", "lambertian"], torch.ones(2, 3), config.camera)
    assert feats.shape == (2, VIEW_FEATURES)
    assert torch.allclose(feats[:, :4].pow(2).view(2, 2, 2).sum(-1), torch.ones(2, 2))  # sin^2 + cos^2
    assert feats[0, 9:].abs().sum() == 0 and feats[1, 9:].norm() == pytest.approx(1.0)  # light only when lit

    cond = prior.condition(["a mushroom"] * 2, cameras=cams)
    assert torch.equal(cond.cond["view"], cond.uncond["view"])
    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    d = prior.denoise(z, 1.0, cond, 1.0)
    swapped = prior.condition(["a mushroom"] * 2, cameras=cams[torch.tensor([1, 0])])
    assert (prior.denoise(z, 1.0, swapped, 1.0) - d).abs().max() > 1e-6  # the view reaches the UNet
    with pytest.raises(Msd3dError, match="conditioned on the camera"):
        prior.condition(["a mushroom"])
