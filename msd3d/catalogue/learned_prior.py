"""A trained catalogue prior (``prior.name: learned``): a small pixel-space diffusion UNet.

The rung between the exact oracle and Stable Diffusion (docs/design.md §5): the same catalogue of shapes,
but learned by a diffusers ``UNet2DConditionModel`` the way SD is, so that it has SD's failure modes
(inputs off its training distribution, classifier-free guidance) while its modes are still known.

* Data: catalogue renders (:meth:`~msd3d.catalogue.families.Family.render`) of every family and
  variant at random cameras in the trainer's ranges (:class:`~msd3d.render.cameras.CameraConfig`),
  each in one of the trainer's shading modes (albedo, or lambertian / textureless under a light drawn
  as the trainer draws it), as pixels in [-1, 1] at ``render_size``. The prompt does not name the
  shading, so like Stable Diffusion the prior holds every look of a prompt and a render is pulled
  towards the nearest one.
* Text: a word-level "text encoder" (:class:`WordTokenizer` + :class:`WordEncoder`): each known word
  (family names and synonyms, the variants' attribute words of :mod:`msd3d.catalogue.prompt_attributes`,
  DreamFusion's view words) is one learned token embedding, read by the UNet's cross-attention like
  CLIP tokens. Training prompts are "a [attribute words] <family>, <view> view", with a random subset
  of the variant's attribute words (none: the family's mixture) and the prompt dropped to "" with
  probability ``cond_dropout`` so that classifier-free guidance works.
* Noise: SD's scaled-linear DDPM schedule (1000 steps, beta 0.00085 .. 0.012), epsilon-prediction,
  min-SNR-gamma loss weighting (Hang et al. 2023: faster convergence for a small budget) and an
  exponential moving average of the weights, which is what is saved.
* Prior interface: the trained components go through :meth:`StableDiffusionPrior.from_components`
  with an identity "VAE" (:class:`PixelVAE`: data = 2 * image - 1), so sigma -> timestep mapping,
  the VP/VE conversion, CFG batching and prompt caching are SD's own code.

:func:`train_learned_prior` trains one (``scripts/train_learned_prior.py`` is its command line);
:func:`load_learned_prior` loads the safetensors file it writes.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from msd3d.catalogue.families import CATALOGUE, Family, match_family
from msd3d.catalogue.learned_prior_config import LearnedPriorConfig
from msd3d.catalogue.prompt_attributes import description_words, normalise_word, variant_attributes
from msd3d.priors.base import Condition
from msd3d.priors.stable_diffusion import StableDiffusionConfig, StableDiffusionPrior
from msd3d.render.cameras import VIEW_NAMES, CameraConfig, sample_cameras, view_name

FORMAT = "msd3d-learned-catalogue-prior"
#: SD's noise schedule (scaled-linear DDPM, epsilon-prediction), as a diffusers scheduler config.
SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "clip_sample": False,
}
PAD = "<pad>"


# -- text -----------------------------------------------------------------------------------------
def catalogue_vocabulary(catalogue: Mapping[str, Family] | None = None) -> list[str]:
    """Every word the learned prior reads: ``<pad>``, family words, attribute words, view words."""
    catalogue = CATALOGUE if catalogue is None else catalogue
    words: set[str] = set(VIEW_NAMES)
    for family in catalogue.values():
        for keyword in family.keywords:
            words |= description_words(keyword)
        for attrs in variant_attributes(family):
            words |= attrs
    return [PAD, *sorted(words - {PAD})]


class WordTokenizer:
    """Words -> ids in a fixed vocabulary (unknown and function words dropped; id 0 pads).

    Called like a transformers tokenizer (``padding``, ``max_length``, ``truncation``,
    ``return_tensors``), which is all :class:`StableDiffusionPrior` asks of one.
    """

    def __init__(self, vocabulary: Sequence[str], max_length: int = 12) -> None:
        self.vocabulary = list(vocabulary)
        self.ids = {w: i for i, w in enumerate(self.vocabulary)}
        self.model_max_length = max_length

    def encode(self, text: str) -> list[int]:
        import re

        out = []
        for raw in re.findall(r"[a-z]+", text.lower()):
            word = normalise_word(raw)
            if word in self.ids and word != PAD:
                out.append(self.ids[word])
        return out[: self.model_max_length]

    def __call__(self, texts: Sequence[str] | str, padding: Any = "max_length", max_length: int | None = None,
                 truncation: bool = True, return_tensors: str = "pt") -> SimpleNamespace:
        texts = [texts] if isinstance(texts, str) else list(texts)
        n = max_length or self.model_max_length
        ids = torch.zeros(len(texts), n, dtype=torch.long)
        mask = torch.zeros(len(texts), n, dtype=torch.long)
        for i, text in enumerate(texts):
            tok = self.encode(text)[:n]
            ids[i, : len(tok)] = torch.tensor(tok, dtype=torch.long)
            mask[i, : len(tok)] = 1
        return SimpleNamespace(input_ids=ids, attention_mask=mask)


class WordEncoder(nn.Module):
    """Token ids (B, L) -> embeddings (B, L, D): one learned vector per word plus a learned position
    vector, so the empty prompt (all ``<pad>``) is the unconditional embedding, as with CLIP."""

    def __init__(self, vocab_size: int, dim: int, max_length: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim)
        self.position = nn.Parameter(torch.zeros(max_length, dim))
        nn.init.normal_(self.embedding.weight, std=0.5)
        self.config = SimpleNamespace(use_attention_mask=False, max_position_embeddings=max_length)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> tuple[Tensor]:
        return (self.embedding(input_ids) + self.position[: input_ids.shape[1]],)


class PixelVAE(nn.Module):
    """The identity "VAE" of a pixel-space model: latents are the images in [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)  # gives .to() a dtype/device
        self.config = SimpleNamespace(block_out_channels=[3], latent_channels=3, scaling_factor=1.0, shift_factor=0.0)

    def encode(self, x: Tensor) -> SimpleNamespace:
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=x))

    def decode(self, z: Tensor) -> SimpleNamespace:
        return SimpleNamespace(sample=z)


