"""The code blocks and headings of the README and docs/*.md, for the tests that run them."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(`{3,})\s*([\w+-]*)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


@dataclass
class Block:
    page: str  # relative to the repository root: "README.md", "docs/layers.md"
    line: int  # 1-based line of the block's first code line
    lang: str  # the fence's language ("python", "bash", "" for a plain block)
    code: str
    heading: str  # the text of the nearest heading above the block


@dataclass
class Heading:
    level: int
    text: str
    line: int


def rel(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def parse(page: Path):
    """(headings, blocks) of a Markdown page; headings inside code blocks are not headings."""
    headings, blocks = [], []
    fence, lang, start, body = None, "", 0, []
    current = ""
    for n, line in enumerate(page.read_text().split("\n"), 1):
        if fence is None:
            m = _FENCE.match(line)
            if m:
                fence, lang, start, body = m.group(1), m.group(2), n + 1, []
                continue
            h = _HEADING.match(line)
            if h:
                current = h.group(2)
                headings.append(Heading(len(h.group(1)), current, n))
        elif line.strip() == fence:
            blocks.append(Block(rel(page), start, lang, "\n".join(body) + "\n", current))
            fence = None
        else:
            body.append(line)
    assert fence is None, f"{rel(page)}: a code block opened at line {start - 1} is not closed"
    return headings, blocks


def python_block(page: str, heading: str, index: int = 0) -> str:
    """The ``index``-th Python block in the section of ``page`` titled ``heading`` (any level;
    the section ends at the next heading of the same or a higher level)."""
    path = ROOT / page
    headings, blocks = parse(path)
    found = [h for h in headings if h.text == heading]
    assert len(found) == 1, f"{page}: expected one heading {heading!r}, found {len(found)}"
    h = found[0]
    end = min((g.line for g in headings if g.line > h.line and g.level <= h.level),
              default=float("inf"))
    inside = [b for b in blocks if h.line < b.line < end and b.lang == "python"]
    assert len(inside) > index, f"{page}: section {heading!r} has {len(inside)} Python blocks"
    return inside[index].code


def github_slug(text: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, each space a '-'."""
    text = re.sub(r"[`*]", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def markdown_slug(text: str) -> str:
    """The anchor Python-Markdown's toc extension (mkdocs) gives a heading, by default."""
    text = re.sub(r"[`*]", "", text)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)
