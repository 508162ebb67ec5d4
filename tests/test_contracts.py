"""Contract tests, parametrised from the registries: every guidance method on every prior.

A method registered in ``msd3d.registry.GUIDANCE`` is checked here with no edit to this file; a new
prior needs one small instance in ``PRIOR_CASES`` (the test fails, naming it, until it has one).
Checked: target shape, dtype and detachment; weight shape (B,); statistics that convert to float;
the number of batched denoiser calls the method declares; classifier-free guidance inside each call
(one batch of 2B, never a second pass); and that the loss's gradient is ``w (x - target) / B``.
"""

from __future__ import annotations

import pytest
import torch
from conftest import GMM_COVS, GMM_MEANS, GMM_WEIGHTS

from msd3d.errors import Msd3dError
from msd3d.guidance import GuidanceConfig, build_guidance
from msd3d.registry import ENCODINGS, FIELDS, GUIDANCE, PRIORS

BATCH = 2


def _gmm_case(tmp_path_factory):
    from msd3d.priors.gmm import GaussianMixturePrior

    prior = GaussianMixturePrior(GMM_MEANS, GMM_COVS, GMM_WEIGHTS)
    x = torch.randn(BATCH, 2, generator=torch.Generator().manual_seed(0))
    return prior, x, prior.condition([""] * BATCH)


def _oracle_case(tmp_path_factory):
    from msd3d.catalogue.oracle import OracleConfig, OraclePrior
    from msd3d.render.cameras import turntable_cameras

    prior = OraclePrior(OracleConfig(unconditional="all_families"))  # with an unconditional branch (CFG)
    cameras = turntable_cameras(BATCH, 16)
    x = torch.rand(BATCH, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    return prior, x, prior.condition(["a donut"] * BATCH, cameras=cameras)


_SD_FOLDER: dict[str, object] = {}


def _sd_case(tmp_path_factory):
    from msd3d.priors.sd_architectures import save_random_pipeline
    from msd3d.priors.stable_diffusion import StableDiffusionConfig, StableDiffusionPrior

    if "folder" not in _SD_FOLDER:
        _SD_FOLDER["folder"] = save_random_pipeline("tiny", tmp_path_factory.mktemp("sd") / "tiny", seed=0)
    prior = StableDiffusionPrior(StableDiffusionConfig(model=str(_SD_FOLDER["folder"]), render_size=64), device="cpu")
    x = torch.randn(prior.latent_shape(BATCH), generator=torch.Generator().manual_seed(0))
    return prior, x, prior.condition(["a red chair"] * BATCH)


def _learned_case(tmp_path_factory):
    from msd3d.catalogue.learned_prior import LearnedPriorTrainConfig, prior_from_components, train_learned_prior

    if "learned" not in _SD_FOLDER:
        config = LearnedPriorTrainConfig(render_size=8, block_out_channels=(8, 16), attention_head_dim=4, text_dim=8,
                                         families=("mushroom",), views_per_variant=1, steps=1, batch=2)
        components, _ = train_learned_prior(config)
        _SD_FOLDER["learned"] = (components, config)
    prior = prior_from_components(*_SD_FOLDER["learned"])
    x = torch.rand(BATCH, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return prior, x, prior.condition(["a red mushroom"] * BATCH)


#: One tiny instance per prior: the mixture of the 2-D experiments plus every registered prior.
PRIOR_CASES = {"gmm": _gmm_case, "oracle": _oracle_case, "sd": _sd_case, "learned": _learned_case}


@pytest.mark.parametrize("prior_name", ["gmm", *PRIORS.names()])
@pytest.mark.parametrize("method", GUIDANCE.names())
def test_guidance_contract(method, prior_name, tmp_path_factory):
    assert prior_name in PRIOR_CASES, f"add a tiny {prior_name!r} instance to PRIOR_CASES"
    prior, x, cond = PRIOR_CASES[prior_name](tmp_path_factory)
    config = GuidanceConfig()
    section = getattr(config, method)
    if hasattr(section, "guidance_scale"):
        section.guidance_scale = 3.0  # classifier-free guidance on
    try:
        guidance = build_guidance(method, prior, config)
    except Msd3dError as exc:  # a method that fine-tunes the prior's network (VSD) on a prior without one
        assert prior_name in ("gmm", "oracle") and "no network" in str(exc) and "\n" not in str(exc)
        return

    raw_batches: list[int] = []
    denoise_raw = prior.denoise_raw

    def counting_denoise_raw(z, sigma, payload):
        raw_batches.append(z.shape[0])
        return denoise_raw(z, sigma, payload)

    prior.denoise_raw = counting_denoise_raw  # type: ignore[method-assign]
    calls_before = prior.counter.calls
    x = x.clone().requires_grad_(True)
    out = guidance(x, cond, step=3, total_steps=10, generator=torch.Generator().manual_seed(1))

    assert out.target.shape == x.shape and out.target.dtype == x.dtype
    assert not out.target.requires_grad
    assert out.weight.shape == (BATCH,) and torch.isfinite(out.weight).all()
    assert torch.isfinite(out.target).all()
    assert out.stats and all(isinstance(float(v), float) for v in out.stats.values())
    # the declared number of batched calls, each one forward pass of the network (CFG batched inside);
    # a method with a trainable copy of the network (VSD) counts the copy's calls too (not denoise_raw's)
    assert guidance.denoiser_calls() == prior.counter.calls - calls_before
    if guidance.parameters():
        assert 1 <= len(raw_batches) < guidance.denoiser_calls()
    else:
        assert len(raw_batches) == guidance.denoiser_calls()
    samples = getattr(guidance.config, "samples", 1)
    assert set(raw_batches) <= {BATCH * samples, 2 * BATCH * samples}
    assert 2 * BATCH * samples in raw_batches  # guidance_scale 3: the final call runs CFG as one 2B batch
    # the loss applies w (x - target) / B to x
    out.loss(x).backward()
    expected = out.weight.view(-1, *[1] * (x.ndim - 1)) * (x.detach() - out.target) / BATCH
    torch.testing.assert_close(x.grad, expected)
    params = guidance.parameters()
    if not params:
        assert guidance.state_dict() == {} and out.aux_loss is None
        return
    # trainable state: a scalar loss on the method's own parameters only (never on x), and a state round trip
    assert out.aux_loss is not None and out.aux_loss.ndim == 0 and torch.isfinite(out.aux_loss)
    grad_of_x = x.grad.clone()
    out.aux_loss.backward()
    torch.testing.assert_close(x.grad, grad_of_x)
    assert all(p.grad is not None for p in params) and any(p.grad.abs().sum() > 0 for p in params)
    state = guidance.state_dict()
    with torch.no_grad():
        for p in params:
            p.add_(1.0)
    assert not all(torch.equal(a, b) for a, b in zip(_tensors(state), _tensors(guidance.state_dict())))
    guidance.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(_tensors(state), _tensors(guidance.state_dict())))


def _tensors(state) -> list[torch.Tensor]:
    """Every tensor of a nested state dict, in order."""
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for key in sorted(state) for t in _tensors(state[key])]
    return []


