"""The oracle prior: shape catalogue, sphere-traced renders, ideal denoiser, CFG, scoring, MSD on it."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from msd3d.catalogue.families import CATALOGUE, find_family, list_catalogue, match_family, strip_view_suffix
from msd3d.catalogue.oracle import MAX_PSNR, OracleConfig, OraclePrior, ideal_denoiser, score_renders
from msd3d.catalogue.shapes import sd_capped_cone, sd_frustum
from msd3d.errors import Msd3dError
from msd3d.guidance.msd import MSD, MSDConfig
from msd3d.render.cameras import CameraConfig, orbit_cameras, turntable_cameras
from msd3d.scene.base import RadianceField


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return -10.0 * math.log10(float((a - b).pow(2).mean()))


def _cams(elevations, azimuths, res, distance=1.75, fovy=55.0):
    n = len(elevations)
    return orbit_cameras(
        torch.tensor(elevations, dtype=torch.float32),
        torch.tensor(azimuths, dtype=torch.float32),
        torch.full((n,), distance),
        torch.full((n,), fovy),
        res,
    )


# -- catalogue ---------------------------------------------------------------------------------
def test_catalogue_size_and_listing():
    assert len(CATALOGUE) >= 8
    listing = list_catalogue()
    assert [entry["name"] for entry in listing] == list(CATALOGUE)
    for entry in listing:
        assert len(entry["variants"]) >= 3
        assert entry["synonyms"] and entry["description"]
        names = [v["name"] for v in entry["variants"]]
        assert len(set(names)) == len(names)
        assert all(v["description"] for v in entry["variants"])


def test_every_variant_renders_distinctly():
    """Pairwise PSNR between variants stays well below 25 dB, and each variant is far from the blend."""
    cams = _cams([15.0, 35.0], [30.0, -120.0], 16)
    for family in CATALOGUE.values():
        images = family.render(cams)  # (2, V, 3, 16, 16)
        assert images.shape == (2, len(family), 3, 16, 16)
        assert images.min() >= 0 and images.max() <= 1
        for i, j in itertools.combinations(range(len(family)), 2):
            assert _psnr(images[:, i], images[:, j]) < 25.0, (family.name, i, j)
        blend = images.mean(1)
        for i in range(len(family)):
            assert _psnr(images[:, i], blend) < 30.0, (family.name, i)


def test_shapes_fit_inside_the_scene():
    """Every variant is non-empty and lies inside [-0.75, 0.75]^3 in world space (scene bound 1)."""
    axis = torch.linspace(-1.0, 1.0, 25)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    for family in CATALOGUE.values():
        for v in range(len(family)):
            inside = family.shape(v).sdf(grid) < 0
            assert inside.any(), (family.name, v)
            assert grid[inside].abs().max() < 0.75, (family.name, v)


def test_frustum_bound_is_a_lower_bound_with_the_same_solid():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(4000, 3, generator=g) * 1.2 - 0.6
    exact = sd_capped_cone(p, 0.2, 0.25, 0.05)
    bound = sd_frustum(p, 0.2, 0.25, 0.05)
    assert torch.equal(exact < 0, bound < 0)
    assert (bound <= exact + 1e-5).all()
    side = (exact > 0) & (bound > 0.5 * exact)
    assert side.float().mean() > 0.5  # a useful bound, not a trivial one


# -- prompt matching -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "prompt, family",
    [
        ("A Red Mushroom", "mushroom"),
        ("mushroom, side view", "mushroom"),
        ("a DSLR photo of a toadstool, overhead view", "mushroom"),
        ("a donut", "donut"),
        ("a chocolate doughnut, back view", "donut"),
        ("a table lamp", "lamp"),
        ("a lamp on a table", "lamp"),
        ("two wooden chairs", "chair"),
        ("a cup of coffee", "mug"),
        ("a snowman wearing a hat, front view", "snowman"),
    ],
)
def test_prompt_matching(prompt, family):
    assert match_family(prompt).name == family


def test_view_suffix_is_stripped():
    assert strip_view_suffix("A Rocket, overhead view") == "a rocket"
    assert find_family("a photo of nothing in particular") is None


def test_unknown_prompt_lists_families_in_one_line():
    with pytest.raises(Msd3dError) as err:
        OraclePrior().family_for("a photo of a giraffe, side view")
    message = str(err.value)
    assert "\n" not in message and "giraffe" in message
    for name in CATALOGUE:
        assert name in message


# -- rendering -----------------------------------------------------------------------------------
def test_render_background_and_object_colours():
    bg = (0.2, 0.4, 0.6)
    snowman = CATALOGUE["snowman"]
    # front view: the image centre looks at the middle snowball, the corners at the background
    img = snowman.shape("top_hat").render(_cams([0.0], [0.0], 17), background=bg)[0]
    corners = img[:, [0, 0, -1, -1], [0, -1, 0, -1]].T
    assert torch.allclose(corners, torch.tensor(bg).expand(4, 3), atol=1e-6)
    snow = torch.tensor(snowman.variants[0].colors["snow"])
    assert torch.allclose(img[:, 8, 8], snow, atol=1e-5)
    # from straight above, a donut's centre is its hole and its ring shows the icing
    donut = CATALOGUE["donut"]
    top = donut.shape("strawberry").render(_cams([90.0], [0.0], 17), background=bg)[0]
    assert torch.allclose(top[:, 8, 8], torch.tensor(bg), atol=1e-6)
    icing = torch.tensor(donut.variants[0].colors["icing"])
    ring_px = int(8.5 + 0.32 / (1.75 * math.tan(math.radians(27.5))) * 8.5)  # the ring's centre line
    assert torch.allclose(top[:, 8, ring_px], icing, atol=1e-5)
    assert torch.allclose(top[:, ring_px, 8], icing, atol=1e-5)


def test_pose_is_shared_by_sdf_and_render():
    """The upright ring (pitch 90) stands in the y-z plane, facing the front camera (+x)."""
    shape = CATALOGUE["donut"].shape("upright_glazed")
    r = shape.spec.params["major"]
    on_ring = torch.tensor([[0.0, r, 0.0], [0.0, -r, 0.0], [0.0, 0.0, r], [0.0, 0.0, -r]])
    assert (shape.sdf(on_ring) < 0).all()
    assert (shape.sdf(torch.tensor([[r, 0.0, 0.0], [-r, 0.0, 0.0], [0.0, 0.0, 0.0]])) > 0).all()
    front = shape.render(_cams([0.0], [0.0], 17), background=0.0)[0]
    side = shape.render(_cams([0.0], [90.0], 17), background=0.0)[0]
    assert front[:, 8, 8].abs().max() == 0  # looking through the hole
    icing = torch.tensor(shape.spec.colors["icing"])
    ring_px = int(8.5 + r / (1.75 * math.tan(math.radians(27.5))) * 8.5)
    assert torch.allclose(front[:, 8, ring_px], icing, atol=1e-5)  # the glaze faces the front
    assert side[:, 8, 8].abs().max() > 0  # edge-on from the side: the centre is covered


def test_shape_as_field():
    shape = CATALOGUE["snowman"].shape("top_hat")
    origin = torch.zeros(1, 3)
    assert shape.sdf(origin).item() < -0.1  # inside the middle snowball
    snow = torch.tensor(shape.spec.colors["snow"])
    assert torch.allclose(shape.albedo(origin)[0], snow)
    field = shape.field(beta=0.01)
    assert isinstance(field, RadianceField) and field.bound == 1.0
    far = torch.tensor([[0.9, 0.9, 0.9]])
    assert field.density(origin).item() == pytest.approx(100.0, rel=1e-3)
    assert field.density(far).item() < 1e-6
    pts = torch.rand(2, 5, 3) - 0.5
    assert field.density(pts).shape == (2, 5) and field.albedo(pts).shape == (2, 5, 3)


# -- the ideal denoiser ---------------------------------------------------------------------------
def test_ideal_denoiser_is_the_posterior_mean():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 3, 2, 2, generator=g)
    log_w = torch.log(torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]]))
    z = torch.rand(2, 3, 2, 2, generator=g) + 0.3 * torch.randn(2, 3, 2, 2, generator=g)
    sigma = torch.tensor([0.7, 0.25])
    got = ideal_denoiser(z, sigma, images, log_w)
    for b in range(2):
        sq = ((z[b].double() - images[b].double()) ** 2).flatten(1).sum(1)
        logits = log_w[b].double() - sq / (2 * sigma[b].double() ** 2)
        post = torch.exp(logits - logits.max())
        post = post / post.sum()
        want = (post[:, None, None, None] * images[b].double()).sum(0)
        assert torch.allclose(got[b].double(), want, atol=1e-6)
    prior = OraclePrior()
    raw = prior.denoise_raw(z, sigma, {"images": images, "log_weights": log_w})
    assert torch.equal(raw, got)


def test_ideal_denoiser_limits():
    g = torch.Generator().manual_seed(2)
    images = torch.rand(1, 4, 3, 32, 32, generator=g)
    log_w = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
    sigma_min = OraclePrior().sigma_min
    assert 0.02 < sigma_min < 0.04
    # small sigma: the nearest image, even with thousands of pixels
    z = images[:, 2] + sigma_min * torch.randn(1, 3, 32, 32, generator=g)
    for s in (sigma_min, 1e-4):
        d = ideal_denoiser(z, torch.tensor([s]), images, log_w)
        assert torch.isfinite(d).all()
        assert torch.allclose(d, images[:, 2], atol=1e-6)
    # large sigma: the weighted mean
    mean = (log_w.exp()[:, :, None, None, None] * images).sum(1)
    d = ideal_denoiser(torch.rand(1, 3, 32, 32, generator=g), torch.tensor([1e4]), images, log_w)
    assert torch.allclose(d, mean, atol=1e-4)
    # masked entries never contribute
    masked = torch.tensor([[0.0, -math.inf, -math.inf, -math.inf]])
    d = ideal_denoiser(images[:, 3], torch.tensor([0.05]), images, masked)
    assert torch.allclose(d, images[:, 0])


# -- conditioning and classifier-free guidance ----------------------------------------------------
def test_condition_none_mode_pads_families():
    prior = OraclePrior(OracleConfig(unconditional="none"))
    cams = _cams([10.0, 20.0, 30.0], [0.0, 90.0, 180.0], 8)
    cond = prior.condition(["a donut, front view", "a red mushroom, side view", "a donut, back view"], cameras=cams)
    assert cond.uncond is None and cond.batch_size == 3
    images, log_w = cond.cond["images"], cond.cond["log_weights"]
    assert images.shape == (3, 3, 3, 8, 8)
    assert torch.allclose(torch.logsumexp(log_w, dim=1), torch.zeros(3, dtype=log_w.dtype))
    donut = CATALOGUE["donut"].render(cams[0], supersample=prior.config.supersample)[0]
    assert torch.allclose(images[0], donut)
    z = torch.rand(3, 3, 8, 8)
    assert torch.equal(prior.denoise(z, 0.5, cond, 7.5), prior.denoise(z, 0.5, cond, 1.0))


def test_cfg_with_all_families_payload():
    prior = OraclePrior(OracleConfig(unconditional="all_families"))
    cams = _cams([10.0, 40.0], [20.0, -60.0], 8)
    cond = prior.condition(["a rocket, side view", "a tree"], cameras=cams)
    total = sum(len(f) for f in CATALOGUE.values())
    assert cond.cond["images"].shape == (2, total, 3, 8, 8)
    # conditional weights live on the prompt's family only; unconditional weights on all of them
    rocket = prior._slices["rocket"]
    assert torch.isfinite(cond.cond["log_weights"][0, rocket]).all()
    assert torch.isinf(cond.cond["log_weights"][0]).sum() == total - len(CATALOGUE["rocket"])
    assert torch.allclose(torch.logsumexp(cond.uncond["log_weights"], 1), torch.zeros(2, dtype=torch.float64))
    g = torch.Generator().manual_seed(3)
    z = torch.rand(2, 3, 8, 8, generator=g)
    sigma = torch.tensor([0.8, 2.0])
    d_c = prior.denoise_raw(z, sigma, cond.cond)
    d_u = prior.denoise_raw(z, sigma, cond.uncond)
    prior.counter.reset()
    guided = prior.denoise(z, sigma, cond, guidance_scale=4.0)
    assert torch.allclose(guided, d_u + 4.0 * (d_c - d_u), atol=1e-5)
    assert prior.counter.calls == 1 and prior.counter.evaluations == 4
    # repeated conditions (several MSD samples) stay consistent
    rep = cond.repeat(2)
    both = prior.denoise(torch.cat([z, z]), torch.cat([sigma, sigma]), rep, guidance_scale=4.0)
    assert torch.allclose(both[:2], guided, atol=1e-6) and torch.allclose(both[2:], guided, atol=1e-6)
    # a negative prompt that names a family becomes the unconditional branch
    neg = prior.condition(["a rocket", "a tree"], negative_prompt="a mug", cameras=cams)
    assert torch.isfinite(neg.uncond["log_weights"][0]).sum() == len(CATALOGUE["mug"])


def test_condition_needs_cameras_and_matching_sizes():
    prior = OraclePrior(OracleConfig(unconditional="none"))
    with pytest.raises(ValueError):
        prior.condition(["a donut"])
    cond = prior.condition(["a donut", "a donut"], cameras=_cams([10.0], [0.0], 8))  # one camera, broadcast
    assert cond.cond["images"].shape[0] == 2 and torch.equal(cond.cond["images"][0], cond.cond["images"][1])
    with pytest.raises(ValueError):
        prior.denoise(torch.rand(2, 3, 16, 16), 1.0, cond)


def test_config_validation():
    for bad in (
        OracleConfig(unconditional="some"),
        OracleConfig(supersample=0),
        OracleConfig(background=(1.0, 2.0, 0.0)),
    ):
        with pytest.raises(ValueError, match="oracle\\."):
            bad.validate()


# -- scoring -------------------------------------------------------------------------------------
def test_score_mode_versus_blend():
    prior = OraclePrior(OracleConfig(unconditional="none"))
    cams = turntable_cameras(4, 16)
    variants = prior.render_family("chair", cams)  # (4, V, 3, 16, 16)
    own = prior.score(variants[:, 1], cams, "a chair")
    assert own["nearest_variant"] == CATALOGUE["chair"].variant_names[1]
    assert own["mode_psnr"] == MAX_PSNR
    assert own["mode_psnr"] > own["blend_psnr"] + 10
    assert set(own["variant_psnr"]) == set(CATALOGUE["chair"].variant_names)
    blend = score_renders(variants.mean(1), cams, "chair")
    assert blend["blend_psnr"] == MAX_PSNR and blend["mode_psnr"] < blend["blend_psnr"]
    assert prior.evaluate("a chair, side view", variants[:, 0], cams)["nearest_variant"] == "wooden"


# -- mean-shift distillation on the oracle ----------------------------------------------------
def test_msd_posterior_kernel_moves_a_blend_toward_the_nearest_variant():
    prior = OraclePrior(OracleConfig(unconditional="none"))
    cams = _cams([20.0, 20.0], [30.0, 30.0], 16)
    cond = prior.condition(["a mushroom", "a mushroom"], cameras=cams)
    y = cond.cond["images"][0]  # (V, 3, 16, 16)
    x = (0.65 * y[0] + 0.35 * y[1]).expand(2, -1, -1, -1).contiguous()
    lam = 0.2 * float((y[0] - y[1]).norm())  # the product q(y|x) puts ~98% of its mass on y[0]
    msd = MSD(prior, MSDConfig(kernel="posterior", guidance_scale=1.0, samples=8, sampler_steps=8,
                               lambda_start=lam, lambda_end=lam))
    out = msd(x, cond, generator=torch.Generator().manual_seed(0))
    shift = (out.target - x).flatten(1)
    toward = (y[0] - x).flatten(1)
    cos = torch.nn.functional.cosine_similarity(shift, toward, dim=1)
    assert (cos > 0.9).all()
    assert ((out.target - y[0]).flatten(1).norm(dim=1) < 0.5 * toward.norm(dim=1)).all()
    # the exact mean shift (Tweedie at sigma = lambda) points the same way
    exact = prior.denoise(x, lam, cond) - x
    assert (torch.nn.functional.cosine_similarity(exact.flatten(1), toward, dim=1) > 0.99).all()


# -- shading (issue 8): the oracle shades its variants as the trainer shades a step -------------------------
def test_oracle_shades_its_variants_like_the_trainer_renders_them():
    """Lambertian / textureless variant renders match the volume renderer's shading of the same shape."""
    from msd3d.render.volume import RenderConfig, VolumeRenderer
    from msd3d.scene.background import Background, BackgroundConfig

    family = CATALOGUE["donut"]
    shape = family.shape(0)
    cams = turntable_cameras(2, 24, elevation=30.0)
    lights = torch.tensor([[0.0, 1.5, 1.0], [-1.0, 0.0, -1.0]])  # from the side / below: far from unlit
    renderer = VolumeRenderer(
        shape.field(beta=0.003),
        Background(BackgroundConfig(type="solid", color=(1.0, 1.0, 1.0))),
        RenderConfig(samples_per_ray=384, use_occupancy_grid="false", stratified=False),
    )
    prior = OraclePrior(OracleConfig(supersample=2, max_steps=64))
    for shading in ("lambertian", "textureless"):
        oracle = prior.render_family(family, cams, shading, lights)[:, 0]  # (B, 3, H, W)
        with torch.no_grad():
            nerf = renderer.render_image(cams, shading=shading, light_positions=lights).image()
        mse = float((oracle - nerf).pow(2).mean())
        assert -10 * math.log10(mse) > 24.0, shading
        unlit = prior.render_family(family, cams)[:, 0]
        assert float((oracle - unlit).pow(2).mean()) > 3 * mse  # the lighting is really there
    # "match" follows the step's shading; "albedo" keeps the old unlit payload
    lit = prior.condition(["a donut"] * 2, cameras=cams, shading="textureless", light_positions=lights).cond["images"]
    flat = OraclePrior(OracleConfig(shading="albedo", supersample=2, max_steps=64)).condition(
        ["a donut"] * 2, cameras=cams, shading="textureless", light_positions=lights
    ).cond["images"]
    assert torch.allclose(flat, prior.render_family(family, cams)) and not torch.allclose(lit, flat)


