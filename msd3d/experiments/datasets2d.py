"""Exact 2-D Gaussian-mixture datasets for the synthetic experiments (``msd3d toy2d``).

Every dataset is a :class:`~msd3d.priors.gmm.GaussianMixturePrior`, so its denoiser, density and
mean shift are exact and the optimised particles can be scored against the true distribution.

* ``fractal``: a two-class, tree-like mixture in the spirit of the toy distribution of Karras et al.
  2024 ("Guiding a diffusion model with a bad version of itself"): from a common root two trees
  ("orange" and "gray") grow in opposite directions; every branch splits in two, recursively, and is
  drawn as a chain of thin, anisotropic Gaussians aligned with it. Branches get shorter and thinner
  with depth, so the density has many narrow ridges at very different scales.
* ``spiral``: a two-turn Archimedean spiral drawn as a chain of tangent-aligned Gaussians.
* ``pinwheel``: five curved arms that widen with the radius (the classic "pinwheel" density).

Units: the data live in a box of a few units around the origin, comparable to Stable Diffusion's
latents, so the prior's default (SD) noise schedule, sigma in [0.03, 14.6], means the same thing here
as on images: the largest noise level hides the whole canvas, the smallest is below the finest ridge.

A mixture can also come from a JSON file, see :func:`load_gmm_json`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from msd3d.errors import Msd3dError
from msd3d.priors.gmm import GaussianMixturePrior
from msd3d.registry import DATASETS_2D

Bounds = tuple[float, float, float, float]
"""A canvas ``(x_min, x_max, y_min, y_max)``."""


@dataclass
class Dataset2D:
    """A named 2-D mixture with the canvas it is shown (and the particle grid laid out) on.

    ``bounds`` frames the components of the default ``prompt`` (:func:`canvas_bounds`).
    """

    name: str
    prior: GaussianMixturePrior
    bounds: Bounds
    prompt: str = ""
    """Default class prompt ("" = the whole mixture)."""


# -- building blocks ------------------------------------------------------------------------------
def _oriented_cov(direction: np.ndarray, along_std: float, across_std: float) -> np.ndarray:
    """(2, 2) covariance with standard deviation ``along_std`` along ``direction`` and ``across_std``
    perpendicular to it."""
    d = direction / np.linalg.norm(direction)
    outer = np.outer(d, d)
    return along_std**2 * outer + across_std**2 * (np.eye(2) - outer)


def _chain_along_curve(
    points: np.ndarray, across_std: np.ndarray | float, overlap: float = 0.7
) -> tuple[list[np.ndarray], list[np.ndarray], list[float]]:
    """Gaussians centred at ``points`` (N, 2) of a curve, each stretched along the local tangent.

    The along-curve standard deviation is ``overlap`` times the spacing between neighbours, so
    consecutive components overlap into a continuous ridge. Weights are proportional to the area
    each component covers (spacing times width).
    """
    n = len(points)
    across = np.broadcast_to(np.asarray(across_std, dtype=np.float64), (n,))
    tangents = np.gradient(points, axis=0)
    spacing = np.linalg.norm(tangents, axis=1)
    means, covs, weights = [], [], []
    for i in range(n):
        means.append(points[i])
        covs.append(_oriented_cov(tangents[i], overlap * spacing[i], across[i]))
        weights.append(float(spacing[i] * across[i]))
    return means, covs, weights


def canvas_bounds(prior: GaussianMixturePrior, prompt: str = "", margin: float = 0.15) -> Bounds:
    """A square canvas holding the 3-sigma ellipse of every component the prompt selects (all for
    ""), padded by ``margin`` of its size."""
    mask = prior.component_log_weights(prompt).isfinite()
    means = prior.means[mask].numpy()
    reach = 3.0 * prior.component_scale()[mask].numpy()[:, None]
    lo = (means - reach).min(0)
    hi = (means + reach).max(0)
    centre = (lo + hi) / 2
    half = (hi - lo).max() / 2 * (1 + margin)
    return (float(centre[0] - half), float(centre[0] + half), float(centre[1] - half), float(centre[1] + half))


# -- the datasets ---------------------------------------------------------------------------------
def fractal(
    depth: int = 5,
    components_per_branch: int = 4,
    trunk_length: float = 1.3,
    trunk_width: float = 0.06,
    seed: int = 0,
) -> GaussianMixturePrior:
    """Two recursively branching trees, classes "orange" and "gray" (``depth`` levels each).

    A branch at level ``l`` has length ``trunk_length * 0.72^l`` (jittered), width (perpendicular
    standard deviation) ``trunk_width * 0.75^l`` and splits into two children whose directions
    deviate by about ``±0.65 * 0.8^l`` radians. Each class has ``(2^depth - 1) * components_per_branch``
    components. ``seed`` fixes the jitter, so the same arguments always give the same mixture.
    """
    if depth < 1 or components_per_branch < 2:
        raise ValueError("fractal needs depth >= 1 and components_per_branch >= 2")
    rng = np.random.default_rng(seed)
    means: list[np.ndarray] = []
    covs: list[np.ndarray] = []
    weights: list[float] = []
    labels: list[int] = []

    def grow(label: int, level: int, start: np.ndarray, angle: float, length: float) -> None:
        if level >= depth:
            return
        direction = np.array([math.cos(angle), math.sin(angle)])
        end = start + length * direction
        ts = (np.arange(components_per_branch) + 0.5) / components_per_branch
        points = start[None] + ts[:, None] * (end - start)[None]
        width = trunk_width * 0.75**level
        m, c, w = _chain_along_curve(points, width)
        means.extend(m)
        covs.extend(c)
        weights.extend(w)
        labels.extend([label] * len(m))
        for sign in (1.0, -1.0):
            spread = 0.65 * 0.8**level * (1.0 + 0.15 * rng.standard_normal())
            child_length = length * 0.72 * (1.0 + 0.1 * rng.standard_normal())
            grow(label, level + 1, end, angle + sign * spread, child_length)

    origin = np.array([0.0, 0.0])
    grow(0, 0, origin, math.radians(55.0), trunk_length)  # "orange": up and to the right
    grow(1, 0, origin, math.radians(235.0), trunk_length)  # "gray": down and to the left
    return GaussianMixturePrior(
        torch.tensor(np.array(means)),
        torch.tensor(np.array(covs)),
        torch.tensor(weights),
        labels=torch.tensor(labels),
        class_names=["orange", "gray"],
    )


def spiral(
    turns: float = 2.0, components: int = 80, r_min: float = 0.3, r_max: float = 2.4, width: float = 0.07
) -> GaussianMixturePrior:
    """An Archimedean spiral ``r = r_min + (r_max - r_min) theta / (2 pi turns)`` as a chain of
    ``components`` Gaussians equally spaced in arc length, ``width`` thick."""
    if components < 3 or turns <= 0 or not 0 <= r_min < r_max or width <= 0:
        raise ValueError("spiral needs components >= 3, turns > 0, 0 <= r_min < r_max and width > 0")
    theta_max = 2 * math.pi * turns
    theta = np.linspace(0.0, theta_max, 4096)
    r = r_min + (r_max - r_min) * theta / theta_max
    curve = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(curve, axis=0), axis=1))])
    targets = np.linspace(arc[0], arc[-1], components)
    points = np.stack([np.interp(targets, arc, curve[:, k]) for k in range(2)], axis=1)
    m, c, w = _chain_along_curve(points, width)
    return GaussianMixturePrior(torch.tensor(np.array(m)), torch.tensor(np.array(c)), torch.tensor(w))


def pinwheel(
    arms: int = 5, components_per_arm: int = 8, r_min: float = 0.5, r_max: float = 2.4, twist: float = 0.55
) -> GaussianMixturePrior:
    """``arms`` curved arms (angle grows by ``twist`` radians per unit radius) that widen outwards."""
    if arms < 1 or components_per_arm < 2 or not 0 <= r_min < r_max:
        raise ValueError("pinwheel needs arms >= 1, components_per_arm >= 2 and 0 <= r_min < r_max")
    means: list[np.ndarray] = []
    covs: list[np.ndarray] = []
    weights: list[float] = []
    for j in range(arms):
        base = 2 * math.pi * j / arms
        r = np.linspace(r_min, r_max, components_per_arm)
        angle = base + twist * r
        points = np.stack([r * np.cos(angle), r * np.sin(angle)], axis=1)
        m, c, w = _chain_along_curve(points, 0.04 + 0.035 * r)
        means.extend(m)
        covs.extend(c)
        weights.extend(w)
    return GaussianMixturePrior(torch.tensor(np.array(means)), torch.tensor(np.array(covs)), torch.tensor(weights))


_DEFAULT_PROMPTS = {"fractal": "orange"}
DATASETS: dict[str, tuple[Callable[[], GaussianMixturePrior], str]] = {
    name: (DATASETS_2D.factory(name), _DEFAULT_PROMPTS.get(name, "")) for name in DATASETS_2D
}
"""Built-in datasets (the names in msd3d.registry.DATASETS_2D): name -> (constructor, default prompt)."""


def load_dataset(name: str, gmm_path: Path | str | None = None) -> Dataset2D:
    """A built-in dataset by name, or (``gmm_path`` given) a mixture from a JSON file.

    With a file the name is only a label; its default prompt is "" (the whole mixture).
    """
    if gmm_path is not None:
        prior = load_gmm_json(gmm_path)
        return Dataset2D(name=name or Path(gmm_path).stem, prior=prior, bounds=canvas_bounds(prior))
    if name not in DATASETS:
        raise Msd3dError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)} or pass --gmm FILE")
    make, prompt = DATASETS[name]
    prior = make()
    return Dataset2D(name=name, prior=prior, bounds=canvas_bounds(prior, prompt), prompt=prompt)


# -- mixtures from files --------------------------------------------------------------------------
def load_gmm_json(path: Path | str) -> GaussianMixturePrior:
    """A 2-D (or any-D) mixture from ``{"means": [[..]], "covs": [[[..]]], "weights": [..]}``.

    Optional keys: ``"labels"`` (one integer class per component) and ``"class_names"``. Every
    problem (unreadable file, invalid JSON, missing key, wrong shape, non-finite numbers, negative
    weights, covariances that are not symmetric positive definite) raises a one-line
    :class:`Msd3dError` naming the file and the fix.
    """
    path = Path(path)
    where = f"GMM file {str(path)!r}"
    try:
        text = path.read_text()
    except OSError as err:
        raise Msd3dError(f"cannot read {where}: {err.strerror or err}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise Msd3dError(f"{where} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
    if not isinstance(data, dict):
        raise Msd3dError(f"{where} must hold a JSON object with keys 'means', 'covs' and 'weights'")
    missing = [k for k in ("means", "covs", "weights") if k not in data]
    if missing:
        raise Msd3dError(
            f"{where} is missing key(s) {', '.join(repr(k) for k in missing)}; expected 'means', 'covs', 'weights'"
        )

    def as_array(key: str) -> np.ndarray:
        try:
            arr = np.asarray(data[key], dtype=np.float64)
        except (TypeError, ValueError):
            raise Msd3dError(f"{where}: {key!r} must be a (nested) list of numbers of equal lengths") from None
        if not np.isfinite(arr).all():
            raise Msd3dError(f"{where}: {key!r} contains non-finite numbers")
        return arr

    means, covs, weights = as_array("means"), as_array("covs"), as_array("weights")
    if means.ndim != 2 or means.shape[0] < 1 or means.shape[1] < 1:
        raise Msd3dError(f"{where}: 'means' must be a list of K points of equal dimension, got shape {means.shape}")
    k, d = means.shape
    if covs.shape != (k, d, d):
        raise Msd3dError(
            f"{where}: 'covs' must have shape (K, D, D) = ({k}, {d}, {d}) to match 'means', got {covs.shape}"
        )
    if weights.shape != (k,):
        raise Msd3dError(
            f"{where}: 'weights' must be a list of {k} numbers (one per component), got shape {weights.shape}"
        )
    if (weights < 0).any() or weights.sum() <= 0:
        raise Msd3dError(f"{where}: 'weights' must be non-negative with a positive sum")
    if not np.allclose(covs, covs.transpose(0, 2, 1), atol=1e-9, rtol=1e-9):
        bad = int(np.argmax(np.abs(covs - covs.transpose(0, 2, 1)).reshape(k, -1).max(1)))
        raise Msd3dError(f"{where}: covariance {bad} is not symmetric")
    eig_min = np.linalg.eigvalsh(covs).min(1)
    if (eig_min <= 0).any():
        bad = int(np.argmin(eig_min))
        raise Msd3dError(f"{where}: covariance {bad} is not positive definite (smallest eigenvalue {eig_min[bad]:.3g})")

    labels = None
    class_names = None
    if "labels" in data:
        try:
            lab = np.asarray(data["labels"])
        except (TypeError, ValueError):
            lab = np.asarray([])
        if lab.shape != (k,) or not np.issubdtype(lab.dtype, np.integer) or (lab < 0).any():
            raise Msd3dError(f"{where}: 'labels' must be {k} non-negative integers (one class per component)")
        labels = torch.tensor(lab, dtype=torch.long)
    if "class_names" in data:
        names = data["class_names"]
        if labels is None:
            raise Msd3dError(f"{where}: 'class_names' needs 'labels' (one class per component)")
        if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
            raise Msd3dError(f"{where}: 'class_names' must be a list of non-empty strings")
        if len(names) <= int(labels.max()):
            raise Msd3dError(
                f"{where}: 'class_names' has {len(names)} names but 'labels' uses class {int(labels.max())}"
            )
        class_names = list(names)
    return GaussianMixturePrior(
        torch.tensor(means), torch.tensor(covs), torch.tensor(weights), labels=labels, class_names=class_names
    )


def save_gmm_json(prior: GaussianMixturePrior, path: Path | str) -> None:
    """Write a mixture in the format :func:`load_gmm_json` reads (handy for examples and tests)."""
    data: dict = {
        "means": prior.means.tolist(),
        "covs": prior.covs.tolist(),
        "weights": prior.weights.tolist(),
    }
    if prior.labels is not None:
        data["labels"] = prior.labels.tolist()
        data["class_names"] = list(prior.class_names)
    Path(path).write_text(json.dumps(data))
