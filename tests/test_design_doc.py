"""docs/design.md exists, holds every section the code cites, and its code map matches the tree."""

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


def _section(text: str, title: str) -> str:
    """The body of the ``## title`` section of docs/design.md (up to the next ``## `` heading)."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert match, f"docs/design.md has no '## {title}' section"
    return match.group(1)


def _layout_tree() -> list[tuple[str, str]]:
    """(path of the entry, its description) for every entry of the code layout tree in docs/design.md.

    Entries start in column 0 (top-level folders) or 2 (inside ``msd3d/``); deeper-indented lines
    continue the description of the entry above."""
    body = _section((ROOT / "docs" / "design.md").read_text(), "Code layout")
    tree = re.search(r"^```\n(.*?)^```", body, flags=re.M | re.S)
    assert tree, "the Code layout section has no tree block"
    entries: list[tuple[str, str]] = []
    for line in tree.group(1).splitlines():
        indent = len(line) - len(line.lstrip())
        if not line.strip():
            continue
        if indent <= 2:
            name, _, description = line.strip().partition(" ")
            entries.append(("msd3d/" + name if indent == 2 else name, description))
        else:
            assert entries, f"a continuation line before any entry: {line!r}"
            entries[-1] = (entries[-1][0], entries[-1][1] + " " + line.strip())
    return entries


def _exists(path: str) -> bool:
    """``path`` (relative to the repository) exists; a ``foo`` or ``<name>`` file stands for any file of its folder."""
    parts = path.rstrip("/").split("/")
    if "<" in parts[-1] or re.fullmatch(r"foo(\.\w+)?", parts[-1]):
        parts = parts[:-1]
    return (ROOT.joinpath(*parts)).exists()


# file and folder names in a description: "mesh.py", "weights/", "batches/example.yaml"
_NAME = re.compile(r"(?<![\w./-])((?:[\w-]+/)*[\w-]+\.(?:py|md|yaml|json|toml)|(?:[\w-]+/)+)(?![\w/-])")


def test_code_layout_names_only_existing_paths():
    missing = []
    for entry, description in _layout_tree():
        if not _exists(entry):
            missing.append(entry)
        folder = entry if entry.endswith("/") else entry.rpartition("/")[0] + "/"
        for name in _NAME.findall(description):
            # a name in a description is relative to its entry's folder, else to msd3d/, else to the repository
            if not any(_exists(base + name) for base in (folder, "msd3d/", "")):
                missing.append(f"{name} (in the description of {entry})")
    assert not missing, f"docs/design.md's Code layout names paths that do not exist: {missing}"


def test_code_layout_lists_every_package():
    # "commands/<name>.py" lists the folder commands/
    listed = {re.sub(r"[^/]*<[^/]*$", "", entry) for entry, _ in _layout_tree()}
    packages = sorted(f"msd3d/{p.parent.name}/" for p in (ROOT / "msd3d").glob("*/__init__.py"))
    unlisted = [p for p in packages if p not in listed]
    assert not unlisted, f"packages missing from docs/design.md's Code layout: {unlisted}"


def test_where_things_go_names_only_existing_paths():
    body = _section((ROOT / "docs" / "design.md").read_text(), "Where things go")
    paths = [
        code
        for code in re.findall(r"`([^`\s]+)`", body)
        if "/" in code and not code.startswith(("-", "http")) and "(" not in code
    ]
    assert paths, "the Where things go section names no paths"
    missing = [p for p in paths if not any(_exists(base + p) for base in ("", "msd3d/"))]
    assert not missing, f"docs/design.md's Where things go names paths that do not exist: {missing}"
