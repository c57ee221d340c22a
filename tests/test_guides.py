"""The three guides agree where a reader acts on them: every issue code in each table, the install that
works, the troubleshooting rows that keep a reader from the wrong fix, and the Portuguese words for them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
OPERATIONS = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
PT = (ROOT / "docs" / "README.pt.md").read_text(encoding="utf-8")
PT_WORDS = " ".join(PT.split())  # line breaks as spaces, for phrases wrapped across lines


def table_codes(text: str, after: str) -> set:
    """The codes in the first column of the issue table following the heading ``after``."""
    section = text[text.index(after):]
    table = section[section.index("| code |"):]
    rows = table.split("\n\n", 1)[0].splitlines()
    return {m.group(1) for m in (re.match(r"\| `([A-Z_]+)` \|", r) for r in rows) if m}


def test_operations_guide_lists_every_issue_code_of_the_readme():
    codes = table_codes(README, "## Records people read")
    assert {"FOREIGN_FILE", "STUDY_CHANGED", "DISK_FULL"} <= codes
    missing = sorted(codes - table_codes(OPERATIONS, "## Issue codes"))
    assert not missing, f"docs/operations.md's issue table lacks {missing}"


def test_portuguese_guide_lists_every_issue_code_of_the_readme():
    codes = table_codes(README, "## Records people read")
    pt = {m.group(1) for m in re.finditer(r"^\| `([A-Z_]+)` \|", PT, re.M)}
    assert not sorted(codes - pt)


def test_portuguese_guide_installs_from_the_checkout_like_the_readme():
    """horos-backup is not on PyPI: "pip install 'horos-backup[tui]'" installs nothing (or someone else's)."""
    assert "pip install '/path/to/horos-backup[tui]'" in README
    bare = [line for line in PT.splitlines() if re.search(r"pip install (--upgrade )?'horos-backup\[", line)]
    assert not bare, bare
    assert "pip install '/caminho/para/horos-backup[tui]'" in PT


@pytest.mark.parametrize("english", ["the volume is mounted read-only", "the backup volume is full"])
def test_portuguese_troubleshooting_has_the_rows_that_prevent_the_wrong_fix(english):
    """A full disk is not a damaged ledger: a reader who moves the ledger aside loses nothing, but
    rebuilds for hours for no reason; the Portuguese guide must say so too."""
    assert english in README.split("## Troubleshooting", 1)[1]
    assert english in PT.split("## Solução de problemas", 1)[1]
    if english == "the backup volume is full":
        assert "Não mova o ledger" in PT_WORDS


@pytest.mark.parametrize("wrong, right", [
    ("reconfere o arquivo inteiro", "reconfere o acervo inteiro"),  # "arquivo" is a file; the archive is "acervo"
    ("o log roda", "o log é rotacionado"),
    ("ao entrar no usuário", "após o login"),
])
def test_portuguese_wording(wrong, right):
    assert wrong not in PT_WORDS and right in PT_WORDS
