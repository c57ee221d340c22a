"""The LaunchAgent: render ``launchd/org.horos-backup.agent.plist.template`` for this Mac and (un)load it.

launchd starts ``horos-backup run --config <file>`` every ``start_interval`` seconds (or at fixed
calendar times) without a terminal and without the user's shell environment, so everything the run
needs is written into the plist: the absolute command inside its virtual environment, the absolute
config path, UTF-8 locale variables and the log files. The template is parsed as a plist and filled in
structurally (a path holding ``&`` or ``<`` cannot break the XML), checked, then written through
``durable.write_atomic``.

Only :func:`launchctl_runner` knows whether ``launchctl`` can really run: on macOS it runs it; elsewhere
(Linux CI, the tests) it prints each command instead. Tests inject their own runner and assert the
exact command lines, including the ``load -w``/``unload -w`` fallback for macOS versions or sessions
where ``bootstrap``/``bootout`` are not supported.
"""

from __future__ import annotations

import os
import plistlib
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from horos_async import durable, platform
from horos_async.config import Config
from horos_async.errors import ConfigError, LaunchdError

LABEL = platform.LAUNCHD_LABEL
PLIST_NAME = f"{LABEL}.plist"
TEMPLATE_NAME = f"{PLIST_NAME}.template"
PLIST_MODE = 0o644  # launchd refuses agents writable by others; readable is what it expects
OUT_LOG = "launchd.out.log"
ERR_LOG = "launchd.err.log"

Runner = Callable[[List[str]], Tuple[int, str]]
"""Runs one ``launchctl`` command line; returns (exit status, stdout+stderr text)."""

# Same content as the template file, used when the package was installed without the repository's
# launchd/ folder (a wheel). tests/test_ops_launchd.py proves the two never drift apart.
BUILTIN_TEMPLATE: Dict[str, Any] = {
    "Label": LABEL,
    "ProgramArguments": ["@PROGRAM@", "run", "--config", "@CONFIG@"],
    "EnvironmentVariables": {
        "HOROS_BACKUP_CONFIG": "@CONFIG@", "LANG": "en_US.UTF-8", "LC_ALL": "en_US.UTF-8",
        "PYTHONIOENCODING": "utf-8", "PYTHONUNBUFFERED": "1", "PATH": "@BIN_DIR@:/usr/bin:/bin:/usr/sbin:/sbin",
    },
    "RunAtLoad": True,
    "StartInterval": 600,
    "StandardOutPath": f"@LOG_DIR@/{OUT_LOG}",
    "StandardErrorPath": f"@LOG_DIR@/{ERR_LOG}",
    "ProcessType": "Background",
    "LowPriorityIO": True,
    "Nice": 10,
    "Umask": 0o027,
    "ExitTimeOut": 60,
}
REQUIRED_KEYS = ("Label", "ProgramArguments", "EnvironmentVariables", "RunAtLoad", "StandardOutPath",
                 "StandardErrorPath", "ProcessType", "LowPriorityIO", "Nice")

# What launchctl prints when bootstrap/bootout do not exist (before OS X 10.10) or the gui domain is
# not usable from this session (e.g. over SSH): then the legacy load/unload -w is the way.
_UNSUPPORTED = re.compile(r"unrecognized subcommand|unknown subcommand|not supported|does not support|"
                          r"\b125\b", re.I)
# What bootout prints when the agent is simply not loaded: nothing to undo.
_NOT_LOADED = re.compile(r"no such process|could not find|not find specified service|\b113\b|\b3:", re.I)
_TIME = re.compile(r"^(\d{1,2}):(\d{2})$")


def plist_path(home: Path) -> Path:
    """``~/Library/LaunchAgents/org.horos-backup.agent.plist`` under ``home``."""
    return platform.launchd_plist_path(home)


def program_path() -> Path:
    """The installed ``horos-backup`` command: next to this Python (its venv) first, else on PATH."""
    beside = Path(sys.executable).parent / "horos-backup"  # the venv's bin/, symlinks not resolved
    if beside.is_file():
        return beside.absolute()
    found = shutil.which("horos-backup")
    if found:
        return Path(found).absolute()
    raise LaunchdError(f"cannot find the horos-backup command next to {sys.executable} or on PATH; install "
                       f"horos-backup into this virtual environment (pip install 'horos-backup[tui]')")


def parse_calendar(text: str) -> List[Dict[str, int]]:
    """``"02:30,13:00"`` → StartCalendarInterval entries, sorted, duplicates removed."""
    times = set()
    for part in (p.strip() for p in text.split(",")):
        m = _TIME.match(part)
        if not m or int(m.group(1)) > 23 or int(m.group(2)) > 59:
            raise ConfigError(f"--calendar {text!r}: {part!r} is not a time; use HH:MM[,HH:MM...] with "
                              f"hours 00-23, e.g. --calendar 02:30,13:00")
        times.add((int(m.group(1)), int(m.group(2))))
    return [{"Hour": h, "Minute": mi} for h, mi in sorted(times)]


