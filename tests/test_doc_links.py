"""Every relative link in README.md and docs/ leads to a file that exists, and to a heading there where it names one.

The results pages link each other's sections by GitHub's heading anchors, and a renamed heading breaks them silently.
"""

import functools
import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
LINK = re.compile(r"\]\(([^)\s]+)\)")


@functools.cache  # a page is linked many times; read its headings once
def anchors(page: Path) -> frozenset[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    found, in_code = set(), False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        heading = None if in_code else re.match(r"#{1,6}\s+(.*)", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
    return frozenset(found)


def broken_links(page: Path) -> list[str]:
    broken = []
    for link in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", link):  # http:, https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        target = page.parent / path if path else page
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{link}: no heading with that anchor")
    return broken


def test_a_broken_file_or_anchor_is_found(tmp_path):
    (tmp_path / "other.md").write_text("# Over three seeds (2026-12-04)\n\n## `ssr`, `lwf` and naive\n\n## Reading\n\n"
                                       "## Reading\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text("[a](other.md#over-three-seeds-2026-12-04) [b](other.md#ssr-lwf-and-naive) [c](other.md#reading-1)"
                    " [d](other.md#reading-2) [e](missing.md) [f](https://example.org/x#y) [g](#nowhere)\n",
                    encoding="utf-8")
    assert broken_links(page) == ["other.md#reading-2: no heading with that anchor", "missing.md: no such file",
                                  "#nowhere: no heading with that anchor"]


def test_every_relative_link_in_the_docs_resolves():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    broken = {str(page.relative_to(ROOT)): found for page in pages if (found := broken_links(page))}
    assert broken == {}
