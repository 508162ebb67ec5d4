"""Import layering (issue 14): what each layer may import, checked on the source and on a fresh interpreter.

* ``render/`` and ``scene/`` know neither guidance nor Stable Diffusion;
* the trainer never imports diffusers (it sees priors only through ``DiffusionPrior``);
* ``cli.py``, ``commands/`` and ``registry.py`` import nothing heavy at module level, so ``msd3d --help``
  is instant (commands import their work inside the function).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "msd3d"


def imported_modules(path: Path, module_level_only: bool = False) -> set[str]:
    """Every module ``path`` imports (``from a.b import c`` counts as ``a.b`` and ``a.b.c``)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def _sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (PACKAGE / folder).rglob("*.py"))


@pytest.mark.parametrize("path", _sources("render", "scene"), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_render_and_scene_do_not_import_guidance_or_stable_diffusion(path):
    bad = {
        m
        for m in imported_modules(path)
        if m.startswith(("msd3d.guidance", "msd3d.priors.stable_diffusion", "diffusers", "transformers"))
    }
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize(
    "path", [PACKAGE / "cli.py", PACKAGE / "registry.py", *_sources("commands")], ids=lambda p: p.name
)
def test_commands_import_nothing_heavy_at_module_level(path):
    light = ("typer", "msd3d.commands", "msd3d.registry", "__future__")
    stdlib = set(sys.stdlib_module_names)
    heavy = {
        m
        for m in imported_modules(path, module_level_only=True)
        if not m.startswith(light) and m.split(".")[0] not in stdlib and m not in ("msd3d",)
    }
    assert not heavy, f"{path.name} imports {sorted(heavy)} at module level; import them inside the command"


def test_trainer_and_cli_do_not_load_heavy_modules():
    code = (
        "import sys, msd3d.cli; cli = {m for m in ('torch', 'diffusers', 'omegaconf') if m in sys.modules}; "
        "import msd3d.train, msd3d.scene_builder; "
        "print(sorted(cli), 'diffusers' in sys.modules, 'transformers' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[]", "False", "False"], result.stdout


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path) -> set[str]:
    """Imports at module level, including ``if TYPE_CHECKING:`` blocks (a type-only circle is still a circle)."""
    tree = ast.parse(path.read_text())
    nodes = list(tree.body)
    for node in tree.body:
        if isinstance(node, ast.If):
            nodes += node.body
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def test_no_module_level_import_circles():
    """No module of the package reaches itself through module-level imports (issue 24: config <-> scene_builder)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: {m for m in _top_level_imports(p) if m in modules and m != name} for name, p in modules.items()}
    circles = []
    for start in graph:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    circles.append(" -> ".join([*path, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert not circles, circles[:5]


@pytest.mark.parametrize(
    "path",
    [
        *_sources("priors", "guidance", "scene", "render", "export"),
        *(PACKAGE / name for name in ("train.py", "scene_builder.py", "config.py")),
    ],
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_the_product_does_not_import_the_test_instrument(path):
    """issue 24: the shape catalogue, its priors and scoring live in ``msd3d/catalogue/``; the prior interface,
    Stable Diffusion, guidance, scene, renderer, export and trainer never import it (the registry names its
    priors by string, the workflows and commands ask it for scores)."""
    bad = sorted(m for m in imported_modules(path) if m.startswith("msd3d.catalogue"))
    assert not bad, f"{path.relative_to(PACKAGE.parent)} imports {bad}"
