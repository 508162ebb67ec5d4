"""README.md stays true: its config reference is the generated one, its commands exist."""

from __future__ import annotations

import re
from pathlib import Path

from msd3d.config_reference import BEGIN, END, markdown, rows

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_config_reference_is_current():
    text = README.read_text()
    block = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert block == markdown(), "run: python -m msd3d.config_reference --write"


def test_every_setting_is_documented():
    undocumented = [key for key, _, doc in rows() if not doc and key not in ("prompt", "negative_prompt", "seed")]
    assert not undocumented, undocumented


def test_readme_commands_exist():
    from typer.main import get_command

    from msd3d.cli import app

    commands = set(get_command(app).commands)  # type: ignore[attr-defined]
    used = set(re.findall(r"^msd3d (\w[\w-]*)", README.read_text(), flags=re.M))
    assert used <= commands, used - commands


def test_ci_runs_the_readme_test_command():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "python -m pytest -q tests" in README.read_text().splitlines()
    assert ci.rstrip().splitlines()[-1] == "python -m pytest -q tests"


def test_readme_shows_the_run_directory_layout_of_run_dir():
    from msd3d.run_dir import RUN_LAYOUT

    assert RUN_LAYOUT in README.read_text(), "copy msd3d.run_dir.RUN_LAYOUT into README's Output layout block"