def load_template() -> Dict[str, Any]:
    """The template as a dict: the repository's ``launchd/`` file, else the built-in copy."""
    candidate = Path(__file__).resolve().parents[2] / "launchd" / TEMPLATE_NAME  # the checkout's launchd/
    if candidate.is_file():
        try:
            return plistlib.loads(candidate.read_bytes())
        except Exception as exc:  # expat and plistlib raise several types for a broken file
            raise LaunchdError(f"template {candidate} is not a valid plist ({exc}); restore it from "
                               f"the repository") from None
    return dict(BUILTIN_TEMPLATE)


def config_file(cfg: Config) -> Path:
    """The absolute config path the agent will use; refuse when there is none."""
    if cfg.source is None:
        raise ConfigError(
            "launchd runs horos-backup without a terminal and without your shell's environment, so it needs a "
            "config file to know where Horos and the backup disk are; the built-in defaults are not enough. "
            "Write one (horos-backup config > ~/horos-backup.toml, then edit it) and run "
            "'horos-backup launchd install --config ~/horos-backup.toml'")
    return Path(cfg.source).absolute()


def render(cfg: Config, *, program: Optional[Path] = None, calendar: Sequence[Dict[str, int]] = ()) -> bytes:
    """The plist for this machine, as XML bytes (not written anywhere)."""
    program = Path(program) if program is not None else program_path()
    values = {"@PROGRAM@": str(program), "@BIN_DIR@": str(program.parent), "@CONFIG@": str(config_file(cfg)),
              "@LOG_DIR@": str(cfg.log_dir)}

    def fill(node: Any) -> Any:
        if isinstance(node, str):
            for key, value in values.items():
                node = node.replace(key, value)
            return node
        if isinstance(node, list):
            return [fill(n) for n in node]
        if isinstance(node, dict):
            return {k: fill(v) for k, v in node.items()}
        return node

    doc = fill(load_template())
    doc.pop("StartInterval", None)
    doc.pop("StartCalendarInterval", None)
    if calendar:
        doc["StartCalendarInterval"] = [dict(c) for c in calendar]
    else:
        doc["StartInterval"] = int(cfg.start_interval)
    return plistlib.dumps(doc, fmt=plistlib.FMT_XML, sort_keys=True)


def validate(data: bytes) -> Dict[str, Any]:
    """Parse a rendered plist and check what launchd and the run need; returns it as a dict."""
    try:
        doc = plistlib.loads(data)
    except Exception as exc:
        raise LaunchdError(f"the rendered LaunchAgent is not a valid plist: {exc}") from None
    problems = [f"key {k} missing" for k in REQUIRED_KEYS if k not in doc]
    if doc.get("Label") != LABEL:
        problems.append(f"Label is {doc.get('Label')!r}, expected {LABEL}")
    args = doc.get("ProgramArguments") or []
    if not (isinstance(args, list) and len(args) >= 4 and all(isinstance(a, str) for a in args)):
        problems.append("ProgramArguments must be [program, 'run', '--config', config]")
        args = ["", "", "", ""]
    env = doc.get("EnvironmentVariables") or {}
    paths = {"program": args[0], "config": args[args.index("--config") + 1] if "--config" in args[:-1] else "",
             "HOROS_BACKUP_CONFIG": env.get("HOROS_BACKUP_CONFIG", ""),
             "StandardOutPath": doc.get("StandardOutPath", ""), "StandardErrorPath": doc.get("StandardErrorPath", "")}
    problems += [f"{name} {value!r} is not an absolute path" for name, value in paths.items()
                 if not (isinstance(value, str) and os.path.isabs(value))]
    if paths["config"] != paths["HOROS_BACKUP_CONFIG"]:
        problems.append("--config and HOROS_BACKUP_CONFIG name different files")
    if "run" not in args[1:2]:
        problems.append("ProgramArguments must start the 'run' command")
    interval, calendar = doc.get("StartInterval"), doc.get("StartCalendarInterval")
    if (interval is None) == (calendar is None):
        problems.append("exactly one of StartInterval and StartCalendarInterval is needed")
    if interval is not None and (not isinstance(interval, int) or isinstance(interval, bool) or interval < 60):
        problems.append(f"StartInterval {interval!r} must be a whole number of seconds >= 60")
    if calendar is not None:
        entries = calendar if isinstance(calendar, list) else [calendar]
        if not entries or not all(isinstance(e, dict) and 0 <= e.get("Hour", -1) <= 23
                                  and 0 <= e.get("Minute", -1) <= 59 for e in entries):
            problems.append(f"StartCalendarInterval {calendar!r} needs Hour 0-23 and Minute 0-59")
    if re.search(rb"@[A-Z_]+@", data):
        problems.append("a @PLACEHOLDER@ was left unfilled")
    if problems:
        raise LaunchdError("the rendered LaunchAgent is wrong: " + "; ".join(problems))
    return doc


