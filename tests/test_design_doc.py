"""docs/design.md exists and holds every section the code cites."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_cited_design_section_exists():
    design = (ROOT / "docs" / "design.md").read_text()
    sections = set(re.findall(r"^## (\d+)\.", design, flags=re.M))
    cited: dict[str, set[str]] = {}
    for path in [*ROOT.glob("msd3d/**/*.py"), *ROOT.glob("configs/*.yaml"), *ROOT.glob("scripts/*.py")]:
        for number in re.findall(r"design\.md §(\d+)", path.read_text()):
            cited.setdefault(number, set()).add(str(path.relative_to(ROOT)))
    assert cited, "no code cites docs/design.md"
    missing = {n: sorted(files) for n, files in cited.items() if n not in sections}
    assert not missing, f"cited sections missing from docs/design.md: {missing}"


def test_no_code_cites_the_old_design_file():
    stale = [
        str(p.relative_to(ROOT))
        for p in [*ROOT.glob("msd3d/**/*.py"), *ROOT.glob("configs/*.yaml"), *ROOT.glob("scripts/*.py")]
        if re.search(r"(?<!docs/)DESIGN(\.md)? §", p.read_text())
    ]
    assert not stale, f"these cite DESIGN.md, which is not in the repository; cite docs/design.md: {stale}"
