"""Start a backup run now, through the same path launchd uses, so the run lock and guards apply.

On a Mac with the LaunchAgent installed the TUI asks launchd to start the job
(``launchctl kickstart gui/<uid>/org.horos-backup.agent``): the run is then owned by launchd, logs where
scheduled runs log and cannot be started twice. Elsewhere (no agent, or Linux) it spawns
``python -m horos_async run`` in its own session, detached, so quitting the TUI does not stop it.
Either way the engine's own run lock refuses a second run. No Textual here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from horos_async import platform as hb_platform
from horos_async.config import Config

LABEL = hb_platform.LAUNCHD_LABEL
"""launchd job label of the LaunchAgent (``horos-backup launchd install`` owns the name)."""


@dataclass(frozen=True)
class Launch:
    """How a run will be started."""

    argv: List[str]
    via_launchd: bool
    """True: ``launchctl kickstart`` (waited for); False: the engine itself, detached."""

    def describe(self) -> str:
        """One line for the confirmation dialog."""
        how = "launchd will start the scheduled job now" if self.via_launchd else "a detached engine run"
        return f"{how}: {' '.join(self.argv)}"


def plist_path(home: Optional[Path] = None) -> Path:
    """Where the LaunchAgent plist lives for this user."""
    return hb_platform.launchd_plist_path(home)


def plan_launch(cfg: Config, *, platform: str = sys.platform, home: Optional[Path] = None,
                uid: Optional[int] = None, python: str = sys.executable) -> Launch:
    """Choose launchd (macOS with the agent installed) or a direct engine run, and build the command."""
    if platform == "darwin" and plist_path(home).exists():
        user = os.getuid() if uid is None else uid
        return Launch(["launchctl", "kickstart", f"gui/{user}/{LABEL}"], via_launchd=True)
    argv = [python, "-m", "horos_async", "run"]
    if cfg.source is not None:
        argv += ["--config", str(cfg.source)]
    return Launch(argv, via_launchd=False)


def start(launch: Launch, timeout: float = 15.0) -> str:
    """Start the run; returns a line for the operator or raises OSError/RuntimeError saying why not."""
    if launch.via_launchd:
        try:
            done = subprocess.run(launch.argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"launchctl did not answer within {timeout:.0f}s; try again, or run "
                               f"`{' '.join(launch.argv)}` yourself") from None
        if done.returncode != 0:
            why = (done.stderr or done.stdout).strip() or f"exit code {done.returncode}"
            raise RuntimeError(f"launchctl could not start {LABEL}: {why}; "
                               f"check it is loaded with `launchctl print gui/{os.getuid()}/{LABEL}`")
        return f"asked launchd to start {LABEL}; the run lock and guards apply"
    proc = subprocess.Popen(launch.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    return f"started a backup run (pid {proc.pid}); the run lock and guards apply"