# -- running launchctl ----------------------------------------------------------------------------------
def launchctl_runner(out: Callable[[str], None] = print, macos: Optional[bool] = None) -> Runner:
    """The real ``launchctl`` on macOS; elsewhere a runner that prints each command and reports success."""
    if platform.is_macos() if macos is None else macos:
        def run(argv: List[str]) -> Tuple[int, str]:
            try:
                done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            except (OSError, subprocess.TimeoutExpired) as exc:
                return 127, str(exc)
            return done.returncode, (done.stdout or "") + (done.stderr or "")
        return run

    def show(argv: List[str]) -> Tuple[int, str]:
        out("  " + " ".join(_quote(a) for a in argv))
        return 0, ""
    return show


def _quote(arg: str) -> str:
    return arg if re.fullmatch(r"[\w@%+=:,./-]+", arg) else "'" + arg.replace("'", "'\\''") + "'"


def _check(argv: List[str], result: Tuple[int, str]) -> None:
    code, text = result
    if code != 0:
        raise LaunchdError(f"'{' '.join(argv)}' failed (exit {code}): {text.strip() or 'no output'}; check the "
                           f"plist with 'plutil -lint' and the agent with 'launchctl print gui/{os.getuid()}/{LABEL}'")


def install(cfg: Config, *, home: Path, program: Optional[Path] = None, calendar: Sequence[Dict[str, int]] = (),
            runner: Optional[Runner] = None, uid: Optional[int] = None,
            out: Callable[[str], None] = print) -> Path:
    """Render, check and durably write the agent, then (re)load it; returns the plist path."""
    data = render(cfg, program=program, calendar=calendar)
    validate(data)
    path = plist_path(home)
    durable.write_atomic(path, data, mode=PLIST_MODE, overwrite=True)
    out(f"wrote {path}")
    if cfg.backup_dir.is_dir():
        durable.ensure_dir(cfg.log_dir)  # launchd creates the log files, never their folder
    else:
        out(f"note: {cfg.backup_dir} does not exist yet: launchd output is lost until it does "
            f"(is the backup disk mounted?)")
    run = runner or launchctl_runner(out)
    uid = os.getuid() if uid is None else uid
    domain, service = f"gui/{uid}", f"gui/{uid}/{LABEL}"
    run(["launchctl", "bootout", service])  # unload an older copy; "not loaded" is fine
    run(["launchctl", "enable", service])  # clears a "disabled" override left by unload -w
    argv = ["launchctl", "bootstrap", domain, str(path)]
    code, text = run(argv)
    if code != 0:
        if not _UNSUPPORTED.search(text):
            _check(argv, (code, text))
        out(f"launchctl bootstrap is not available here ({text.strip()}); using launchctl load -w")
        run(["launchctl", "unload", "-w", str(path)])
        argv = ["launchctl", "load", "-w", str(path)]
        _check(argv, run(argv))
    return path


def uninstall(*, home: Path, runner: Optional[Runner] = None, uid: Optional[int] = None,
              out: Callable[[str], None] = print) -> bool:
    """Unload the agent and remove its plist; returns whether a plist file was removed."""
    path = plist_path(home)
    run = runner or launchctl_runner(out)
    uid = os.getuid() if uid is None else uid
    argv = ["launchctl", "bootout", f"gui/{uid}/{LABEL}"]
    code, text = run(argv)
    if code != 0 and _UNSUPPORTED.search(text):
        if path.exists():
            argv = ["launchctl", "unload", "-w", str(path)]
            code, text = run(argv)
            if code != 0 and not _NOT_LOADED.search(text):
                _check(argv, (code, text))
    elif code != 0 and not _NOT_LOADED.search(text):
        _check(argv, (code, text))  # still loaded: keep the plist so the state stays explainable
    if not path.exists():
        out(f"{path} was not installed")
        return False
    path.unlink()
    durable.sync_dir(path.parent)
    out(f"removed {path}")
    return True


def calendar_outside_window(calendar: Sequence[Dict[str, int]], window: str) -> List[str]:
    """Calendar times at which ``run_window`` would make the run do nothing (to warn about)."""
    import datetime as dt

    from horos_async.schedule import in_window

    day = dt.date(2000, 1, 3)
    return [f"{c['Hour']:02d}:{c['Minute']:02d}" for c in calendar
            if not in_window(dt.datetime.combine(day, dt.time(c["Hour"], c["Minute"])), window)]
