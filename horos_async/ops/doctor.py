"""``horos-backup doctor``: every precondition of a safe run checked, each PASS/WARN/FAIL/SKIP with a one-line fix.

Doctor only looks. It opens Horos's database read-only (URI ``mode=ro`` plus ``query_only``), reads the
ledger read-only, never takes the run lock in a way that could make a run fail, and writes exactly one
hidden temp file into ``backup_dir`` (deleted at once) to prove the folder is writable. The machine
facts it depends on (the ``/Volumes`` root, the mount table, macOS or not, ``launchctl``, folder
listing) are parameters so the tests can exercise every branch on Linux.
"""

from __future__ import annotations

import errno
import fcntl
import os
import plistlib
import re
import sqlite3
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from horos_async import guards, platform
from horos_async.ops import doctor_horos, launchd
from horos_async.ops.doctor_checks import (  # noqa: F401 (re-exported: doctor's one public face)
    FAIL, INFO, PASS, SKIP, WARN, Check, Mounts, check_backup, check_database, check_filesystem, check_horos,
    check_mount_point, check_writable, filesystem_type, parse_mount_output, parse_proc_mounts, read_mounts)
from horos_async.config import Config
from horos_async.errors import ConfigError
from horos_async.models import DONE
from horos_async.state.ledger_read import LedgerReader
from horos_async.state.ledger_records import StateTotals


def run_checks(cfg: Config, *, volumes_root: Path = Path("/Volumes"), mounts: Optional[Mounts] = None,
               macos: Optional[bool] = None, runner: Optional[launchd.Runner] = None,
               home: Optional[Path] = None, uid: Optional[int] = None,
               lister: Callable[[Path], Any] = os.listdir) -> List[Check]:
    """All checks, in the order a person would fix them."""
    macos = platform.is_macos() if macos is None else macos
    out: List[Check] = [check_config(cfg), check_sentinel(cfg)]
    out += check_horos(cfg)
    out += doctor_horos.checks(cfg, home=home)  # what makes Horos lose studies or its index
    out += check_backup(cfg, volumes_root=volumes_root, mounts=mounts)
    out.append(check_lock(cfg))
    out.append(check_ledger(cfg))
    out.append(check_launchd(cfg, macos=macos, runner=runner, home=home, uid=uid))
    out.append(check_access(cfg, macos=macos, lister=lister))
    return out


def config_failure(exc: ConfigError) -> Check:
    """The single check reported when the config cannot be loaded at all."""
    return Check("config", FAIL, str(exc), "fix the file and key named above (README 'Configuration')")


def exit_failed(checks: Sequence[Check]) -> bool:
    """True when any check FAILed (doctor then exits EXIT_CHECK)."""
    return any(c.status == FAIL for c in checks)


# -- configuration and sentinel -----------------------------------------------------------------------
def check_config(cfg: Config) -> Check:
    """The config loaded and validated; say where from."""
    if cfg.source is None:
        return Check("config", WARN, "no config file: built-in defaults in use",
                     "write one (horos-backup config > ~/horos-backup.toml) and pass --config; launchd needs it")
    return Check("config", PASS, f"valid, loaded from {cfg.source}")


def check_sentinel(cfg: Config) -> Check:
    """The sentinel file proves the right volume is mounted."""
    if cfg.sentinel is None:
        return Check("sentinel", WARN, "disabled (sentinel = \"\"): nothing stops a run writing into an "
                     "unmounted volume's empty folder", "set 'sentinel' to a file on the backup volume and create it")
    if cfg.sentinel.exists():
        return Check("sentinel", PASS, f"{cfg.sentinel} present")
    return Check("sentinel", FAIL, f"{cfg.sentinel} is missing: the volume is not mounted, or mounted under another "
                 f"name; runs refuse to start", f"mount the volume, or on the right disk: touch '{cfg.sentinel}'")


# -- state ---------------------------------------------------------------------------------------------
def check_lock(cfg: Config) -> Check:
    """Who holds the run lock, without ever making a run fail to take it."""
    path = cfg.lock_path
    if not path.exists():
        if not cfg.backup_dir.parent.is_dir():  # the volume is not there: "no run yet" would be a guess
            return Check("run lock", SKIP, f"not checked: the backup folder {cfg.backup_dir} was not found",
                         "fix the 'backup folder' FAIL above, then run doctor again")
        return Check("run lock", PASS, "free (no run yet)")
    pid = guards.read_lock_pid(path)
    if not guards.pid_alive(pid):
        # No live process with that pid: nobody can hold the flock (the kernel drops it on exit).
        return Check("run lock", PASS, "free" + (f" (last holder, pid {pid}, has exited)" if pid else ""))
    # The pid is alive, maybe reused. Ask the kernel without waiting; a shared lock held for microseconds.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        return Check("run lock", WARN, f"cannot open {path}: {exc.strerror}", f"check permissions: ls -l '{path}'")
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return Check("run lock", PASS, f"held by pid {pid}: a backup (or verify) is running now")
        return Check("run lock", WARN, f"cannot test {path}: {exc.strerror}", "")
    finally:
        os.close(fd)  # closing releases the shared lock at once
    return Check("run lock", PASS, "free")


