"""Vertical cross-sections (the y = 0 plane) of oracle-bench meshes against the true variant.

For each family, the run's checkpoint is exported three times: by the silhouette level alone
(``mesh.fringe_transmittance: 1``, ``mesh.fringe_skin: 0``), with the see-through fringe carved by
transmittance only (``fringe_skin: 0``), and by the run's own mesh settings (the oracle recipes add
``fringe_skin: 0.02``); the sections are drawn over the nearest true variant's. One PNG, one panel
per family:

    python scripts/mesh_sections.py results/oracle_bench --families table,mug,donut,house \
        --out docs/images/geometry_sections.png
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bench_dir", type=Path, help="an --out folder of scripts/oracle_bench.py")
    p.add_argument("--families", default="table,mug,donut,house", help="comma-separated families")
    p.add_argument("--method", default="msd", help="whose runs: <family>-<method> folders (default msd)")
    p.add_argument("--out", type=Path, default=Path("geometry_sections.png"), help="the PNG to write")
    args = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from msd3d.atomic_io import atomic_path
    from msd3d.catalogue.scoring import true_surface
    from msd3d.export.mesh import extract_mesh
    from msd3d.workflows.assets import load_trained_renderer

    families = [f for f in args.families.split(",") if f]
    fig, axes = plt.subplots(1, len(families), figsize=(4 * len(families), 4.5), squeeze=False)
    for ax, family in zip(axes[0], families):
        run = args.bench_dir / f"{family}-{args.method}"
        variant = json.loads((run / "summary.json").read_text())["scores"]["geometry"]["nearest_variant"]
        config, renderer, _ = load_trained_renderer(run)
        meshes = [
            (true_surface(family, variant), "k", f"true ({variant})"),
            (extract_mesh(renderer.field, dataclasses.replace(config.mesh, fringe_transmittance=1.0, fringe_skin=0.0)),
             "tab:red", "silhouette level only"),
            (extract_mesh(renderer.field, dataclasses.replace(config.mesh, fringe_skin=0.0)),
             "tab:orange", "fringe carved, transmittance only"),
            (extract_mesh(renderer.field, config.mesh), "tab:blue", f"the run's (skin {config.mesh.fringe_skin:g})"),
        ]
        for mesh, colour, label in meshes:
            section = mesh.section(plane_origin=[0.0, 0.0, 0.0], plane_normal=[0.0, 1.0, 0.0])
            for i, line in enumerate([] if section is None else section.discrete):
                ax.plot(line[:, 0], line[:, 2], color=colour, lw=1.2, label=label if i == 0 else None)
        ax.set_aspect("equal")
        ax.set_title(f"{family}-{args.method}, y = 0 section (x right, z up)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
