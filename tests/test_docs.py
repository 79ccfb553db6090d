"""The documents: README is a short front door with the set-up commands CI runs, and every relative
link in README.md, docs/*.md and benchmarks/README.md points at a file that exists."""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = [README, *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks" / "README.md"]
README_MAX_CHARS = 15_000
SETUP_COMMANDS = ("pip install -r requirements.txt", "python -m pytest -q -n 2")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def relative_links(text: str) -> list[str]:
    """Each Markdown link target that is neither a URL nor an anchor in the same page, without its
    #anchor."""
    targets = (m.group(1) for m in LINK.finditer(text))
    return [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


def test_readme_is_short_and_names_the_setup_commands():
    text = README.read_text()
    assert len(text) <= README_MAX_CHARS, f"README.md has {len(text)} characters"
    for command in SETUP_COMMANDS:
        assert command in text


def test_link_parser_finds_relative_links_and_skips_urls_and_anchors():
    text = "[a](docs/x.md#part) ![f](results/f.png) [u](https://x.org/y) [s](#top) [b](../b.md)"
    assert relative_links(text) == ["docs/x.md", "results/f.png", "../b.md"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_resolves(doc):
    assert doc.is_file(), f"{doc.relative_to(REPO)} is missing"
    broken = [t for t in relative_links(doc.read_text()) if not (doc.parent / t).exists()]
    assert not broken, f"{doc.relative_to(REPO)}: broken links {broken}"
