"""README.md and docs/: every relative link and anchor resolves, every page is reachable, the README stays short.

Standard library only (no project imports), so it runs anywhere pytest does.
"""

from __future__ import annotations

import re
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_MAX_LINES = 220

FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target) and ![alt](target); the text may hold one level of brackets; an optional "title".
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^\s)]+)(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(\S+)")
HTML_ATTR = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*\"([^\"]*)\"", re.IGNORECASE)
HTML_ANCHOR = re.compile(r"<a\b[^>]*?\b(?:id|name)\s*=\s*\"([^\"]*)\"", re.IGNORECASE)
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def pages() -> list[Path]:
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    out, fence = [], None
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)
        elif fence is not None and match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
            fence = None
        elif fence is None:
            out.append((number, line))
    return out


def github_slug(heading: str) -> str:
    """GitHub's heading anchor: rendered text, lower case, punctuation dropped, spaces -> hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading counts by its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = text.lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for _, line in prose_lines(page.read_text(encoding="utf-8")):
        result.update(HTML_ANCHOR.findall(line))
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        if slug in seen:
            seen[slug] += 1
            result.add(f"{slug}-{seen[slug]}")
        else:
            seen[slug] = 0
            result.add(slug)
    return result


def links(page: Path) -> list[str]:
    targets = []
    for _, line in prose_lines(page.read_text(encoding="utf-8")):
        match = REFERENCE_DEF.match(line)
        if match:
            targets.append(match.group(1))
        stripped = CODE_SPAN.sub("", line)
        targets += [t.strip("<>") for t in INLINE_LINK.findall(stripped)]
        targets += HTML_ATTR.findall(stripped)
    return targets


def resolve(page: Path, target: str) -> tuple[Path | None, str]:
    """(file the link points to, anchor); (None, "") for external links."""
    if EXTERNAL.match(target):
        return None, ""
    path, _, anchor = target.partition("#")
    return (page if not path else (page.parent / path).resolve()), anchor


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in links(page):
        file, anchor = resolve(page, target)
        if file is None:
            continue
        if not file.exists():
            broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{page.relative_to(ROOT)}: {target} (no heading with anchor #{anchor})")
    return broken


def test_github_slug_matches_githubs_rule():
    assert github_slug("Set-up: two commands") == "set-up-two-commands"
    assert github_slug("Training options: compile, bf16, gradient checkpointing, multi-process") == (
        "training-options-compile-bf16-gradient-checkpointing-multi-process")
    assert github_slug("Datasets (`data=...`)") == "datasets-data"
    assert github_slug("ViT training step vs timm") == "vit-training-step-vs-timm"
    assert github_slug("History: fused_attn, 2026-11-22") == "history-fused_attn-2026-11-22"


def test_duplicate_headings_get_numbered_anchors(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# A\n## Notes\n```\n## Notes\n```\n## Notes\n## Notes\n", encoding="utf-8")
    assert anchors(page) == {"a", "notes", "notes-1", "notes-2"}


def test_links_in_code_are_not_links(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("[a](x.md) `[b](y.md)`\n```\n[c](z.md)\n```\n![d](e.png \"t\") <img src=\"f.png\">\n",
                    encoding="utf-8")
    assert links(page) == ["x.md", "e.png", "f.png"]


def test_every_relative_link_and_anchor_resolves():
    broken = [b for page in pages() for b in broken_links(page)]
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_is_short():
    count = len(README.read_text(encoding="utf-8").splitlines())
    assert count <= README_MAX_LINES, f"README.md has {count} lines; keep it to {README_MAX_LINES}, details go to docs/"


def test_every_docs_page_is_reachable_from_the_readme():
    reached, queue = {README}, deque([README])
    while queue:
        page = queue.popleft()
        for target in links(page):
            file, _ = resolve(page, target)
            if file is not None and file.suffix == ".md" and file.exists() and file not in reached:
                reached.add(file)
                queue.append(file)
    lost = [str(p.relative_to(ROOT)) for p in pages() if p not in reached]
    assert not lost, "docs pages no link path from README.md reaches (add them to the README's page list):\n" + (
        "\n".join(lost))


def split_row(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip())
    return cells[1:-1] if line.strip().endswith("|") else cells[1:]


def test_tables_have_a_header_separator_and_equal_columns():
    bad = []
    for page in pages():
        block: list[tuple[int, str]] = []
        for number, line in [*prose_lines(page.read_text(encoding="utf-8")), (0, "")]:
            if line.lstrip().startswith("|"):
                block.append((number, line))
                continue
            if block:
                header = split_row(block[0][1])
                if len(block) < 2 or not re.fullmatch(r"\s*\|?(\s*:?-{3,}:?\s*\|)+\s*:?-*:?\s*", block[1][1]):
                    bad.append(f"{page.relative_to(ROOT)}:{block[0][0]}: table without a header separator line")
                bad += [f"{page.relative_to(ROOT)}:{n}: {len(split_row(row))} cells, header has {len(header)}"
                        for n, row in block[1:] if len(split_row(row)) != len(header)]
                block = []
    assert not bad, "malformed tables:\n" + "\n".join(bad)
