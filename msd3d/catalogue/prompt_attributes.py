"""Attribute words in a prompt: "a red mushroom" means the red variant, not the whole family.

A prompt names a catalogue family (:func:`~msd3d.catalogue.families.find_family`); the other words may
describe one of its variants. Each variant is described by its name and its catalogue description
("red cap with white spots"), so its *attribute words* are those words, less

* words every variant of the family shares (they do not tell variants apart: "cap"),
* the family's name and synonyms ("mug" selects the family, even if two variants are mugs),
  unless a variant is named by one ("a pine" is the tree variant called pine),
* view words ("front", "side", "overhead", "view"),
* negated words ("no spots" is not a spotted variant),
* function words ("a", "with", "on" ...).

A prompt prefers the variants that share the most attribute words with it; those variants keep equal
weights and the others are dropped. A prompt with no attribute word of its family keeps every
variant, so the prior stays multi-modal ("a mushroom" is any of them).
"""

from __future__ import annotations

import math
import re

import torch
from torch import Tensor

from msd3d.catalogue.families import Family, strip_view_suffix

_WORD = re.compile(r"[a-z]+")

#: Words that never describe a variant.
STOP_WORDS = frozenset(
    "a an the of with and or on in at to its it is under over by for from into onto as facing other".split()
    # view words (DreamFusion's suffixes) say where the camera is, not what the object looks like
    + "front side overhead view".split()
)
#: Words after which the next word is negated ("no spots", "without a back").
NEGATIONS = frozenset({"no", "without", "not"})
#: Spellings folded to one form, in prompts and descriptions alike.
ALIASES = {"gray": "grey", "colour": "color", "spotted": "spots", "spot": "spots", "wood": "wooden"}


def normalise_word(word: str) -> str:
    """A word with aliases folded and a plural "s" dropped ("gray" -> grey, "cups" -> cup)."""
    word = ALIASES.get(word, word)
    if word.endswith("s") and len(word) > 3 and not word.endswith("ss") and word not in ("spots",):
        singular = word[:-1]
        return ALIASES.get(singular, singular)
    return word


def description_words(text: str) -> set[str]:
    """Normalised, non-negated content words of a variant's name or description."""
    words: set[str] = set()
    negate = False
    for raw in _WORD.findall(text.lower().replace("_", " ")):
        if raw in NEGATIONS:
            negate = True
            continue
        if raw in STOP_WORDS:
            continue  # "no back" and "without a back" both negate "back"
        if not negate:
            words.add(normalise_word(raw))
        negate = False
    return words


def variant_attributes(family: Family) -> list[set[str]]:
    """Per variant, the attribute words that tell it apart from at least one other variant.

    The family's own name and synonyms are excluded ("a mug" names the family, even though two
    variants are described as mugs) unless they name a variant ("a pine" is the tree called pine,
    "a desk lamp" the lamp called desk)."""
    names = [description_words(v.name) for v in family.variants]
    per_variant = [description_words(v.description) | name for v, name in zip(family.variants, names)]
    shared = set.intersection(*per_variant) if per_variant else set()
    family_words = set().union(*(description_words(k) for k in family.keywords)) - set().union(*names)
    return [words - shared - family_words for words in per_variant]


def prompt_attributes(prompt: str, family: Family) -> set[str]:
    """The words of ``prompt`` (view suffix removed) that are attribute words of some variant."""
    vocabulary = set().union(*variant_attributes(family))
    words = {normalise_word(w) for w in _WORD.findall(strip_view_suffix(prompt))}
    return words & vocabulary


def variant_matches(prompt: str, family: Family) -> list[int]:
    """How many of the prompt's attribute words each variant has."""
    asked = prompt_attributes(prompt, family)
    return [len(asked & words) for words in variant_attributes(family)]


def variant_log_weights(prompt: str, family: Family) -> Tensor:
    """(V,) float64 log-weights of the family's variants under ``prompt``: uniform over the variants
    that match the most attribute words (``-inf`` for the rest), uniform over all when none match."""
    matches = variant_matches(prompt, family)
    best = max(matches, default=0)
    keep = [m == best for m in matches] if best > 0 else [True] * len(matches)
    n = sum(keep)
    return torch.tensor([-math.log(n) if k else -math.inf for k in keep], dtype=torch.float64)
