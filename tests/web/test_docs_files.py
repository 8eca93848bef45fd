"""README.md and docs/*.md: the front door stays short, every link lands, every setting is listed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from keyvault.config import Settings

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"
PAGES = (README, *sorted((ROOT / "docs").glob("*.md")))
README_MAX_LINES = 200
# Read by keyvault but owned by uvicorn and prometheus-client, so not fields of Settings.
OTHER_VARIABLES = {"FORWARDED_ALLOW_IPS", "PROMETHEUS_MULTIPROC_DIR"}

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6}) +(.+?) *#*$")


def prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where brackets are not links."""
    text = re.sub(r"^ *```.*?^ *```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a heading: its text, lowercase, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[`*]", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in re.sub(r"^ *```.*?^ *```", "", page.read_text(), flags=re.M | re.S).splitlines():
        match = HEADING.match(line)
        if not match:
            continue
        anchor = github_anchor(match.group(2))
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        found.add(anchor if count == 0 else f"{anchor}-{count}")
    return found


def relative_links(page: Path) -> list[str]:
    return [
        target
        for target in LINK.findall(prose(page.read_text()))
        if not re.match(r"[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto:
    ]


def test_readme_is_at_most_200_lines() -> None:
    assert len(README.read_text().splitlines()) <= README_MAX_LINES


def test_github_anchors_are_made_as_github_makes_them() -> None:
    assert github_anchor("Keeping the master key safe — and when it is lost") == (
        "keeping-the-master-key-safe--and-when-it-is-lost"
    )
    assert github_anchor("Set up, upgrade and serve") == "set-up-upgrade-and-serve"
    assert github_anchor("`last4` and errors") == "last4-and-errors"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_points_at_a_file_and_anchor_that_exist(page: Path) -> None:
    links = relative_links(page)
    if page == README:
        assert links, "the README links to nothing"
    for link in links:
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.exists(), f"{page.name}: {link}: no such file"
        if anchor:
            assert target.suffix == ".md", f"{page.name}: {link}: anchor into a non-Markdown file"
            assert anchor in anchors(target), f"{page.name}: {link}: no such heading"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(ROOT / link.partition("#")[0]).resolve() for link in relative_links(README)}
    for page in PAGES[1:]:
        assert page.resolve() in linked, f"README does not link to docs/{page.name}"


def setting_variables() -> set[str]:
    """The variable of every setting (MASTER_* under their own names), without _FILE twins."""
    prefix = Settings.model_config.get("env_prefix", "")
    names: set[str] = set()
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        if alias is not None:
            names.update(str(choice) for choice in getattr(alias, "choices", [alias]))
        else:
            names.add(f"{prefix}{name}".upper())
    return names


def table_variables(page: Path) -> set[str]:
    return set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", page.read_text(), re.M))


def test_configuration_page_lists_every_setting_and_nothing_else() -> None:
    assert table_variables(CONFIGURATION) == setting_variables() | OTHER_VARIABLES


def test_readme_essential_settings_are_real_settings() -> None:
    essentials = table_variables(README)
    assert {"MASTER_ENCRYPTION_KEY", "KEYVAULT_DATABASE_URL", "KEYVAULT_JWT_SECRET"} <= essentials
    assert essentials <= setting_variables()
