"""The registry of codes (horos_async/codes.py) is complete, documented, and known to the TUI.

Codes are found from the registry and from the source, never from a list kept here: a code added to
the registry without a row in README.md, docs/operations.md and docs/README.pt.md fails, and so does a
code the engine writes or publishes without registering it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

from horos_async import codes, errors
from horos_async.codes import (PUBLISHED_STATES, EngineState, GuardCode, HealthCode, HealthState, IssueCode,
                               MirrorOutcome, RunOutcome)

ROOT = Path(__file__).resolve().parents[1]

DOCS = {  # file -> (heading of its issue-code table, heading of its exit-code table, of its health-code table)
    "README.md": ("Records people read", "Exit codes", "Health codes"),
    "docs/operations.md": ("Issue codes", "Exit codes", "Health codes"),
    "docs/README.pt.md": ("Códigos de problema", "Códigos de saída", "Códigos de saúde"),
}

EXIT_CODES = {name: value for name, value in vars(errors).items() if name.startswith("EXIT_")}


def table_keys(text: str, heading: str) -> Set[str]:
    """First cells of the table rows in the section whose heading starts with ``heading``."""
    keys: Set[str] = set()
    inside = fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if fenced:
            continue
        if line.startswith("#"):
            inside = re.sub(r"^#+\s*", "", line).startswith(heading)
            continue
        if inside and line.startswith("|"):
            keys.add(line.split("|")[1].strip().strip("`"))
    return keys


def test_table_keys_reads_only_its_section():
    text = ("# Guide\n| `X` | not here |\n## Issue codes\n| code | meaning |\n|---|---|\n| `NO_FILES` | none |\n"
            "```\n# a comment in a code block\n```\n| `ZIP_FAIL` | bad |\n## Next\n| `DISK_LOW` | elsewhere |\n")
    assert table_keys(text, "Issue codes") == {"code", "---", "NO_FILES", "ZIP_FAIL"}


@pytest.mark.parametrize("doc", sorted(DOCS))
def test_every_issue_code_has_a_row_in_the_guides(doc):
    documented = table_keys((ROOT / doc).read_text(encoding="utf-8"), DOCS[doc][0])
    assert documented, f"{doc}: no issue-code table under '{DOCS[doc][0]}'"
    missing = [c.value for c in IssueCode if c.value not in documented]
    assert missing == [], f"{doc} lacks a row for {missing} (heading '{DOCS[doc][0]}')"


@pytest.mark.parametrize("doc", sorted(DOCS))
def test_every_health_code_has_a_row_in_the_guides(doc):
    documented = table_keys((ROOT / doc).read_text(encoding="utf-8"), DOCS[doc][2])
    missing = [c.value for c in HealthCode if c.value not in documented]
    assert missing == [], f"{doc} lacks a row for {missing} (heading '{DOCS[doc][2]}')"


@pytest.mark.parametrize("doc", sorted(DOCS))
def test_every_exit_code_has_a_row_in_the_guides(doc):
    documented = table_keys((ROOT / doc).read_text(encoding="utf-8"), DOCS[doc][1])
    missing = [f"{name} = {value}" for name, value in sorted(EXIT_CODES.items(), key=lambda kv: kv[1])
               if str(value) not in documented]
    assert missing == [], f"{doc} lacks a row for {missing} (heading '{DOCS[doc][1]}')"


def test_guard_codes_are_issue_codes_and_the_tui_names_each():
    """A guard is recorded as an issue (once per episode) and shown by name in the TUI's header."""
    pytest.importorskip("textual")
    from tui.widgets.engine_header import GUARDS

    assert [g.value for g in GuardCode if g.value not in IssueCode.__members__] == []
    assert set(GUARDS) == {g.value for g in GuardCode}  # every published guard, and none that is never published
    assert all(GUARDS[g] and GUARDS[g] != g for g in GUARDS)


def test_every_code_has_a_meaning_and_an_action():
    for family in (IssueCode, GuardCode, RunOutcome, EngineState, HealthState, HealthCode, MirrorOutcome):
        for code in family:
            assert code.meaning.strip() and code.action.strip(), code
            assert f"{code}" == str(code) == code.value and code == code.value  # written as its plain text


# -- the codes the source writes and publishes are registered ---------------------------------------------
FAMILIES = {"IssueCode": IssueCode, "GuardCode": GuardCode, "RunOutcome": RunOutcome, "EngineState": EngineState,
            "MirrorOutcome": MirrorOutcome}
