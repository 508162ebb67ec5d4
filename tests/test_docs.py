"""The docs stay true: README.md is a short front door whose commands exist, docs/config.md holds the
generated config reference, and every relative link in README.md and docs/ points at a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

from msd3d.config_reference import BEGIN, CONFIG_PAGE, END, markdown, rows

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CONFIG_DOC = ROOT / CONFIG_PAGE
README_MAX_LINES = 220



def test_config_reference_is_current():
    text = CONFIG_DOC.read_text()
    assert BEGIN in text and END in text, f"{CONFIG_PAGE} lost its generated block's markers"
    block = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert block == markdown(), "run: python -m msd3d.config_reference --write"


def test_config_reference_rewrites_only_its_block(tmp_path):
    from msd3d.config_reference import update_page

    page = tmp_path / "config.md"
    page.write_text(f"# before\n\n{BEGIN}\nstale\n{END}\n\nafter\n")
    assert update_page(str(page)) is True
    assert page.read_text() == f"# before\n\n{markdown()}\n\nafter\n"
    assert update_page(str(page)) is False


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


def test_readme_is_a_front_door():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines (at most {README_MAX_LINES}): move the detail to a page in docs/ and link it"
    )


def _doc_pages() -> list[Path]:
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def _without_code(text: str) -> str:
    """The text outside fenced code blocks and inline code spans (links there are not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def _links(text: str) -> list[str]:
    return re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", _without_code(text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.M):
        slug = _slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def test_slug_matches_github():
    assert _slug("The main job: `msd3d generate`") == "the-main-job-msd3d-generate"
    assert _slug("Many GPUs and clusters: `msd3d batch FILE.yaml --ray ADDRESS`") == (
        "many-gpus-and-clusters-msd3d-batch-fileyaml---ray-address"
    )
    assert _slug("The report page: `msd3d report RUN_DIR|BATCH_ROOT`") == (
        "the-report-page-msd3d-report-run_dirbatch_root"
    )


def test_relative_links_point_at_existing_files():
    broken = []
    for page in _doc_pages():
        for target in _links(page.read_text()):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I):  # https:, mailto:, ...
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(ROOT)}: {target}"
            try:
                dest.relative_to(ROOT)
            except ValueError:
                broken.append(f"{where} (outside the repository)")
                continue
            if not dest.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{where} (no heading with anchor #{anchor})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_links_the_docs_pages():
    links = set(_links(README.read_text()))
    for page in ("docs/usage.md", "docs/config.md", "docs/design.md", "docs/results/README.md"):
        assert page in links, f"README.md does not link {page}"
