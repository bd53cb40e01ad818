"""The docs' relative links resolve inside the repository (a clone has nothing beside it).

Every relative link and image in README.md, BUILD_NOTES.md and docs/*.md must name a file
or folder of this repository (not a path outside it, such as `../shared/`), and a
`#anchor` must name a heading of the Markdown file it points into (GitHub's anchors).
"""

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "BUILD_NOTES.md", *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE_WITH_LINK = re.compile(r"`[^`\n]*\]\([^`\n]*`")  # a link shown as code, not a link
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def links(text: str) -> list[str]:
    """The link targets of Markdown text, outside code blocks and code spans."""
    text = CODE_WITH_LINK.sub("", FENCE.sub("", text))
    return LINK.findall(text)


def anchors(text: str) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped,
    spaces to hyphens; a repeated heading gets -1, -2, ..."""
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(FENCE.sub("", text)):
        heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", "")).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def relative_links():
    for doc in DOCS:
        for target in links(doc.read_text(encoding="utf-8")):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
                continue
            yield doc, target


def test_the_helpers_find_links_and_anchors():
    text = ("# Top\n\nSee [a](docs/a.md#part-two) and ![img](x.png \"t\").\n\n```\n[not](a/link.md)\n```\n"
            "`[code](nope.md)` and [`code text`](b.md).\n\n## Part two: `x` & y\n\n## Top\n")
    assert links(text) == ["docs/a.md#part-two", "x.png", "b.md"]
    assert anchors(text) == {"top", "part-two-x--y", "top-1"}


def test_docs_exist():
    assert (REPO / "docs" / "protocol.md").is_file()
    assert len(DOCS) >= 3


@pytest.mark.parametrize("doc,target", list(relative_links()),
                         ids=lambda v: v.name if isinstance(v, Path) else v)
def test_relative_link_resolves_in_the_repository(doc, target):
    path, _, anchor = unquote(target).partition("#")
    resolved = (doc.parent / path).resolve() if path else doc
    assert resolved == REPO or REPO in resolved.parents, f"{doc.name}: {target} points outside the repository"
    assert resolved.exists(), f"{doc.name}: {target} does not exist"
    if anchor and resolved.suffix == ".md":
        assert anchor in anchors(resolved.read_text(encoding="utf-8")), f"{doc.name}: no heading for #{anchor}"
