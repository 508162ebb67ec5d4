"""Diffusion priors in VE-denoiser coordinates (docs/design.md §2).

* :class:`~msd3d.priors.stable_diffusion.StableDiffusionPrior` — any SD 1.x/2.x checkpoint;
* :class:`~msd3d.catalogue.oracle.OraclePrior` — the exact, weight-free prior over a catalogue of shapes
  (in :mod:`msd3d.catalogue`, the test instrument, with the learned catalogue prior);
* :class:`~msd3d.priors.gmm.GaussianMixturePrior` — exact mixtures for the 2-D experiments and tests.

Which priors a run can use is :data:`msd3d.registry.PRIORS`. Nothing here imports diffusers: Stable
Diffusion is loaded only by :func:`~msd3d.priors.choice.build_prior` when asked for
(``prior.name`` and its settings sections: :data:`~msd3d.priors.choice.PriorConfig`).
"""

from __future__ import annotations

from msd3d.priors.base import Condition, DenoiserCounter, DiffusionPrior
from msd3d.priors.gmm import GaussianMixturePrior

__all__ = ["Condition", "DenoiserCounter", "DiffusionPrior", "GaussianMixturePrior"]
