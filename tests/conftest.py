"""Shared fixtures: one story for demo Horos libraries.

A pristine default library is built once per session, outside every test, and never handed out; each
test that asks for ``demo_lib`` gets its own copy in its tmp_path (``copy_library``: the database's
absolute paths are rewritten, so nothing is shared). Tests that need another shape build one with
``demo_lib_factory``. Every test has its own HOME and XDG_STATE_HOME (``private_home``, autouse), so
the health file and the LaunchAgent's path are the test's own. Nothing is ever written outside pytest's
temporary folders.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Callable

import pytest

from horos_async import timezones
from horos_async.demo import DemoLibrary, build_demo, copy_library


@pytest.fixture(scope="session")
def pristine_demo(tmp_path_factory) -> DemoLibrary:
    """The default demo library (special cases + 12 ordinary studies), built once; copy it, never change it."""
    return build_demo(tmp_path_factory.mktemp("pristine") / "demo")


@pytest.fixture(autouse=True)
def private_home(tmp_path_factory, monkeypatch) -> Path:
    """Every test gets its own HOME and XDG_STATE_HOME: the health file, the LaunchAgent's plist path and
    anything else derived from the home folder never touch the real user's (subprocesses inherit them)."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / ".local" / "state"))
    yield home
    timezones.use_display_zone(None)  # the command line sets it from each test's config


@pytest.fixture
def launchd_installed(private_home) -> Path:
    """A LaunchAgent plist where ``launchd install`` puts it (in the test's HOME): the backup counts as
    scheduled, so ``status`` can say OK (else it says NOT SCHEDULED, exit 23)."""
    from horos_async import platform

    plist = platform.launchd_plist_path()
    plist.parent.mkdir(parents=True, exist_ok=True)
    plist.write_text("<plist/>\n", encoding="utf-8")
    return plist


@pytest.fixture
def demo_lib(pristine_demo: DemoLibrary, tmp_path: Path) -> DemoLibrary:
    """This test's own copy of the default demo library (dated from the session's start)."""
    return copy_library(pristine_demo, tmp_path / "demo")


@pytest.fixture
def demo_lib_factory(tmp_path: Path) -> Callable[..., DemoLibrary]:
    """Build demo libraries with custom ``build_demo`` keyword arguments, each in its own folder."""
    counter = itertools.count(1)

    def make(**kwargs: Any) -> DemoLibrary:
        root = kwargs.pop("root", None) or tmp_path / f"demo-{next(counter)}"
        return build_demo(root, **kwargs)

    return make