ALLOWED = {  # what each kind of site may hold
    "issue": {c.value for c in IssueCode},
    "guard": {c.value for c in GuardCode},
    "state": {c.value for c in PUBLISHED_STATES},
    "outcome": {c.value for c in RunOutcome} | {c.value for c in MirrorOutcome},  # a run's, a mirror run's
}
NOT_REGISTERED: dict = {}
"""Codes a site may hold without a registry entry: none (UNCHANGED is an Outcome status of its own)."""


def _values(node: ast.AST, where: str) -> Iterator[Tuple[str, str]]:
    """(text, where) of the codes an expression can evaluate to; nothing for a variable or a call."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        if node.value:
            yield node.value, where
    elif isinstance(node, ast.IfExp):
        yield from _values(node.body, where)
        yield from _values(node.orelse, where)
    elif isinstance(node, ast.Attribute):
        owner = node.value.attr if isinstance(node.value, ast.Attribute) else getattr(node.value, "id", "")
        if owner in FAMILIES:
            member = FAMILIES[owner].__members__.get(node.attr)
            yield (member.value if member is not None else f"{owner}.{node.attr} (no such member)"), where


def _arg(call: ast.Call, index: int, keyword: str):
    if len(call.args) > index:
        return call.args[index]
    return next((k.value for k in call.keywords if k.arg == keyword), None)


def code_sites(source: str, name: str) -> Iterator[Tuple[str, str, str]]:
    """(kind, code, file:line) for every literal or registry code the source writes to the ledger's issues
    (``.issue``, ``.condition``, ``.mark_zip_bad``, an ``Outcome`` or its ``fail`` helper), publishes as
    the live guard or state, or records as a run outcome."""
    for node in ast.walk(ast.parse(source)):
        where = f"{name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Call):
            func = node.func
            fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            arg = None
            if fname in ("issue", "condition") and isinstance(func, ast.Attribute):
                arg = _arg(node, 0, "code")
            elif fname == "mark_zip_bad":
                arg = _arg(node, 2, "code")
            elif fname == "Outcome":
                arg = _arg(node, 2, "code")
            elif fname == "fail":
                arg = _arg(node, 0, "code")
            for text, w in _values(arg, where) if arg is not None else ():
                yield "issue", text, w
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                pairs = (zip(target.elts, node.value.elts) if isinstance(target, ast.Tuple)
                         and isinstance(node.value, ast.Tuple) else [(target, node.value)])
                for t, v in pairs:
                    if not isinstance(t, ast.Attribute):
                        continue
                    owner = t.value.attr if isinstance(t.value, ast.Attribute) else getattr(t.value, "id", "")
                    kind = {"guard_code": "guard", "outcome": "outcome"}.get(t.attr)
                    if t.attr == "state" and owner == "live":
                        kind = "state"
                    for text, w in _values(v, where) if kind else ():
                        yield kind, text, w


def unregistered(files: Dict[str, str]) -> List[str]:
    """The sites whose code is not registered for their kind, in file and line order."""
    out = []
    for name, source in sorted(files.items()):
        for kind, text, where in code_sites(source, name):
            if text not in ALLOWED[kind] and text not in NOT_REGISTERED.get(kind, ()):
                out.append((name, int(where.rsplit(":", 1)[1]), f"{where}: {kind} code {text!r}"))
    return [line for _name, _n, line in sorted(out)]


def test_every_code_the_package_writes_or_publishes_is_registered():
    files = {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8")
             for p in sorted((ROOT / "horos_async").rglob("*.py"))}
    sites = [s for name, src in files.items() for s in code_sites(src, name)]
    kinds = {kind for kind, _text, _where in sites}
    assert kinds == set(ALLOWED), kinds  # the finder sees every kind of site in today's code
    assert unregistered(files) == []


def test_the_finder_reports_an_unregistered_code():
    source = '''
async def f(self, ledger, live, r):
    await ledger.issue("NEW_PROBLEM", "detail")
    await ledger.issue(IssueCode.NO_FILES, "fine")
    await ledger.mark_zip_bad("a.zip", "bad", IssueCode.NO_SUCH, "x")
    live.guard_code, live.guard_detail = "SENTINEL_MISSING", "d"
    self.live.state = "paused" if r else "stopping"
    r.outcome = RunOutcome.PAUSED
    r.outcome = "crashed"
    return Outcome("k", "failed", "UNCHANGED")
'''
    assert unregistered({"x.py": source}) == [
        "x.py:3: issue code 'NEW_PROBLEM'", "x.py:5: issue code 'IssueCode.NO_SUCH (no such member)'",
        "x.py:6: guard code 'SENTINEL_MISSING'", "x.py:7: state code 'stopping'", "x.py:9: outcome code 'crashed'",
        "x.py:10: issue code 'UNCHANGED'",
    ]


def test_error_outcome_is_the_error_class_name():
    assert codes.error_outcome(errors.DiskFull("full")) == "DiskFull"
