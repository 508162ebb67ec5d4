"""The test instrument: a catalogue of shapes whose truth is known, and the priors and scores built on it.

* :mod:`~msd3d.catalogue.shapes` and :mod:`~msd3d.catalogue.families` — signed-distance shapes, the
  families and their variants ("a mushroom": fly agaric, porcini, purple cone), rendered at any camera;
* :mod:`~msd3d.catalogue.prompt_attributes` — which variants a prompt's attribute words name;
* :mod:`~msd3d.catalogue.oracle` — :class:`OraclePrior`, the exact denoiser of a family's variants;
* :mod:`~msd3d.catalogue.learned_prior` — a small diffusers UNet trained on the catalogue renders
  (``prior.name: learned``; weights in ``weights/``, reproduced by ``scripts/train_learned_prior.py``);
* :mod:`~msd3d.catalogue.scoring` — a run's mesh against the true variant (Chamfer, height, normals).

Nothing in :mod:`msd3d.priors`, the guidance, the scene or the trainer imports this package; the
registry names its priors by string and the workflows ask it for scores.
"""