# -- configuration --------------------------------------------------------------------------------
@dataclass
class LearnedPriorTrainConfig:
    """Architecture, data and optimisation of one learned catalogue prior."""

    render_size: int = 32
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    attention_head_dim: int = 8
    text_dim: int = 64
    max_words: int = 12
    families: tuple[str, ...] = ()
    """Families to learn (empty = the whole catalogue)."""
    views_per_variant: int = 64
    """Renders per variant (random cameras in ``camera``'s training ranges), made once up front."""
    steps: int = 2000
    batch: int = 32
    lr: float = 3e-4
    warmup_steps: int = 100
    """Linear learning-rate warm-up."""
    ema_decay: float = 0.999
    """Decay of the weights' exponential moving average (saved instead of the raw weights); 0 = off."""
    min_snr_gamma: float = 5.0
    """Loss weight ``min(SNR, gamma) / SNR`` per sample (epsilon-prediction); 0 = plain MSE."""
    shading_probs: tuple[float, float, float] = (0.5, 0.25, 0.25)
    """Share of albedo, lambertian and textureless renders in the data (the trainer draws all three)."""
    cond_dropout: float = 0.1
    max_attributes: int = 2
    """Training prompts carry 0 .. this many of the variant's attribute words."""
    max_seconds: float = 3600.0
    seed: int = 0
    camera: CameraConfig = field(default_factory=CameraConfig)
    camera_conditioning: bool = False
    """Also condition on the exact camera and look of each image (:func:`view_features`: pose, field of
    view, shading, light), added to the UNet's time embedding as MVDream does; False = text only, like SD."""

    def validate(self) -> None:
        if self.render_size < 8 or self.render_size % 2 ** (len(self.block_out_channels) - 1):
            raise ValueError("render_size must be at least 8 and divisible by the UNet's downsampling")
        if self.steps < 1 or self.batch < 1 or self.views_per_variant < 1 or self.lr <= 0:
            raise ValueError("steps, batch, views_per_variant and lr must be positive")
        if len(self.shading_probs) != 3 or min(self.shading_probs) < 0 or abs(sum(self.shading_probs) - 1) > 1e-6:
            raise ValueError(
                "shading_probs must be three non-negative shares (albedo, lambertian, textureless) summing to 1"
            )
        if not 0 <= self.ema_decay < 1 or self.min_snr_gamma < 0 or self.warmup_steps < 0:
            raise ValueError("ema_decay must be in [0, 1); min_snr_gamma and warmup_steps non-negative")
        if not 0 <= self.cond_dropout < 1:
            raise ValueError("cond_dropout must be in [0, 1)")
        unknown = [f for f in self.families if f not in CATALOGUE]
        if unknown:
            raise ValueError(f"unknown families {unknown}; choose from {', '.join(CATALOGUE)}")


