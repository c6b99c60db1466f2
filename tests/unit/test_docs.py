"""The README is the front page and docs/ the user's manual: the README's test command must be the one CI runs,
every key documented, and every relative link lead to a file and heading that exist."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from orchestrator.config.schema import Config

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOCS = "\n".join(page.read_text() for page in PAGES)


def _keys(cls, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            keys += _keys(f.default_factory, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def test_ci_runs_the_readme_test_command():
    test_command = re.search(r"```bash\n(bash tests/install-system-deps.sh && pip install torch==\S+ && "
                             r"pip install -e '\.\[dev\]' && .+)\n```", README)
    assert test_command, "README lost its test command"
    assert test_command.group(1) in (ROOT / ".ci" / "run").read_text()


def test_every_config_key_is_documented_in_the_docs():
    missing = [key for key in _keys(Config) if f"`{key}`" not in DOCS and f"`{key}`," not in DOCS]
    assert not missing, f"document these keys in README.md or docs/*.md: {missing}"


def _outside_code(text: str) -> str:
    """The Markdown outside fenced code blocks and inline code spans."""
    prose = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.M | re.S)
    return re.sub(r"(`+).*?\1", "", prose, flags=re.S)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link's text only
    heading = heading.lower().replace("`", "")
    heading = re.sub(r"[^\w\- ]", "", heading)
    return heading.replace(" ", "-")


def _anchors(text: str) -> set[str]:
    """Every heading's anchor, numbered like GitHub's for repeated headings (`-1`, `-2`, ...)."""
    prose = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.M | re.S)
    anchors, seen = set(), {}
    for heading in re.findall(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", prose, flags=re.M):
        slug = _slug(heading)
        anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def test_slug_is_githubs():
    assert _slug("Fault tolerance: stop, crash, resume") == "fault-tolerance-stop-crash-resume"
    assert _slug("Memory: will it fit?") == "memory-will-it-fit"
    assert _slug("An existing Ray cluster (`cluster=ray`)") == "an-existing-ray-cluster-clusterray"
    assert _slug("Design decisions (where we differ from the first sketch in ARCHITECTURE.md)") == (
        "design-decisions-where-we-differ-from-the-first-sketch-in-architecturemd")
    assert _anchors("# A\n```\n# not a heading\n```\n## A\n") == {"a", "a-1"}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path):
    broken = []
    for target in re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", _outside_code(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, flags=re.I):  # https:, mailto:, ...
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no file {linked.relative_to(ROOT) if linked.is_relative_to(ROOT) else linked}")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked.read_text()):
            broken.append(f"{target}: no heading with the anchor #{anchor} in {linked.relative_to(ROOT)}")
    assert not broken, f"broken links in {page.relative_to(ROOT)}: {broken}"