@pytest.mark.parametrize("name", FIELDS.names())
def test_field_contract(name):
    """Every registered field: a RadianceField whose param_groups() name each parameter once, and
    which the renderer queries for density (N,) >= 0, albedo (N, 3) in [0, 1] and unit normals (N, 3)
    (through its own ``query`` when it has one, else ``density``/``albedo`` and autograd normals)."""
    from msd3d.render.volume import query_field
    from msd3d.scene.base import RadianceField

    torch.manual_seed(0)
    field = FIELDS.factory(name)(FIELDS.config_class(name)())
    assert isinstance(field, RadianceField)
    groups = field.param_groups()
    listed = [id(p) for params in groups.values() for p in params]
    assert sorted(listed) == sorted(id(p) for p in field.parameters()) and len(set(listed)) == len(listed)
    points = (torch.rand(64, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1) * field.bound
    sample = query_field(field, points, with_normals=True)
    assert sample.density.shape == (64,) and (sample.density >= 0).all()
    assert sample.albedo.shape == (64, 3) and ((sample.albedo >= 0) & (sample.albedo <= 1)).all()
    torch.testing.assert_close(sample.normals.norm(dim=-1), torch.ones(64), atol=1e-4, rtol=0)
    torch.testing.assert_close(field.density(points), sample.density)


@pytest.mark.parametrize("name", ENCODINGS.names())
def test_encoding_contract(name):
    """Every registered encoding maps coordinates (N, 3) in [-1, 1] to features (N, output_dim), differentiably."""

    encoding = ENCODINGS.factory(name)((4, 8), 2, 0.1)
    coords = torch.rand(10, 3) * 2 - 1
    features = encoding(coords)
    assert features.shape == (10, encoding.output_dim)
    features.sum().backward()
    assert all(p.grad is not None for p in encoding.parameters())