def unet_kwargs(config: LearnedPriorTrainConfig) -> dict[str, Any]:
    """``UNet2DConditionModel`` arguments: cross-attention in every block but the first."""
    n = len(config.block_out_channels)
    return dict(
        sample_size=config.render_size,
        in_channels=3,
        out_channels=3,
        layers_per_block=config.layers_per_block,
        block_out_channels=tuple(config.block_out_channels),
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=config.text_dim,
        attention_head_dim=config.attention_head_dim,
        norm_num_groups=min(8, min(config.block_out_channels)),
        **(
            dict(class_embed_type="projection", projection_class_embeddings_input_dim=VIEW_FEATURES)
            if config.camera_conditioning else {}
        ),
    )


#: Length of :func:`view_features`' vectors.
VIEW_FEATURES = 12
_SHADINGS = ("albedo", "lambertian", "textureless")


def view_features(cameras: Any, shading: str | Sequence[str] | None = None, light_positions: Tensor | None = None,
                  camera_config: CameraConfig | None = None) -> Tensor:
    """(B, 12) what a camera-conditioned prior knows of each image besides the text: the camera's
    azimuth and elevation (sin, cos), distance and field of view (standardised over the training ranges),
    the shading mode (one-hot albedo / lambertian / textureless) and the light's direction from the
    origin (zeros when unlit). ``shading`` is one mode for the batch or one per image."""
    cfg = camera_config or CameraConfig()
    b = len(cameras)
    az, el = torch.deg2rad(cameras.azimuth.float().cpu()), torch.deg2rad(cameras.elevation.float().cpu())

    def standardise(value: Tensor, lo_hi: Sequence[float]) -> Tensor:
        lo, hi = float(lo_hi[0]), float(lo_hi[1])
        return (value.float().cpu() - 0.5 * (lo + hi)) / max(0.5 * (hi - lo), 1e-6)

    fovy = torch.rad2deg(cameras.fovy.float().cpu())
    modes = [shading or "albedo"] * b if shading is None or isinstance(shading, str) else list(shading)
    if len(modes) != b or any(m not in _SHADINGS for m in modes):
        raise ValueError(f"shading must be one of {_SHADINGS} (or one per image), got {shading!r}")
    one_hot = torch.zeros(b, 3)
    one_hot[torch.arange(b), torch.tensor([_SHADINGS.index(m) for m in modes])] = 1.0
    light = torch.zeros(b, 3)
    if light_positions is not None:
        lit = torch.tensor([m != "albedo" for m in modes])
        light[lit] = torch.nn.functional.normalize(light_positions.float().cpu(), dim=-1)[lit]
    return torch.cat([
        torch.stack([az.sin(), az.cos(), el.sin(), el.cos(),
                     standardise(cameras.distance, cfg.distance_range), standardise(fovy, cfg.fovy_range)], -1),
        one_hot, light,
    ], -1)


