"""The layers of docs/design/architecture.md hold: import contracts, no import cycles, one owner of Horos SQL.

The contracts live in ``pyproject.toml`` (``[tool.importlinter]``); this test runs import-linter on them
so that ``make test`` fails the moment a module imports upward or the TUI reaches for the engine.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("horos_async", "tui")


def test_import_contracts_are_kept():
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def _cycles(graph) -> list:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    modules = sorted(m for m in graph.modules if m.startswith(PACKAGES))
    edges = {m: sorted(d for d in graph.find_modules_directly_imported_by(m) if d.startswith(PACKAGES)
                       and not m.startswith(d + "."))  # a module importing its own package's __init__ is no cycle
             for m in modules}
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in modules:
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter[0]
                    counter[0] += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(edges.get(nxt, ()))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_cycles():
    graph = grimp.build_graph(*PACKAGES)
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle(tmp_path, monkeypatch):
    """The finder itself can fail: two modules that import each other are reported."""
    pkg = tmp_path / "cyc"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from cyc import b\n")
    (pkg / "b.py").write_text("from cyc import a\n")
    (pkg / "c.py").write_text("from cyc import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys.modules[__name__], "PACKAGES", ("cyc",))
    assert _cycles(grimp.build_graph("cyc")) == [["cyc.a", "cyc.b"]]


HOROS_SQL = re.compile(r"\b(ZSTUDY|ZSERIES|ZIMAGE|ZALBUM|Z_PRIMARYKEY|Z_METADATA)\b")


def test_horos_sql_lives_only_in_horos_db():
    """``horos_db`` is the only product module that speaks Horos's SQL (the demo builds such a database)."""
    owners = {ROOT / "horos_async" / "horos_db.py"}
    offenders = []
    for path in sorted((ROOT / "horos_async").rglob("*.py")):
        if path in owners or "demo" in path.relative_to(ROOT / "horos_async").parts:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if HOROS_SQL.search(code) and re.search(r"\b(SELECT|FROM|JOIN|WHERE|PRAGMA)\b", code):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []


def _ledger_sql_pattern() -> "re.Pattern[str]":
    """A statement on a table of the ledger's schema: ``FROM``/``JOIN``/``INTO``/``UPDATE`` before its name."""
    from horos_async.state.ledger import SCHEMA

    tables = re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", SCHEMA)
    assert {"studies", "zips", "runs", "issues", "conditions", "meta"} <= set(tables)
    return re.compile(r"\b(FROM|JOIN|INTO|UPDATE)\s+(" + "|".join(tables) + r")\b")


def test_ledger_sql_pattern_finds_ledger_sql():
    """The ledger test below can fail: statements as they used to sit in status, catalog and verify match,
    prose about studies and runs does not."""
    pattern = _ledger_sql_pattern()
    for code in ('"SELECT month, COUNT(*) FROM studies WHERE state=\'done\' GROUP BY month"',
                 "FROM studies s LEFT JOIN zips z ON z.zip_path = s.zip_path",
                 '"UPDATE zips SET verified_at=? WHERE zip_path=?"', '"DELETE FROM conditions WHERE code=?"',
                 '"INSERT INTO issues (ts, code) VALUES (?,?)"'):
        assert pattern.search(code), code
    for prose in ("Read from the ledger: studies from Horos, runs and issues", "ZIPs from studies done"):
        assert not pattern.search(prose), prose


def test_ledger_sql_lives_only_in_state():
    """Every ledger query sits behind the ledger's API (``horos_async/state/``: the writer ``ledger``, the
    read-only ``ledger_read``); status, the operator commands and the TUI ask it, they hold no SQL."""
    pattern = _ledger_sql_pattern()
    owner = ROOT / "horos_async" / "state"
    offenders = []
    for path in sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")):
        if owner in path.parents:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line.split("#", 1)[0]):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []
