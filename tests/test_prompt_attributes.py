"""Attribute words in prompts: "a red mushroom" is the red variant, for the parser and the oracle."""

from __future__ import annotations

import math

import pytest
import torch

from msd3d.catalogue.families import CATALOGUE, match_family
from msd3d.catalogue.oracle import OracleConfig, OraclePrior
from msd3d.catalogue.prompt_attributes import prompt_attributes, variant_attributes, variant_log_weights
from msd3d.render.cameras import orbit_cameras


def _selected(prompt: str) -> list[str]:
    family = match_family(prompt)
    w = variant_log_weights(prompt, family).exp()
    assert float(w.sum()) == pytest.approx(1.0)
    return [name for name, wi in zip(family.variant_names, w.tolist()) if wi > 0]


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("a red mushroom", ["fly_agaric"]),
        ("a purple mushroom, side view", ["purple_cone"]),
        ("A BROWN toadstool", ["porcini"]),
        ("a mushroom with white spots", ["fly_agaric"]),
        ("a grey rocket", ["classic"]),
        ("a gray rocket", ["classic"]),  # spelling folded
        ("a pink donut", ["strawberry"]),
        ("a pine tree", ["pine"]),  # a family synonym that names a variant selects it
        ("a red snowman", ["top_hat", "two_ball"]),  # ties keep every best match
        ("a red mushroom with a tall leaning cap", ["purple_cone"]),  # most matches win
    ],
)
def test_attribute_words_select_variants(prompt, expected):
    assert _selected(prompt) == expected


@pytest.mark.parametrize("prompt", ["a mushroom", "a green mushroom", "a mug", "a mug, side view", "a tree"])
def test_prompts_without_attribute_words_keep_every_variant(prompt):
    family = match_family(prompt)
    assert _selected(prompt) == family.variant_names


def test_attribute_vocabulary_excludes_shared_negated_and_family_words():
    mushroom = CATALOGUE["mushroom"]
    words = dict(zip(mushroom.variant_names, variant_attributes(mushroom)))
    assert "spots" not in words["porcini"]  # "no spots"
    assert "cap" not in set().union(*words.values())  # every variant has a cap
    assert "red" in words["fly_agaric"] and "purple" in words["purple_cone"]
    assert "mug" not in set().union(*variant_attributes(CATALOGUE["mug"]))  # the family's own name
    assert prompt_attributes("a red mushroom, front view", mushroom) == {"red"}


def test_attribute_words_change_which_variant_the_oracle_prefers():
    """From the blend of the mushroom variants, the oracle's denoiser moves to the variant the
    attribute words name (before, only the family was read and every prompt went the same way)."""
    prior = OraclePrior(OracleConfig(unconditional="none", supersample=1, max_steps=24))
    cams = orbit_cameras(torch.tensor([20.0]), torch.tensor([30.0]), torch.tensor([1.75]), torch.tensor([55.0]), 12)
    family = CATALOGUE["mushroom"]
    variants = prior.render_family(family, cams)[0]  # (V, 3, H, W)
    blend = variants.mean(0, keepdim=True)
    nearest = {}
    for prompt in ("a red mushroom", "a brown mushroom", "a purple mushroom", "a mushroom"):
        cond = prior.condition([prompt], cameras=cams)
        d = prior.denoise(blend, 0.5, cond)
        dist = (d - variants).pow(2).flatten(1).sum(1)
        nearest[prompt] = family.variant_names[int(dist.argmin())]
        if prompt != "a mushroom":
            w = cond.cond["log_weights"][0]
            assert int(torch.isfinite(w).sum()) == 1 and float(w.max()) == 0.0
    assert nearest["a red mushroom"] == "fly_agaric"
    assert nearest["a brown mushroom"] == "porcini"
    assert nearest["a purple mushroom"] == "purple_cone"
    # no attribute: the family's three variants, equally weighted (multi-modal)
    w = prior.condition(["a mushroom"], cameras=cams).cond["log_weights"][0]
    assert torch.allclose(w[:3], torch.full((3,), -math.log(3), dtype=w.dtype))
    # the all-families (CFG) payload reads the same words
    cfg_prior = OraclePrior(OracleConfig(unconditional="all_families", supersample=1, max_steps=24))
    cond = cfg_prior.condition(["a red mushroom"], cameras=cams)
    sl = cfg_prior._slices["mushroom"]
    assert torch.isfinite(cond.cond["log_weights"][0, sl]).tolist() == [True, False, False]
    assert torch.isfinite(cond.uncond["log_weights"][0]).all()