# -- the prior ------------------------------------------------------------------------------------
class LearnedCataloguePrior(StableDiffusionPrior):
    """A trained catalogue UNet through SD's code path; prompts must name a catalogue family, and
    finished runs are scored against the family's variants like the oracle's."""

    catalogue_families: tuple[str, ...] = ()
    metadata: dict[str, Any] = {}
    train_config: LearnedPriorTrainConfig | None = None

    @property
    def camera_conditioned(self) -> bool:
        return bool(self.train_config is not None and self.train_config.camera_conditioning)

    def condition(
        self,
        prompts: Sequence[str],
        *,
        negative_prompt: str = "",
        cameras: Any | None = None,
        shading: str | None = None,
        light_positions: Any | None = None,
        ambient_ratio: float = 0.1,
    ) -> Condition:
        """Text embeddings, and for a camera-conditioned prior ``{"text", "view"}`` payloads whose view
        features (:func:`view_features`) are the same in both CFG branches: guidance acts on the text only."""
        cond = super().condition(prompts, negative_prompt=negative_prompt, cameras=cameras)
        if not self.camera_conditioned:
            return cond
        if cameras is None:
            from msd3d.errors import Msd3dError

            raise Msd3dError("this learned prior is conditioned on the camera; pass the cameras to condition()")
        view = view_features(cameras, shading, light_positions, self.train_config.camera).to(
            device=self.device, dtype=self.model_dtype
        )
        return Condition(cond={"text": cond.cond, "view": view}, uncond={"text": cond.uncond, "view": view},
                         batch_size=cond.batch_size, prompts=cond.prompts, extrinsics=cond.extrinsics)

    def unet_conditioning(self, payload: Any) -> dict[str, Tensor]:
        if isinstance(payload, dict):
            return {
                "encoder_hidden_states": payload["text"].to(device=self.device, dtype=self.model_dtype),
                "class_labels": payload["view"].to(device=self.device, dtype=self.model_dtype),
            }
        return super().unet_conditioning(payload)

    def validate_prompt(self, prompt: str) -> None:
        family = match_family(prompt, prior="learned")
        if self.catalogue_families and family.name not in self.catalogue_families:
            from msd3d.errors import Msd3dError

            raise Msd3dError(
                f"the learned prior was trained on {', '.join(self.catalogue_families)}, not {family.name}; "
                "retrain it with that family (scripts/train_learned_prior.py --families)"
            )

    def evaluate(self, prompt: str, renders: Tensor, cameras: Any) -> dict[str, Any] | None:
        from msd3d.catalogue.oracle import score_renders

        return score_renders(renders, cameras, match_family(prompt))

    def evaluate_geometry(self, prompt: str, mesh: Any) -> dict[str, Any] | None:
        """The exported mesh against the nearest variant's true surface, as for the oracle."""
        from msd3d.catalogue.scoring import score_mesh_against_family

        return score_mesh_against_family(mesh, match_family(prompt))


def build_components(config: LearnedPriorTrainConfig, vocabulary: Sequence[str]) -> dict[str, Any]:
    """Fresh (randomly initialised) tokenizer, text encoder, UNet, VAE and scheduler config."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(config.seed)
    return {
        "tokenizer": WordTokenizer(vocabulary, config.max_words),
        "text_encoder": WordEncoder(len(vocabulary), config.text_dim, config.max_words),
        "unet": UNet2DConditionModel(**unet_kwargs(config)),
        "vae": PixelVAE(),
        "scheduler": dict(SCHEDULER_CONFIG),
    }


def prior_from_components(
    components: Mapping[str, Any], config: LearnedPriorTrainConfig, device: str | torch.device = "cpu",
    metadata: dict[str, Any] | None = None, timestep_mapping: str = "interp",
) -> LearnedCataloguePrior:
    """The prior interface over (trained) components; data are images in [-1, 1] at ``render_size``."""
    sd_config = StableDiffusionConfig(
        model="<learned catalogue prior>", dtype="fp32", render_size=config.render_size,
        timestep_mapping=timestep_mapping,
    )
    prior = LearnedCataloguePrior.from_components(config=sd_config, device=device, **components)
    prior.catalogue_families = tuple(config.families) or tuple(CATALOGUE)
    prior.metadata = dict(metadata or {})
    prior.train_config = config
    return prior


def save_learned_prior(path: Path | str, components: Mapping[str, Any], config: LearnedPriorTrainConfig,
                       metadata: Mapping[str, Any]) -> None:
    """UNet and text-encoder weights plus settings in one safetensors file (atomic)."""
    from safetensors.torch import save_file

    from msd3d.atomic_io import atomic_path

    tensors = {f"unet.{k}": v.detach().contiguous().cpu() for k, v in components["unet"].state_dict().items()}
    tensors.update(
        {f"text.{k}": v.detach().contiguous().cpu() for k, v in components["text_encoder"].state_dict().items()}
    )
    cfg = asdict(config)
    meta = {
        "format": FORMAT,
        "config": json.dumps(cfg),
        "vocabulary": json.dumps(components["tokenizer"].vocabulary),
        "scheduler": json.dumps(SCHEDULER_CONFIG),
        "metadata": json.dumps(dict(metadata)),
    }
    with atomic_path(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def _config_from_dict(data: Mapping[str, Any]) -> LearnedPriorTrainConfig:
    known = {f.name for f in fields(LearnedPriorTrainConfig)}
    kwargs = {k: v for k, v in data.items() if k in known and k != "camera"}
    for key in ("block_out_channels", "families", "shading_probs"):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    cam = data.get("camera") or {}
    kwargs["camera"] = CameraConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cam.items()})
    return LearnedPriorTrainConfig(**kwargs)


def build_learned_prior(config: LearnedPriorConfig, device: str | torch.device = "cpu") -> LearnedCataloguePrior:
    """The registry's factory for ``prior.name: learned``: the UNet at ``config.weights``."""
    return load_learned_prior(config.weights_path(), device=device, config=config)


