"""README.md and docs/*.md: every relative link and image points at a file (and heading) that exists, the README
stays one screen of first steps (<= 12 KB), and its test command is the one .ci/run executes."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_LIMIT = 12 * 1024
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (not - or _), spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", text, re.M)}


def broken_links(path: Path) -> list[str]:
    """Each relative link of ``path`` whose file or ``#anchor`` does not exist, as ``file: target``."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)  # code spans are not links
    bad = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists() or (anchor and dest.suffix == ".md" and anchor not in anchors(dest)):
            bad.append(f"{path.relative_to(ROOT)}: {target}")
    return bad


def test_docs_links_resolve() -> None:
    """Every relative link and image in README.md and docs/*.md resolves, anchors included."""
    bad = [line for doc in documents() for line in broken_links(doc)]
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_link_checker_catches_a_broken_link(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checker itself fails on a missing file and on a missing heading, and passes a good link."""
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "usage.md").write_text("# Usage\n## The run directory\n", encoding="utf-8")
    doc = tmp_path / "README.md"
    doc.write_text("[a](docs/usage.md#the-run-directory) [b](docs/nope.md) [c](docs/usage.md#nope) "
                   "[d](https://example.org/x) `[e](not/a/link.md)`\n", encoding="utf-8")
    assert broken_links(doc) == ["README.md: docs/nope.md", "README.md: docs/usage.md#nope"]


def test_readme_is_one_screen_of_first_steps() -> None:
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes; move reference material to docs/"


def readme_commands() -> list[str]:
    """The ``bash`` lines of README.md's first section (the two newcomer commands)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first = text.split("\n## ", 2)[1]
    return [line for block in re.findall(r"```bash\n(.*?)```", first, re.S) for line in block.splitlines()]


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run executes README's test command word for word, and README's demo command runs the demo."""
    commands = readme_commands()
    assert len(commands) == 2, commands
    demo, tests = commands
    assert shlex.split(demo)[-2:] == [".venv/bin/cvkeras", "demo"]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert tests in ci.splitlines(), f".ci/run does not run README's test command: {tests}"


def test_architecture_lists_every_module_once_under_its_folder():
    """docs/architecture.md gives one line per module; a module added, moved or removed without it fails here."""
    listed, folder = set(), None
    for line in (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8").splitlines():
        if m := re.match(r"\*\*`([\w/]+)/`\*\*", line):
            folder = m.group(1)
        elif (m := re.match(r"- `(\w+\.py)`: \S", line)) and folder:
            assert f"{folder}/{m.group(1)}" not in listed, line
            listed.add(f"{folder}/{m.group(1)}")
    actual = {str(f.relative_to(ROOT)) for top in ("cvkeras", "export", "serving") for f in (ROOT / top).rglob("*.py")
              if f.name != "__init__.py"}
    assert listed == actual, {"missing": sorted(actual - listed), "stale": sorted(listed - actual)}
