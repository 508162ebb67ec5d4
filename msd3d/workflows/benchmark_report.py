"""What ``msd3d bench`` measured (:class:`MethodTiming` per method, :class:`BenchReport` per run) and the
table it prints (:func:`print_report`); the measuring is :mod:`msd3d.workflows.benchmark`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from msd3d.atomic_io import atomic_write_json


@dataclass
class MethodTiming:
    """One method's numbers (milliseconds unless named otherwise; memory in MiB, None on CPU)."""

    method: str
    ms_step: float
    """Median wall time of one full training step."""
    ms_step_mean: float
    ms_step_min: float
    it_per_s: float
    """Full steps per second, 1000 / ms_step (the median step time, as ms_step: the two always agree)."""
    ms_guidance: float
    """Median wall time of the guidance alone (denoiser work of one step)."""
    ms_guidance_min: float
    calls_per_step: float
    """Batched denoiser (UNet) calls per step (classifier-free guidance branches share one call)."""
    evaluations_per_step: float
    """Per-sample denoiser evaluations per step (a CFG call counts two per sample)."""
    peak_memory_mb: float | None
    """``torch.cuda.max_memory_allocated`` over this method's steps (weights included)."""
    peak_reserved_mb: float | None
    warmup_s: list[float]
    """Wall seconds of each warm-up step."""
    warmup_overhead_s: float
    """Sum over warm-up steps of their excess over the steady median (compile, autotune, grid fill)."""
    compile_s: float | None
    """``warmup_overhead_s`` when torch.compile is on, else None."""
    steps: int
    nonfinite_steps: int
    """Timed steps the trainer's guard skipped (random weights may overflow in fp16)."""
    settings: dict[str, Any] = field(default_factory=dict)
    """The method's cost-relevant settings (sampler steps, CFG scale, ...)."""


@dataclass
class BenchReport:
    """Everything ``msd3d bench`` prints and writes as JSON."""

    device: str
    device_name: str
    torch_version: str
    prior: dict[str, Any]
    settings: dict[str, Any]
    rows: list[MethodTiming]
    setup_s: dict[str, float] = field(default_factory=dict)
    """Seconds spent before timing: prior build, nerfacc kernel build/load."""

    def row(self, method: str) -> MethodTiming | None:
        return next((r for r in self.rows if r.method == method), None)

    def targets(self) -> dict[str, Any]:
        """The GPU speed targets of the project, checked against these numbers (None if not measured)."""
        sds, msd = self.row("sds"), self.row("msd")
        ratio = msd.ms_step / sds.ms_step if sds and msd and sds.ms_step > 0 else None
        peak_gb = msd.peak_memory_mb / 1024 if msd and msd.peak_memory_mb is not None else None
        return {
            "sds_ms_step": sds.ms_step if sds else None,
            "sds_step_at_most_40ms": None if sds is None else sds.ms_step <= 40.0,
            "msd_over_sds": ratio,
            "msd_at_most_3x_sds": None if ratio is None else ratio <= 3.0,
            "msd_7000_steps_minutes": None if msd is None else 7000 * msd.ms_step / 60000.0,
            "msd_peak_memory_gb": peak_gb,
            "msd_peak_memory_at_most_16gb": None if peak_gb is None else peak_gb <= 16.0,
        }

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["targets"] = self.targets()
        return data

    def write_json(self, path: Path | str) -> Path:
        path = Path(path)
        atomic_write_json(path, self.to_dict())
        return path





# ------------------------------------------------------------------------------------------------
# output


def table_rows(report: BenchReport) -> list[list[str]]:
    """The printed table, as strings: one row per method."""

    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None or not math.isfinite(value) else format(value, fmt)

    body = []
    for r in report.rows:
        body.append(
            [
                r.method,
                num(r.ms_step, ".1f"),
                num(r.it_per_s, ".2f"),
                num(r.ms_guidance, ".1f"),
                f"{r.calls_per_step:g} ({r.evaluations_per_step:g} evals)",
                num(r.peak_memory_mb, ".0f"),
                num(r.compile_s, ".1f"),
            ]
            + ([str(r.nonfinite_steps)] if any(x.nonfinite_steps for x in report.rows) else [])
        )
    return body


TABLE_HEADER = ["method", "ms/step (full)", "it/s", "ms guidance alone", "denoiser calls/step", "peak GPU MB",
                "compile s"]


def table_title(report: BenchReport) -> str:
    s, p = report.settings, report.prior
    weights = p.get("weights", p.get("class", "prior"))
    extras = []
    on_cuda = report.device.startswith("cuda")
    if s.get("compile"):
        extras.append(f"compiled UNet ({s.get('compile_mode')})" if on_cuda else "--compile ignored off CUDA")
    if s.get("compile_vae"):
        extras.append("compiled VAE" if on_cuda else "--compile-vae ignored off CUDA")
    if s.get("channels_last"):
        extras.append("channels-last")
    dtype = f" ({p['model_dtype']})" if "model_dtype" in p else ""
    render = f", VAE input {p['render_size']}px" if "render_size" in p else ""
    return (
        f"msd3d bench: {weights}{dtype} on {report.device_name}; {s['resolution']}x{s['resolution']} renders{render}, "
        f"batch {s['batch']}, {s['steps']} timed steps after {s['warmup']} warm-up"
        + (f"; {', '.join(extras)}" if extras else "")
    )


def print_report(report: BenchReport, console: Any | None = None) -> None:
    """A rich table of ``report`` (plus the setup times and the GPU targets when on CUDA)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    header = TABLE_HEADER + (["non-finite"] if any(r.nonfinite_steps for r in report.rows) else [])
    table = Table(title=table_title(report), title_justify="left")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right")
    for line in table_rows(report):
        table.add_row(*line)
    console.print(table)
    setup = ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v:.1f} s" for k, v in report.setup_s.items())
    if setup:
        console.print(f"setup: {setup}")
    for method, reason in (report.settings.get("skipped_methods") or {}).items():
        console.print(f"skipped {method}: {reason}")
    t = report.targets()
    if report.device.startswith("cuda") and t["sds_ms_step"] is not None:
        parts = [f"SDS step {t['sds_ms_step']:.1f} ms (target <= 40)"]
        if t["msd_over_sds"] is not None:
            parts.append(f"MSD/SDS {t['msd_over_sds']:.2f}x (target <= 3)")
        if t["msd_peak_memory_gb"] is not None:
            parts.append(f"MSD peak {t['msd_peak_memory_gb']:.1f} GB (target <= 16)")
        console.print("targets: " + "; ".join(parts))

