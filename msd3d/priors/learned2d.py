"""A trained denoiser for low-dimensional mixtures: the paper's "learned 2-D denoiser" setting.

Every exact prior forgives what a trained network does not: inputs far from anything it was trained
on (the posterior kernel feeds the denoiser ``z_eff``, almost clean data labelled with noise level
``~lambda``). This module trains a small MLP ``D_theta(z, sigma, class)`` on samples of an exact
:class:`~msd3d.priors.gmm.GaussianMixturePrior` and wraps it in the same
:class:`~msd3d.priors.base.DiffusionPrior` interface, so every guidance method runs on it unchanged
and can be scored against the exact mixture it imitates.

Training (Karras et al. 2022, "EDM"):

* preconditioning ``D = mu + c_skip (z - mu) + c_out F(c_in (z - mu), c_noise, class)`` with
  ``c_skip = s_d^2 / (sigma^2 + s_d^2)``, ``c_out = sigma s_d / sqrt(sigma^2 + s_d^2)``,
  ``c_in = 1 / sqrt(sigma^2 + s_d^2)``, ``c_noise = log(sigma) / 4``; ``mu`` and ``s_d`` are the
  data's mean and standard deviation;
* EDM's loss weight ``(sigma^2 + s_d^2) / (sigma s_d)^2``, i.e. a plain MSE on ``F``'s target;
* sigma drawn log-uniformly over ``[sigma_min, sigma_max]``, which is wider than EDM's log-normal
  on purpose: MSD's samplers query the denoiser from SD's largest sigma (14.6) down to the smallest
  kernel bandwidth (about 0.01 on the fractal), and every one of those must have been trained;
* classes drawn from the mixture, replaced by a "null" class with probability ``cond_dropout`` so
  that the unconditional branch (the prompt "") exists and classifier-free guidance works.

Weights and their settings are stored together in one safetensors file (:meth:`save` / :meth:`load`).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from msd3d.priors.base import Condition, DiffusionPrior
from msd3d.priors.gmm import GaussianMixturePrior
from msd3d.priors.schedule import VPSchedule

FORMAT_VERSION = "1"


@dataclass
class Denoiser2DConfig:
    """Architecture and training settings of the learned mixture denoiser."""

    hidden: int = 128
    """Width of each hidden layer."""
    layers: int = 4
    """Hidden layers (SiLU, residual after the first)."""
    position_frequencies: int = 6
    """Sine/cosine features of the preconditioned input at frequencies 2^0 .. 2^(n-1) (0 = none);
    they let a small MLP resolve ridges much thinner than the canvas."""
    noise_frequencies: int = 8
    """Sine/cosine features of ``c_noise``."""
    class_dim: int = 16
    """Class-embedding size."""
    steps: int = 4000
    batch: int = 1024
    lr: float = 1e-2
    """Adam learning rate, cosine-decayed to 1 % over the run (by steps or by ``max_seconds``,
    whichever ends it first, so a run cut short by the clock still anneals)."""
    sigma_min: float = 2e-3
    sigma_max: float = 30.0
    cond_dropout: float = 0.1
    max_seconds: float = 120.0
    """Training stops early when it has run this long (the issue's budget per dataset)."""
    seed: int = 0

    def validate(self) -> None:
        if self.hidden < 1 or self.layers < 1 or self.class_dim < 1:
            raise ValueError("denoiser hidden, layers and class_dim must be at least 1")
        if self.position_frequencies < 0 or self.noise_frequencies < 1:
            raise ValueError("denoiser position_frequencies must be >= 0 and noise_frequencies >= 1")
        if self.steps < 1 or self.batch < 1 or self.lr <= 0 or self.max_seconds <= 0:
            raise ValueError("denoiser steps, batch, lr and max_seconds must be positive")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError("denoiser needs 0 < sigma_min < sigma_max")
        if not 0 <= self.cond_dropout < 1:
            raise ValueError("denoiser cond_dropout must be in [0, 1)")


def _fourier(x: Tensor, frequencies: int) -> Tensor:
    """(N, D) -> (N, 2 D F) sines and cosines at frequencies 2^0 .. 2^(F-1) (times pi)."""
    freqs = math.pi * 2.0 ** torch.arange(frequencies, dtype=x.dtype, device=x.device)  # (F,)
    angles = (x[..., None] * freqs).flatten(-2)  # (N, D F)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class MixtureDenoiserNet(nn.Module):
    """``F(c_in z, c_noise, class)``: an MLP with Fourier features and a learned class embedding.

    Classes are ``0 .. num_classes - 1``; index ``num_classes`` is the null (unconditional) class.
    """

    def __init__(self, dim: int, num_classes: int, config: Denoiser2DConfig) -> None:
        super().__init__()
        self.dim = dim
        self.num_classes = num_classes
        self.position_frequencies = config.position_frequencies
        self.noise_frequencies = config.noise_frequencies
        self.class_embedding = nn.Embedding(num_classes + 1, config.class_dim)
        width = dim * (1 + 2 * config.position_frequencies) + 2 * config.noise_frequencies + config.class_dim
        self.input = nn.Linear(width, config.hidden)
        self.hidden = nn.ModuleList(nn.Linear(config.hidden, config.hidden) for _ in range(config.layers - 1))
        self.output = nn.Linear(config.hidden, dim)
        nn.init.zeros_(self.output.weight)  # start at D = c_skip z: the Gaussian-data denoiser
        nn.init.zeros_(self.output.bias)

    def forward(self, z_in: Tensor, c_noise: Tensor, labels: Tensor) -> Tensor:
        """z_in: (N, D) preconditioned input; c_noise: (N,); labels: (N,) long -> (N, D)."""
        feats = [z_in, _fourier(c_noise[:, None], self.noise_frequencies), self.class_embedding(labels)]
        if self.position_frequencies:
            feats.insert(1, _fourier(z_in, self.position_frequencies))
        h = nn.functional.silu(self.input(torch.cat(feats, dim=-1)))
        for layer in self.hidden:
            h = h + nn.functional.silu(layer(h))
        return self.output(h)


class LearnedMixturePrior(DiffusionPrior):
    """A trained denoiser in the :class:`DiffusionPrior` interface of the mixture it learned.

    Prompts are the mixture's class names; "" (and the negative prompt) is the null class, the
    unconditional model. The condition payload is a (B,) tensor of class indices.
    """

    def __init__(
        self,
        net: MixtureDenoiserNet,
        class_names: Sequence[str],
        data_mean: Tensor,
        sigma_data: float,
        config: Denoiser2DConfig,
        metadata: dict[str, Any] | None = None,
        schedule: VPSchedule | None = None,
    ) -> None:
        super().__init__()
        self.net = net.eval()
        self.class_names = list(class_names)
        self.dim = net.dim
        self.data_mean = data_mean.float().reshape(self.dim)  # (D,)
        self.sigma_data = float(sigma_data)
        self.config = config
        self.metadata = dict(metadata or {})
        self.schedule = schedule or VPSchedule.scaled_linear()

    # -- conditioning --------------------------------------------------------------------------
    def class_index(self, prompt: str) -> int:
        """The class a prompt names (null class for "")."""
        prompt = prompt.strip()
        if not prompt:
            return len(self.class_names)
        if prompt not in self.class_names:
            known = ", ".join(self.class_names) or "none (this denoiser is unconditional)"
            raise ValueError(f"unknown class {prompt!r}; classes: {known}")
        return self.class_names.index(prompt)

    def condition(
        self, prompts: Sequence[str], *, negative_prompt: str = "", cameras: Any | None = None
    ) -> Condition:
        cond = torch.tensor([self.class_index(p) for p in prompts], dtype=torch.long)
        uncond = torch.full_like(cond, self.class_index(negative_prompt))
        return Condition(cond=cond, uncond=uncond, batch_size=len(prompts), prompts=list(prompts))

    # -- denoising -----------------------------------------------------------------------------
    def preconditioned(self, z: Tensor, sigma: Tensor, labels: Tensor) -> Tensor:
        """EDM-preconditioned denoiser with gradients (training and inference share it).

        z: (N, D) float32; sigma: (N,); labels: (N,) long -> (N, D).
        """
        sd2 = self.sigma_data**2
        s2 = sigma[:, None] ** 2
        c_skip = sd2 / (s2 + sd2)
        c_out = sigma[:, None] * self.sigma_data / (s2 + sd2).sqrt()
        c_in = 1.0 / (s2 + sd2).sqrt()
        centred = z - self.data_mean
        f = self.net(c_in * centred, sigma.log() / 4, labels)
        return self.data_mean + c_skip * centred + c_out * f

    def denoise_raw(self, z: Tensor, sigma: Tensor, payload: Tensor) -> Tensor:
        with torch.no_grad():
            d = self.preconditioned(z.float(), sigma.float().clamp_min(1e-8), payload.to(z.device))
        return d.to(z.dtype)

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: Path | str) -> None:
        """Weights, settings and provenance in one safetensors file, written atomically."""
        from safetensors.torch import save_file

        from msd3d.atomic_io import atomic_path

        tensors = {f"net.{k}": v.detach().contiguous() for k, v in self.net.state_dict().items()}
        tensors["data_mean"] = self.data_mean.contiguous()
        meta = {
            "format": "msd3d-learned-mixture-denoiser",
            "version": FORMAT_VERSION,
            "dim": str(self.dim),
            "class_names": json.dumps(self.class_names),
            "sigma_data": repr(self.sigma_data),
            "config": json.dumps(asdict(self.config)),
            "metadata": json.dumps(self.metadata),
        }
        with atomic_path(Path(path)) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: Path | str) -> LearnedMixturePrior:
        """A denoiser written by :meth:`save`; ValueError if the file is not one."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != "msd3d-learned-mixture-denoiser":
                raise ValueError(f"{path} is not a learned mixture denoiser (no msd3d metadata)")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        known = {f.name for f in fields(Denoiser2DConfig)}
        config = Denoiser2DConfig(**{k: v for k, v in json.loads(meta["config"]).items() if k in known})
        class_names = json.loads(meta["class_names"])
        net = MixtureDenoiserNet(int(meta["dim"]), len(class_names), config)
        net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        return cls(net, class_names, tensors["data_mean"], float(meta["sigma_data"]), config,
                   json.loads(meta.get("metadata", "{}")))


# -- training -------------------------------------------------------------------------------------
def mixture_fingerprint(prior: GaussianMixturePrior) -> str:
    """A short hash of a mixture's parameters (a saved denoiser is reused only for the same mixture)."""
    h = hashlib.sha256()
    for t in (prior.means, prior.covs, prior.weights):
        h.update(t.double().contiguous().numpy().tobytes())
    h.update(json.dumps(prior.class_names).encode())
    if prior.labels is not None:
        h.update(prior.labels.numpy().tobytes())
    return h.hexdigest()[:16]


