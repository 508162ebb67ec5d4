"""Side-by-side tables of two ``msd3d toy2d`` suites: the exact denoiser versus the learned one.

    M=sds,sdi,msd-posterior@1,msd-posterior@4,msd-posterior@16,msd-exp@1,msd-exp@4,msd-exp@16,\\
msd-exp-iv@1,msd-exp-iv@4,msd-exp-iv@16,msd-diffused@1,msd-diffused@4,msd-diffused@16
    msd3d toy2d --dataset all --methods $M --grid 16 --denoiser exact --out results/toy2d-exact
    msd3d toy2d --dataset all --methods $M --grid 16 --denoiser learned --out results/toy2d-learned
    python scripts/toy2d_compare.py results/toy2d-exact results/toy2d-learned > results/toy2d-compare.md

Per dataset: the learned denoiser's error by sigma; every method's particle metrics under both
denoisers; and MSD's gradient-estimation error against the exact mean shift (one product sample,
per bandwidth) under both.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def _load(folders: str) -> dict:
    """Results by dataset from comma-separated folders: suite folders (``--dataset all``), single-dataset
    folders, or folders of single-dataset subfolders."""
    out: dict = {}
    for folder in (Path(f) for f in folders.split(",") if f):
        candidates = [folder / "results.json", *sorted(folder.glob("*/results.json"))]
        for path in candidates:
            if not path.is_file():
                continue
            data = json.loads(path.read_text())
            found = {data["dataset"]["name"]: data} if "methods" in data else data
            for name, res in found.items():
                out.setdefault(name, res)
    return out


def _f(v, fmt: str) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)


def compare(exact: dict, learned: dict) -> str:
    out = []
    for name in [n for n in exact if n in learned]:
        e, lrn = exact[name], learned[name]
        out.append(f"## {name} (prompt {e['dataset']['prompt']!r}, {e['particles']} particles, "
                   f"λ {e['lambda_start']:.3g} → {e['lambda_end']:.3g})\n")
        info = lrn.get("denoiser") or {}
        if info.get("kind") == "learned":
            t = info["training"]
            rows = info["error_by_sigma"]
            out.append(f"Learned denoiser: {t['steps_run']} steps, {t['train_seconds']} s, "
                       f"final loss {t['final_loss']:.3g}.\n")
            out.append("| σ | " + " | ".join(f"{r['sigma']:.3g}" for r in rows) + " |")
            out.append("|---|" + "---|" * len(rows))
            out.append("| RMSE vs exact D | " + " | ".join(f"{r['rmse']:.3g}" for r in rows) + " |")
            out.append("| relative to RMS(D − z) | " + " | ".join(f"{r['rel_error']:.3g}" for r in rows) + " |\n")
        keys = (("nll", "NLL", "{:.2f}"), ("on_mode", "on-mode", "{:.0%}"), ("precision", "prec.", "{:.2f}"),
                ("recall", "recall", "{:.2f}"), ("mmd", "MMD²", "{:.4f}"))
        out.append("| method | " + " | ".join(f"{h} exact | {h} learned" for _, h, _ in keys) + " |")
        out.append("|---|" + "---|---|" * len(keys))
        for m in e["methods"]:
            if m not in lrn["methods"]:
                continue
            cells = []
            for k, _, fmt in keys:
                cells += [_f(e["methods"][m].get(k), fmt), _f(lrn["methods"][m].get(k), fmt)]
            out.append(f"| {m} | " + " | ".join(cells) + " |")
        ref = e["reference_metrics"]
        out.append("| (exact samples) | " + " | ".join(f"{_f(ref.get(k), fmt)} | –" for k, _, fmt in keys) + " |\n")
        # gradient estimation: MSD, one product sample, per bandwidth
        def msd_rows(res):
            return {(r["kernel"], r["sampler_steps"], round(r["lambda_factor"], 3)): r
                    for r in res["efficiency"] if r["method"] == "msd" and r["draws"] == 1}
        er, lr = msd_rows(e), msd_rows(lrn)
        if er:
            factors = sorted({k[2] for k in er})
            out.append("Relative error of MSD's estimate (1 product sample) against the exact mean shift "
                       "D_exact(x, λ) − x, at 32 random canvas points; λ in multiples of the median component width.\n")
            out.append("| kernel | steps | " + " | ".join(f"λ={f:g}× exact | λ={f:g}× learned" for f in factors) + " |")
            out.append("|---|---|" + "---|---|" * len(factors))
            for kernel, steps in sorted({k[:2] for k in er}):
                cells = []
                for f in factors:
                    cells += [_f(er.get((kernel, steps, f), {}).get("rel_error"), "{:.3f}"),
                              _f(lr.get((kernel, steps, f), {}).get("rel_error"), "{:.3f}")]
                out.append(f"| {kernel} | {steps} | " + " | ".join(cells) + " |")
            out.append("")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python scripts/toy2d_compare.py EXACT_DIR[,DIR...] LEARNED_DIR[,DIR...]")
    sys.stdout.write(compare(_load(sys.argv[1]), _load(sys.argv[2])))
