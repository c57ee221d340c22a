"""The engine never imports Textual: launchd's headless runs must not need (or load) the TUI extra.

Every module of ``horos_async`` is imported in a fresh interpreter, then ``sys.modules`` is checked.
Modules are found on disk, so a module added later is covered without editing this test.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import horos_async

ROOT = Path(__file__).resolve().parents[1]


def engine_modules():
    """``horos_async`` and every module in it, by name."""
    found = pkgutil.walk_packages(horos_async.__path__, prefix="horos_async.")
    return ["horos_async"] + sorted(m.name for m in found if not m.name.endswith(".__main__"))  # runs the CLI


def test_engine_modules_are_found():
    names = engine_modules()
    assert "horos_async.status" in names and "horos_async.config" in names


def test_engine_never_imports_textual():
    code = (
        "import importlib, sys\n"
        f"for name in {engine_modules()!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m == 'textual' or m.startswith(('textual.', 'rich')))\n"
        "print(' '.join(bad))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"the engine imported {done.stdout.strip()}"
