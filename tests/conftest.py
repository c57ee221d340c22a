"""Shared fixtures: demo Horos libraries built fresh in each test's tmp_path (never outside it)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Callable

import pytest

from horos_async import timezones
from horos_async.demo import DemoLibrary, build_demo


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
def demo_lib(tmp_path: Path) -> DemoLibrary:
    """The default demo library (special cases + 12 ordinary studies), dated from the real clock."""
    return build_demo(tmp_path / "demo")


@pytest.fixture
def demo_lib_factory(tmp_path: Path) -> Callable[..., DemoLibrary]:
    """Build demo libraries with custom ``build_demo`` keyword arguments, each in its own folder."""
    counter = itertools.count(1)

    def make(**kwargs: Any) -> DemoLibrary:
        root = kwargs.pop("root", None) or tmp_path / f"demo-{next(counter)}"
        return build_demo(root, **kwargs)

    return make
