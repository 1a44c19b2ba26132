"""Links between the README and docs/ land on a file and a heading that exist.

Code comments point at these anchors (``docs/protocol.md#hello``), so a
renamed heading must fail here rather than leave dangling references.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (.+)$", re.MULTILINE)
EXPLICIT_ANCHOR = re.compile(r'<a id="([^"]+)"></a>')


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    found: set[str] = set(EXPLICIT_ANCHOR.findall(text))
    seen: dict[str, int] = {}
    for heading in HEADING.findall(text):
        base = slug(heading)
        count = seen.get(base, 0)
        found.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return found


def test_slug_matches_github() -> None:
    assert slug("The session: generators of effects") == "the-session-generators-of-effects"
    assert slug("PUT /push") == "put-push"


def test_relative_links_resolve() -> None:
    broken = []
    for document in DOCUMENTS:
        for target in LINK.findall(document.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            name, _, anchor = target.partition("#")
            path = (document.parent / name).resolve() if name else document
            if not path.exists():
                broken.append(f"{document.name}: {target}")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                broken.append(f"{document.name}: {target}")
    assert broken == []


def test_docs_stand_on_their_own() -> None:
    """The documents cite no external specification by section number.

    The generated settings table is left out: its text comes from the help
    strings in ``autopush_flask/config.py`` and is checked there.
    """
    generated = re.compile(r"<!-- settings-reference:start.*?<!-- settings-reference:end -->", re.DOTALL)
    cited = [
        d.name for d in DOCUMENTS
        if re.search(r"(SPEC|DESIGN) (§|A\.\d)", generated.sub("", d.read_text()))
    ]
    assert cited == []


CODE = sorted([*(ROOT / "autopush_flask").rglob("*.py"), *(ROOT / "tests").rglob("*.py"), ROOT / "wsgi.py"])
DOCS_REFERENCE = re.compile(r"\bdocs/([\w-]+\.md)#([\w-]+)")


def test_code_comments_point_at_headings_that_exist() -> None:
    """``docs/protocol.md#hello`` in a comment or help text must land on a heading."""
    broken, checked = [], 0
    for path in CODE:
        for name, anchor in DOCS_REFERENCE.findall(path.read_text()):
            checked += 1
            document = ROOT / "docs" / name
            if not document.exists() or anchor not in anchors(document):
                broken.append(f"{path.relative_to(ROOT)}: docs/{name}#{anchor}")
    assert broken == []
    assert checked > 100  # the pattern still finds the references (about 170 today)


def test_code_cites_no_external_specification() -> None:
    """The repository explains itself: comments point into docs/, not at sections of outside documents."""
    this_file = Path(__file__).resolve()
    cited = [
        str(path.relative_to(ROOT)) for path in CODE
        if path != this_file and re.search(r"(SPEC|DESIGN) (§|A\.\d)|§\d", path.read_text())
    ]
    assert cited == []