def load_learned_prior(
    path: Path | str, device: str | torch.device = "cpu", config: LearnedPriorConfig | None = None
) -> LearnedCataloguePrior:
    """A prior saved by :func:`save_learned_prior`; :class:`~msd3d.errors.ModelLoadError` if unusable."""
    from safetensors import safe_open

    from msd3d.errors import ModelLoadError

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(
            f"no learned prior at {path}; train one with `python scripts/train_learned_prior.py --out {path.parent}` "
            "and set prior.learned.weights to its file"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise ModelLoadError(f"{path} is not a safetensors file ({err}); retrain it") from None
    if meta.get("format") != FORMAT:
        raise ModelLoadError(f"{path} is not a learned catalogue prior (no {FORMAT} metadata)")
    train_config = _config_from_dict(json.loads(meta["config"]))
    components = build_components(train_config, json.loads(meta["vocabulary"]))
    components["unet"].load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("unet.")})
    components["text_encoder"].load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("text.")})
    mapping = (config or LearnedPriorConfig()).timestep_mapping
    return prior_from_components(components, train_config, device, json.loads(meta.get("metadata", "{}")), mapping)


# -- training -------------------------------------------------------------------------------------
def family_nouns(family: Family) -> list[str]:
    """The family's name and the synonyms that name no single variant ("toadstool", not "fly agaric")."""
    attrs = set().union(*variant_attributes(family))
    return [k for k in family.keywords if not description_words(k) & attrs]


def training_prompt(family: Family, variant: int, view: str, rng: random.Random, max_attributes: int) -> str:
    """"a [attribute words] <family noun>, <view> view" with 0 .. max_attributes of the variant's words."""
    attrs = sorted(variant_attributes(family)[variant])
    k = rng.randint(0, min(max_attributes, len(attrs)))
    words = rng.sample(attrs, k)
    return f"a {' '.join(words + [rng.choice(family_nouns(family))])}, {view} view"


