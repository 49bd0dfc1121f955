"""Every relative link of the README and of docs/ points to a file of the repository, and every #anchor to a
heading of that file (GitHub's ids); the README points at nothing outside the repository but the local server."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(30)
ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "web" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
AUTOLINK = re.compile(r"<(https?://[^>]+)>")


def prose(text: str) -> str:
    """The text without code blocks and inline code (where brackets are no links)."""
    return CODE.sub("", FENCE.sub("", text))


def anchors(page: Path) -> set[str]:
    """GitHub's ids of the page's headings: lower case, punctuation dropped, spaces as dashes, repeats numbered."""
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} (.+)$", FENCE.sub("", page.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        if seen[slug]:
            seen[f"{slug}-{seen[slug]}"] = 0
    return set(seen)


def links(page: Path) -> list[str]:
    return LINK.findall(prose(page.read_text()))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files_and_headings(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.is_relative_to(ROOT) or not file.exists():
            broken.append(f"{target}: no such file in the repository")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, broken


def test_the_readme_links_only_into_the_repository() -> None:
    text = prose((ROOT / "README.md").read_text())
    outside = [t for t in links(ROOT / "README.md") if re.match(r"[a-z]+:", t)]
    outside += [url for url in AUTOLINK.findall(text) if not re.match(r"https?://(127\.0\.0\.1|localhost)[:/]", url)]
    assert not outside, outside
    assert not re.search(r"(?i)\bissues?\s*#?\d+|#\d+\b", text), "the README names an issue number"


def test_docs_are_linked_from_the_readme() -> None:
    readme = {Path(t.partition("#")[0]) for t in links(ROOT / "README.md")}
    assert {p.relative_to(ROOT) for p in (ROOT / "docs").glob("*.md")} <= readme


def test_the_anchor_rule_is_githubs() -> None:
    page = ROOT / "docs" / "benchmarks.md"
    assert "vllms-own-benchmark-client-bare-vllm-serve-vs-llmsup" in anchors(page)
    assert "soak-10000-jobs-without-and-with-32-live-subscribers" in anchors(page)