def check_ledger(cfg: Config) -> Check:
    """The ledger opens read-only and passes ``PRAGMA quick_check``."""
    path = cfg.ledger_path
    fix = (f"move it aside (mv '{path}' '{path}.damaged') and run 'horos-backup rebuild-ledger'; "
           f"no ZIP is lost")
    if not path.exists():
        return Check("ledger", INFO, f"{path} does not exist yet: the first run creates it", "")
    try:
        with LedgerReader.open(path) as led:
            result = led.quick_check()
            if result != "ok":
                return Check("ledger", FAIL, f"{path} is damaged: {result}", fix)
            done = led.state_totals().get(DONE, StateTotals()).studies
            zips = led.ok_zips()
    except sqlite3.Error as exc:
        return Check("ledger", FAIL, f"{path} cannot be read: {exc}", fix)
    return Check("ledger", PASS, f"{done} studies done, {zips} ZIPs recorded")


def check_launchd(cfg: Config, *, macos: bool, runner: Optional[launchd.Runner] = None,
                  home: Optional[Path] = None, uid: Optional[int] = None) -> Check:
    """The LaunchAgent is installed, points at this config and an existing program, and is loaded."""
    if not macos:
        return Check("launchd agent", INFO, "not macOS: launchd is not used here", "")
    path = launchd.plist_path(Path.home() if home is None else home)
    install = f"horos-backup launchd install --config '{cfg.source or '/path/to/horos-backup.toml'}'"
    if not path.exists():
        return Check("launchd agent", WARN, f"{path} is not installed: nothing runs the backup on schedule", install)
    try:
        doc = plistlib.loads(path.read_bytes())
        program = Path(doc["ProgramArguments"][0])
        agent_config = doc.get("EnvironmentVariables", {}).get("HOROS_BACKUP_CONFIG", "")
    except Exception as exc:  # a hand-edited or truncated plist: any parse failure means "reinstall"
        return Check("launchd agent", FAIL, f"{path} cannot be read ({exc})", install)
    if not program.exists():
        return Check("launchd agent", FAIL, f"the agent starts {program}, which does not exist (venv moved?)", install)
    if cfg.source is not None and agent_config and Path(agent_config) != Path(cfg.source):
        return Check("launchd agent", WARN, f"the agent uses {agent_config}, not {cfg.source}",
                     f"reinstall with the config you mean: {install}")
    run = runner or launchd.launchctl_runner(macos=True)
    uid = os.getuid() if uid is None else uid
    code, text = run(["launchctl", "print", f"gui/{uid}/{launchd.LABEL}"])
    if code != 0:
        return Check("launchd agent", WARN, f"{path} is installed but not loaded", install)
    last = re.search(r"last exit code = (\S+)", text)
    extra = f"; last exit code {last.group(1)}" if last else ""
    return Check("launchd agent", PASS, f"installed and loaded{extra}")


def check_access(cfg: Config, *, macos: bool, lister: Callable[[Path], Any] = os.listdir) -> Check:
    """Listing the Horos and backup folders works (macOS privacy blocks background access to volumes).

    A folder that is not there is not listed, and the check says so: SKIP when neither could be tried,
    never a PASS for a listing that did not happen.
    """
    python = os.path.realpath(sys.executable)
    denied, listed, absent = [], [], []
    for folder in (cfg.horos_data, cfg.backup_dir):
        if not folder.is_dir():
            absent.append(str(folder))
            continue
        try:
            lister(folder)
        except PermissionError as exc:
            denied.append(f"{folder} ({exc.strerror or 'Operation not permitted'})")
        else:
            listed.append(str(folder))
    if denied:
        if macos:
            fix = ("System Settings → Privacy & Security → Full Disk Access → + → add "
                   f"{python} (the Python launchd runs; Cmd-Shift-G to type the path), and Terminal for manual runs")
        else:
            fix = "check the folders' permissions (ls -ld) for the user that runs horos-backup"
        return Check("disk access", FAIL, "cannot list " + "; ".join(denied), fix)
    if not listed:
        return Check("disk access", SKIP, f"not checked: neither {' nor '.join(absent)} was found",
                     "fix the folder FAILs above, then run doctor again")
    note = f" from this process; launchd runs {python}, which needs Full Disk Access too" if macos else ""
    missing = f" ({', '.join(absent)} not found: not checked)" if absent else ""
    what = "Horos and backup folders can" if not absent else f"{listed[0]} can"
    return Check("disk access", PASS, f"{what} be listed{note}{missing}")


# -- output -------------------------------------------------------------------------------------------
def render(checks: Sequence[Check]) -> str:
    """Aligned text: one line per check, the fix indented below anything not PASS."""
    width = max((len(c.name) for c in checks), default=0)
    lines = []
    for c in checks:
        lines.append(f"{c.status:<4}  {c.name:<{width}}  {c.message}")
        if c.fix and c.status != PASS:
            lines.append(f"{'':4}  {'':<{width}}  fix: {c.fix}")
    counts = summary(checks)
    lines.append("doctor: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return "\n".join(lines)


def summary(checks: Sequence[Check]) -> Dict[str, int]:
    """Number of checks per status."""
    return {s: sum(1 for c in checks if c.status == s) for s in (PASS, WARN, FAIL, SKIP, INFO)}


def to_json(checks: Sequence[Check]) -> Dict[str, Any]:
    """Machine-readable result."""
    return {"ok": not exit_failed(checks), "summary": summary(checks), "checks": [asdict(c) for c in checks]}
