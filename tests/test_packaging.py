"""What a non-editable install (``pip install msd3d``) ships: every subpackage, the recipes and the
learned prior's weights with their model card."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_subpackage_is_listed():
    listed = set(_setuptools()["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "msd3d").rglob("__init__.py")}
    assert on_disk <= listed, f"add {sorted(on_disk - listed)} to [tool.setuptools] packages in pyproject.toml"


def test_package_data_covers_the_shipped_weights_and_card():
    from fnmatch import fnmatch

    data = _setuptools()["package-data"]["msd3d.catalogue"]
    weights = ROOT / "msd3d" / "catalogue" / "weights"
    files = [p.relative_to(weights.parent).as_posix() for p in weights.iterdir()] if weights.is_dir() else []
    assert files, "msd3d/catalogue/weights/ holds the shipped learned prior"
    for name in files:
        assert any(fnmatch(name, pattern) for pattern in data), f"{name} is not in package-data"