@pytest.mark.parametrize("unconditional", ["none", "all_families"])
def test_condition_many_equals_one_condition_per_request(unconditional):
    """issue 25: the oracle traces many steps' cameras in one batch; every request's condition is the
    same as its own ``condition()`` call, across shading modes, families and batch sizes, to float rounding
    (vectorised kernels round a tensor's tail differently; lit images take finite differences of the SDF)."""
    from msd3d.priors.base import ConditionRequest
    from msd3d.render.shading import ShadingConfig
    from msd3d.render.views import ViewStream

    prior = OraclePrior(OracleConfig(unconditional=unconditional, supersample=1, max_steps=16))
    camera = CameraConfig(batch_size=2)
    stream = ViewStream("a red mushroom", camera, ShadingConfig(albedo_only_steps=0), resolution=12, seed=3)
    views = stream.views(0, 6)
    assert len({v.shading for v in views}) > 1
    one_family = [["a red mushroom", "a red mushroom, side view"]] * 2
    mixed = [["a red mushroom"] * 2, ["a donut", "a donut, side view"]]
    for prompts in (one_family, mixed):
        requests = [
            ConditionRequest(prompts[i % 2], cameras=v.cameras, shading=v.shading, light_positions=v.light_positions)
            for i, v in enumerate(views)
        ]
        for request, batched in zip(requests, prior.condition_many(requests)):
            alone = prior.condition(
                request.prompts, cameras=request.cameras, shading=request.shading,
                light_positions=request.light_positions,
            )
            for branch in ("cond", "uncond"):
                a, b = getattr(batched, branch), getattr(alone, branch)
                assert (a is None) == (b is None)
                if a is not None:
                    assert a.keys() == b.keys()
                    for k in a:
                        assert torch.allclose(a[k], b[k], atol=1e-4, rtol=0), k
                        if k == "images" and request.shading == "albedo":
                            assert torch.equal(a[k], b[k]), "unlit images are exact"
            assert batched.prompts == alone.prompts and batched.batch_size == alone.batch_size


def test_view_stream_is_a_function_of_seed_and_step():
    from msd3d.render.shading import ShadingConfig
    from msd3d.render.views import ViewStream

    def stream(seed):
        return ViewStream("a mushroom", CameraConfig(batch_size=2), ShadingConfig(albedo_only_steps=2), 16, seed)

    a, b = stream(0), stream(0)
    late_first = b.view(7)
    in_order = a.views(0, 8)
    assert torch.equal(in_order[7].cameras.c2w, late_first.cameras.c2w)
    assert in_order[7].shading == late_first.shading and in_order[7].prompts == late_first.prompts
    assert [v.shading for v in in_order[:2]] == ["albedo", "albedo"]
    assert not torch.equal(in_order[3].cameras.c2w, in_order[4].cameras.c2w)
    assert not torch.equal(stream(1).view(7).cameras.c2w, late_first.cameras.c2w)
