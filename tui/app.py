"""``horos-tui``: the live monitor of the headless backup engine, attached read-only.

One live-data path: a timer (about once a second) starts one exclusive thread worker that calls
``Source.read()`` (and the log tail while the log pane is open), and posts a ``SnapshotRead``
message; the app stores it in reactive attributes that the screens hand to their widgets. Threads
never touch widgets. The App itself lives in ``tui.monitor``. The app never runs the engine inside itself: ``r`` starts a run the way launchd
does (``tui.launcher``), in its own process.

``make_app`` is shared by ``entry()`` and the tests. ``entry()`` imports Textual lazily, so a missing
``tui`` extra ends in an install hint instead of a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from horos_async.config import Config

from tui.launcher import Launch
from tui.settings import HISTORY_POINTS, HUNG_SECONDS, display_zone  # noqa: F401 (tests import them here)
from tui.source import Source

if TYPE_CHECKING:  # pragma: no cover - typing only; Textual is imported inside make_app and entry
    from textual.app import App

INSTALL_HINT = "horos-tui needs the optional 'tui' extra: pip install 'horos-backup[tui]'"


def make_app(config: Config, source: Optional[Source] = None, clock: Optional[Callable[[], float]] = None,
             *, refresh: float = 1.0, starter: Optional[Callable[[Launch], str]] = None,
             theme: Optional[str] = None) -> App:
    """Build the monitor for ``config``; tests inject a scripted ``source``, a fixed ``clock`` and a
    fake ``starter`` (what ``r`` calls after the confirmation instead of starting a real run)."""
    from tui.monitor import HorosTui

    return HorosTui(config, source=source, clock=clock, refresh=refresh, starter=starter, theme_name=theme)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="horos-tui",
        description="Live, read-only monitor of the horos-backup engine (quit with q; the backup goes on).")
    p.add_argument("--config", type=Path, metavar="PATH",
                   help="config file (default: $HOROS_BACKUP_CONFIG, else the built-in defaults)")
    p.add_argument("--refresh", type=float, default=1.0, metavar="SECONDS",
                   help="seconds between status reads (default 1)")
    p.add_argument("--theme", default=None, metavar="NAME",
                   help="Textual theme, e.g. textual-light, ansi-dark, ansi-light (default textual-dark)")
    p.add_argument("--no-mouse", action="store_true", help="ignore the mouse (plain keyboard terminals)")
    return p


def entry(argv: Optional[Sequence[str]] = None) -> None:
    """Console script ``horos-tui``: exit 0 after quitting, 2 on a bad config or missing extra."""
    args = _parser().parse_args(argv)
    if args.refresh < 0.2:
        print(f"horos-tui: --refresh {args.refresh} is too fast; use 0.2 seconds or more", file=sys.stderr)
        raise SystemExit(2)
    # Animations off for SSH users unless they chose otherwise; must be set before Textual is imported.
    os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")
    try:
        import textual  # noqa: F401 - only to learn whether the extra is installed
    except ImportError:
        print(INSTALL_HINT, file=sys.stderr)
        raise SystemExit(2) from None
    from horos_async.config import load
    from horos_async.errors import ConfigError

    try:
        cfg = load(args.config)
    except ConfigError as exc:
        print(f"horos-tui: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    from textual.app import InvalidThemeError

    try:
        app = make_app(cfg, refresh=args.refresh, theme=args.theme)
    except InvalidThemeError:
        print(f"horos-tui: unknown theme {args.theme!r}; try textual-dark, textual-light, ansi-dark or ansi-light",
              file=sys.stderr)
        raise SystemExit(2) from None
    app.run(mouse=not args.no_mouse)
    raise SystemExit(app.return_code or 0)