class _MixtureSampler:
    """Exact joint samples ``(y, class)`` of a mixture."""

    def __init__(self, prior: GaussianMixturePrior) -> None:
        self.weights = prior.weights.float()
        self.means = prior.means.float()
        self.chol = torch.linalg.cholesky(prior.covs).float()
        k = prior.num_components
        self.labels = prior.labels if prior.labels is not None else torch.zeros(k, dtype=torch.long)
        self.num_classes = len(prior.class_names) if prior.labels is not None else 0

    def __call__(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.means.shape[1], 1, generator=generator)
        y = self.means[comp] + (self.chol[comp] @ eps).squeeze(-1)
        labels = self.labels[comp] if self.num_classes else torch.zeros(n, dtype=torch.long)
        return y, labels


def train_mixture_denoiser(
    prior: GaussianMixturePrior,
    config: Denoiser2DConfig | None = None,
    on_step: Callable[[int, float], None] | None = None,
    metadata: dict[str, Any] | None = None,
) -> LearnedMixturePrior:
    """Train ``D_theta`` on exact samples of ``prior`` (see the module docstring for the recipe).

    ``on_step(step, loss)`` is called after every step. The result's ``metadata`` records the steps
    run, the wall time, the final loss and the mixture's fingerprint.
    """
    config = config or Denoiser2DConfig()
    config.validate()
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    sampler = _MixtureSampler(prior)
    class_names = list(prior.class_names) if prior.labels is not None else []
    probe, _ = sampler(20000, generator)
    data_mean = probe.mean(0)
    sigma_data = float((probe - data_mean).pow(2).sum(1).mean().div(prior.dim).sqrt())
    net = MixtureDenoiserNet(prior.dim, len(class_names), config)
    model = LearnedMixturePrior(net, class_names, data_mean, sigma_data, config)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    log_lo, log_hi = math.log(config.sigma_min), math.log(config.sigma_max)
    null = len(class_names)
    t0 = time.perf_counter()
    loss_value = math.nan
    steps_run = 0
    for step in range(config.steps):
        done = min(max(step / config.steps, (time.perf_counter() - t0) / config.max_seconds), 1.0)
        for group in opt.param_groups:
            group["lr"] = config.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * done)))
        y, labels = sampler(config.batch, generator)
        drop = torch.rand(config.batch, generator=generator) < config.cond_dropout
        labels = torch.where(drop, torch.full_like(labels, null), labels)
        sigma = (log_lo + (log_hi - log_lo) * torch.rand(config.batch, generator=generator)).exp()
        z = y + sigma[:, None] * torch.randn(y.shape, generator=generator)
        d = model.preconditioned(z, sigma, labels)
        # EDM weight (sigma^2 + s_d^2) / (sigma s_d)^2 = 1 / c_out^2: a unit-scale loss on F
        weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
        loss = (weight[:, None] * (d - y) ** 2).sum(1).mean() / prior.dim
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_value = float(loss.detach())
        steps_run = step + 1
        if on_step is not None:
            on_step(step, loss_value)
        if time.perf_counter() - t0 > config.max_seconds:
            break
    net.eval()
    model.metadata = {
        **(metadata or {}),
        "steps_run": steps_run,
        "train_seconds": round(time.perf_counter() - t0, 2),
        "final_loss": loss_value,
        "mixture_fingerprint": mixture_fingerprint(prior),
    }
    return model


