"""Shared fixtures: demo Horos libraries built fresh in each test's tmp_path (never outside it)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Callable

import pytest

from horos_async.demo import DemoLibrary, build_demo


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
