"""Shared fixtures: one story for demo Horos libraries.

A pristine default library is built once per session, outside every test, and never handed out; each
test that asks for ``demo_lib`` gets its own copy in its tmp_path (``copy_library``: the database's
absolute paths are rewritten, so nothing is shared). Tests that need another shape build one with
``demo_lib_factory``. Nothing is ever written outside pytest's temporary folders.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Callable

import pytest

from horos_async.demo import DemoLibrary, build_demo, copy_library


@pytest.fixture(scope="session")
def pristine_demo(tmp_path_factory) -> DemoLibrary:
    """The default demo library (special cases + 12 ordinary studies), built once; copy it, never change it."""
    return build_demo(tmp_path_factory.mktemp("pristine") / "demo")


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
