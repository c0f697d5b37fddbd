"""The README's command-line section documents every finding kind, exactly as the code says."""

from __future__ import annotations

from pathlib import Path

from ringtape.storage.check.findings import KINDS
from ringtape.tools.commands.verify import kinds_markdown

README = Path(__file__).resolve().parent.parent / "README.md"


def usage_section() -> str:
    text = README.read_text()
    assert "<!-- USAGE -->" in text
    return text.split("<!-- USAGE -->", 1)[1]


def test_every_finding_kind_is_in_the_readme() -> None:
    section = usage_section()
    missing = [str(kind) for kind in KINDS if f"`{kind}`" not in section]
    assert missing == [], f"README lacks {missing}: regenerate the table with kinds_markdown()"


def test_the_kinds_table_matches_the_code() -> None:
    # Regenerate with:
    # python -c "from ringtape.tools.commands.verify import kinds_markdown as k; print(k())"
    assert kinds_markdown() in usage_section()


def test_every_subcommand_is_documented() -> None:
    section = usage_section()
    from ringtape.tools.arguments import COMMANDS

    for name in COMMANDS:
        assert f"### `ringtape {name}" in section, name