def render_dataset(config: LearnedPriorTrainConfig, on_family: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Renders of every variant at random training cameras, each in a shading mode drawn from
    ``shading_probs`` (lights drawn as the trainer draws them): images (N, 3, R, R) in [-1, 1] and,
    per image, its family, variant index, view name, shading and :func:`view_features` (N, 12)."""
    from msd3d.render.shading import ShadingConfig, sample_light_positions

    gen = torch.Generator().manual_seed(config.seed)
    names = list(config.families) or list(CATALOGUE)
    modes = ("albedo", "lambertian", "textureless")
    probs = torch.tensor(config.shading_probs, dtype=torch.float64)
    images, features, fams, variants, views, shadings = [], [], [], [], [], []
    cam_cfg = CameraConfig(**{**asdict(config.camera), "batch_size": config.views_per_variant})
    for name in names:
        family = CATALOGUE[name]
        for v in range(len(family)):
            cams = sample_cameras(cam_cfg, config.render_size, generator=gen)
            lights = sample_light_positions(cams, ShadingConfig(), generator=gen)
            mode_of = torch.multinomial(probs, len(cams), replacement=True, generator=gen)
            img = torch.empty(len(cams), 3, config.render_size, config.render_size)
            for m, mode in enumerate(modes):
                rows = (mode_of == m).nonzero().flatten()
                if len(rows):
                    look = {} if mode == "albedo" else {"shading": mode, "light_positions": lights[rows]}
                    img[rows] = family.render(cams[rows], variants=[v], supersample=2, **look)[:, 0]
            images.append(img * 2 - 1)
            features.append(view_features(cams, [modes[m] for m in mode_of.tolist()], lights, config.camera))
            fams += [name] * len(cams)
            variants += [v] * len(cams)
            views += [view_name(float(e), float(a)) for e, a in zip(cams.elevation.tolist(), cams.azimuth.tolist())]
            shadings += [modes[m] for m in mode_of.tolist()]
        if on_family is not None:
            on_family(name)
    return {"images": torch.cat(images), "view_features": torch.cat(features), "family": fams, "variant": variants,
            "view": views, "shading": shadings}


def train_learned_prior(
    config: LearnedPriorTrainConfig,
    on_step: Callable[[int, float], None] | None = None,
    on_family: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train the UNet and word embeddings with SD's objective; returns (components, metadata).

    Loss: ``w(t) |eps - eps_theta(sqrt(a_t) x + sqrt(1 - a_t) eps, t, text)|^2`` with ``t`` uniform on
    SD's 1000 scaled-linear steps and ``w = min(SNR, gamma) / SNR``. The returned UNet and encoder hold
    the weights' moving average. The metadata holds steps, wall time and the (unweighted) loss by sigma band.
    """
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    config.validate()
    t0 = time.perf_counter()
    data = render_dataset(config, on_family)
    render_seconds = time.perf_counter() - t0
    vocabulary = catalogue_vocabulary()
    comps = build_components(config, vocabulary)
    tokenizer, encoder, unet = comps["tokenizer"], comps["text_encoder"], comps["unet"]
    ddpm = DDPMScheduler.from_config(SCHEDULER_CONFIG)
    alphas = ddpm.alphas_cumprod.float()
    params = list(unet.parameters()) + list(encoder.parameters())
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(config.warmup_steps, 1)))
    ema = EMAModel(params, decay=config.ema_decay, use_ema_warmup=True, power=0.75) if config.ema_decay else None
    snr = alphas / (1 - alphas)
    rng = random.Random(config.seed)
    gen = torch.Generator().manual_seed(config.seed + 1)
    n = data["images"].shape[0]
    bands = [0.0, 0.1, 0.5, 1.0, 2.0, 5.0, float("inf")]
    band_sum = [0.0] * (len(bands) - 1)
    band_count = [0] * (len(bands) - 1)
    unet.train()
    encoder.train()
    t_train = time.perf_counter()
    steps_run, loss_value = 0, math.nan
    for step in range(config.steps):
        idx = torch.randint(0, n, (config.batch,), generator=gen)
        x0 = data["images"][idx]
        prompts = []
        for i in idx.tolist():
            if rng.random() < config.cond_dropout:
                prompts.append("")
            else:
                fam = CATALOGUE[data["family"][i]]
                prompts.append(training_prompt(fam, data["variant"][i], data["view"][i], rng, config.max_attributes))
        tokens = tokenizer(prompts)
        text = encoder(tokens.input_ids)[0]
        t = torch.randint(0, len(alphas), (config.batch,), generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        eps = torch.randn(x0.shape, generator=gen)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        extra = {"class_labels": data["view_features"][idx]} if config.camera_conditioning else {}
        pred = unet(xt, t, encoder_hidden_states=text, return_dict=False, **extra)[0]
        per_sample = (pred - eps).pow(2).flatten(1).mean(1)
        gamma = config.min_snr_gamma
        weight = snr[t].clamp(max=gamma) / snr[t] if gamma else torch.ones_like(per_sample)
        loss = (weight * per_sample).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        warmup.step()
        if ema is not None:
            ema.step(params)
        loss_value = float(loss.detach())
        steps_run = step + 1
        # loss by sigma over the second half of training (of the steps, or of the time limit if it stops first)
        if step >= config.steps // 2 or time.perf_counter() - t0 >= config.max_seconds / 2:
            sig = ((1 - a) / a).sqrt().flatten().tolist()
            for s, sample_loss in zip(sig, per_sample.detach().tolist()):
                b = next(j for j in range(len(bands) - 1) if s < bands[j + 1])
                band_sum[b] += sample_loss
                band_count[b] += 1
        if on_step is not None:
            on_step(step, loss_value)
        if time.perf_counter() - t0 > config.max_seconds:
            break
    if ema is not None:
        ema.copy_to(params)
    unet.eval()
    encoder.eval()
    metadata = {
        "images": n,
        "shading_counts": {m: data["shading"].count(m) for m in ("albedo", "lambertian", "textureless")},
        "families": list(config.families) or list(CATALOGUE),
        "render_seconds": round(render_seconds, 1),
        "train_seconds": round(time.perf_counter() - t_train, 1),
        "steps_run": steps_run,
        "final_loss": loss_value,
        "loss_by_sigma": [
            {"sigma_low": bands[j], "sigma_high": bands[j + 1] if math.isfinite(bands[j + 1]) else None,
             "eps_mse": band_sum[j] / band_count[j] if band_count[j] else None, "samples": band_count[j]}
            for j in range(len(bands) - 1)
        ],
    }
    return comps, metadata


@torch.no_grad()
def sample_quality(
    prior: StableDiffusionPrior, config: LearnedPriorTrainConfig, prompts_per_family: int = 4,
    steps: int = 20, guidance_scale: float = 3.0, seed: int = 0, grid_png: Path | None = None,
) -> dict[str, dict[str, float]]:
    """DDIM samples of "a <family>, <view> view" at random training cameras versus the family's
    variants at the same camera, per family: mode PSNR (to the nearest variant in the nearest look:
    albedo, or lambertian / textureless lit from the camera), blend PSNR (to the variants' average in
    that look) and the share of samples whose nearest look is albedo. With ``grid_png``, also writes
    an image: per family, a row of samples above a row of their nearest variants (4x upscaled)."""
    from msd3d.catalogue.oracle import psnr_from_mse
    from msd3d.render.shading import default_light_positions

    gen = torch.Generator().manual_seed(seed)
    cam_cfg = CameraConfig(**{**asdict(config.camera), "batch_size": prompts_per_family})
    out: dict[str, dict[str, float]] = {}
    rows_png: list[Tensor] = []
    for name in list(config.families) or list(CATALOGUE):
        family = CATALOGUE[name]
        cams = sample_cameras(cam_cfg, config.render_size, generator=gen)
        lights = default_light_positions(cams)
        looks = [family.render(cams, supersample=2)] + [
            family.render(cams, supersample=2, shading=mode, light_positions=lights)
            for mode in ("lambertian", "textureless")
        ]
        variants = torch.stack(looks, 1)  # (B, looks, V, 3, R, R) in [0, 1]
        prompts = [f"a {name}, {view_name(float(e), float(a))} view"
                   for e, a in zip(cams.elevation.tolist(), cams.azimuth.tolist())]
        cond = prior.condition(prompts, cameras=cams)  # albedo: what a camera-conditioned prior is asked for
        sigmas = prior.sigma_from_time(torch.linspace(0.98, 0.0, steps + 1)[:-1]).tolist() + [0.0]
        z = sigmas[0] * torch.randn(len(prompts), 3, config.render_size, config.render_size, generator=gen)
        for s, s_next in zip(sigmas[:-1], sigmas[1:]):
            d = prior.denoise(z, s, cond, guidance_scale)
            z = d + (s_next / s) * (z - d)
        images = prior.decode(z)[:, None, None]  # (B, 1, 1, 3, R, R)
        per_variant = (images - variants).pow(2).mean(dim=(3, 4, 5))  # (B, looks, V)
        best_per_look = per_variant.min(2).values  # (B, looks)
        look = best_per_look.argmin(1)  # (B,)
        rows = torch.arange(len(prompts))
        blend = (images[:, 0, 0] - variants.mean(2)[rows, look]).pow(2).mean(dim=(1, 2, 3))
        nearest = variants[rows, look, per_variant[rows, look].argmin(1)]  # (B, 3, R, R)
        rows_png += [torch.cat(list(images[:, 0, 0].clamp(0, 1)), -1), torch.cat(list(nearest), -1)]
        out[name] = {
            "mode_psnr": sum(psnr_from_mse(float(m)) for m in best_per_look.min(1).values) / len(prompts),
            "blend_psnr": sum(psnr_from_mse(float(m)) for m in blend) / len(prompts),
            "albedo_share": float((look == 0).float().mean()),
        }
    if grid_png is not None:
        _write_png(torch.cat(rows_png, -2), Path(grid_png), scale=4)
    return out


def _write_png(image: Tensor, path: Path, scale: int = 1) -> None:
    """(3, H, W) in [0, 1] -> an 8-bit PNG at ``path`` (nearest-neighbour upscaled), written atomically."""
    from PIL import Image

    from msd3d.atomic_io import atomic_path

    pixels = image.repeat_interleave(scale, -1).repeat_interleave(scale, -2)
    array = (pixels.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def preferred_variant(prior: StableDiffusionPrior, prompt: str, family: Family, cameras: Any,
                      sigma: float = 2.0, guidance_scale: float = 3.0, samples: int = 8, seed: int = 0) -> Tensor:
    """(V,) how often the one-step denoised estimate ``D(y_blend + sigma n)`` lies nearest each variant:
    which variant the prior prefers for ``prompt`` starting from the variants' blend."""
    gen = torch.Generator().manual_seed(seed)
    variants = family.render(cameras[:1], supersample=2)[0] * 2 - 1  # (V, 3, R, R) in [-1, 1]
    blend = variants.mean(0, keepdim=True).expand(samples, -1, -1, -1)
    z = blend + sigma * torch.randn(blend.shape, generator=gen)
    cond = prior.condition([prompt] * samples, cameras=cameras[torch.zeros(samples, dtype=torch.long)])
    d = prior.denoise(z, sigma, cond, guidance_scale)
    nearest = (d[:, None] - variants[None]).pow(2).flatten(2).sum(-1).argmin(1)
    return torch.bincount(nearest, minlength=len(family)).float() / samples


def attribute_prompts(family: Family, words: int = 2) -> list[str]:
    """Per variant, "a <up to ``words`` of its own attribute words> <family>" (words no other variant has)."""
    attrs = variant_attributes(family)
    prompts = []
    for v, own in enumerate(attrs):
        others = set().union(*(a for i, a in enumerate(attrs) if i != v))
        unique = sorted(own - others) or sorted(own)
        prompts.append(f"a {' '.join(unique[:words])} {family.name}")
    return prompts


@torch.no_grad()
def attribute_preference(prior: StableDiffusionPrior, families: Sequence[str], views: int = 2, samples: int = 16,
                         guidance_scale: float = 3.0) -> dict[str, dict[str, Any]]:
    """Per family: for each variant's attribute prompt (:func:`attribute_prompts`), the share of
    :func:`preferred_variant` on that variant (chance: 1 / variants), over ``views`` turntable cameras."""
    from msd3d.render.cameras import turntable_cameras

    size = prior.train_config.render_size if getattr(prior, "train_config", None) else 32
    cams = turntable_cameras(views, size)
    out: dict[str, dict[str, Any]] = {}
    for name in families:
        family = CATALOGUE[name]
        hits = {}
        for v, prompt in enumerate(attribute_prompts(family)):
            shares = [preferred_variant(prior, prompt, family, cams[i : i + 1], samples=samples,
                                        guidance_scale=guidance_scale, seed=i) for i in range(views)]
            hits[prompt] = float(torch.stack(shares).mean(0)[v])
        out[name] = {"prompts": hits, "mean_share": sum(hits.values()) / len(hits), "chance": 1 / len(family)}
    return out


__all__ = [
    "LearnedCataloguePrior",
    "LearnedPriorConfig",
    "LearnedPriorTrainConfig",
    "PixelVAE",
    "WordEncoder",
    "WordTokenizer",
    "attribute_preference",
    "attribute_prompts",
    "catalogue_vocabulary",
    "load_learned_prior",
    "preferred_variant",
    "prior_from_components",
    "sample_quality",
    "save_learned_prior",
    "train_learned_prior",
]