def denoiser_error(
    exact: GaussianMixturePrior,
    learned: DiffusionPrior,
    sigmas: Sequence[float],
    prompt: str = "",
    samples: int = 2048,
    generator: torch.Generator | None = None,
) -> list[dict[str, float]]:
    """The learned denoiser's error against the exact one at each sigma, on ``z = y + sigma n`` with
    ``y`` exact samples of the prompt's distribution.

    Per sigma: ``rmse = sqrt(mean |D_theta - D|^2)`` (data units) and ``rel_error = rmse /
    sqrt(mean |D - z|^2)``, the error relative to the exact denoising correction, which is also the
    relative error of the score ``(D - z) / sigma^2``.
    """
    generator = generator or torch.Generator().manual_seed(0)
    y = exact.sample(samples, generator, prompt=prompt).double()
    cond_exact = exact.condition([prompt] * samples)
    cond_learned = learned.condition([prompt] * samples)
    rows = []
    for sigma in sigmas:
        z = y + float(sigma) * torch.randn(y.shape, generator=generator, dtype=torch.float64)
        d_exact = exact.denoise(z, float(sigma), cond_exact)
        d_learned = learned.denoise(z, float(sigma), cond_learned).double()
        rmse = float((d_learned - d_exact).pow(2).sum(1).mean().sqrt())
        correction = float((d_exact - z).pow(2).sum(1).mean().sqrt())
        rows.append({"sigma": float(sigma), "rmse": rmse, "rel_error": rmse / max(correction, 1e-30)})
    return rows
