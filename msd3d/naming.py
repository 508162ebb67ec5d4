"""Folder names for runs: short, safe on every file system, and distinct for distinct runs."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Any


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]


def slugify(text: str, max_len: int = 48) -> str:
    """``"A Red Mushroom!"`` -> ``"a-red-mushroom"``: safe for folder names.

    Accents are transliterated (``"Crème brûlée"`` -> ``"creme-brulee"``, Unicode NFKD). Letters with
    no ASCII form (``"一个蘑菇"``, ``"гриб"``) and text cut at ``max_len`` add an 8-hex hash of the
    whole text, so different prompts never share a folder.
    """
    decomposed = unicodedata.normalize("NFKD", text)
    kept = "".join(c for c in decomposed if not unicodedata.combining(c))
    lossy = any(ord(c) > 127 and c.isalnum() for c in kept)
    slug = re.sub(r"[^a-z0-9]+", "-", kept.lower().encode("ascii", "ignore").decode("ascii")).strip("-")
    truncated = len(slug) > max_len
    slug = slug[:max_len].rstrip("-")
    if lossy or truncated or not slug:
        return f"{slug}-{_short_hash(text)}" if slug else f"prompt-{_short_hash(text)}"
    return slug


def run_name(prompt: str, guidance: str, prior: str, seed: Any) -> str:
    """The default run folder name: ``<prompt-slug>-<guidance>-<prior>-<seed>``, e.g.
    ``a-red-mushroom-msd-oracle-0``: runs of one prompt with other methods or priors never collide."""
    return f"{slugify(prompt)}-{guidance}-{prior}-{seed}"
