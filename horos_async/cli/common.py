"""What every command module shares: the common flags, the config they resolve to, and output helpers."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from pathlib import Path

from horos_async import config as config_mod
from horos_async.config import Config

HIDDEN = argparse.SUPPRESS


def add_common(p: argparse.ArgumentParser) -> None:
    """The flags every command that reads the config takes."""
    p.add_argument("--config", type=Path, help="config file (default: $HOROS_BACKUP_CONFIG, else built-in defaults)")
    p.add_argument("--horos-data", type=Path, help="override 'horos_data': the 'Horos Data' folder")
    p.add_argument("--backup-dir", type=Path, help="override 'backup_dir': where ZIPs and the ledger go")
    p.add_argument("-v", "--verbose", action="store_true", help="more detail on stderr")


def config_from(args: argparse.Namespace) -> Config:
    """Config from --config / $HOROS_BACKUP_CONFIG / defaults, with the flag overrides, validated.

    When no config file was found, ``args.using_defaults`` is set: ``cli.main`` then says so beside
    any error (a default path such as /Volumes/PACS is rarely this Mac's).
    """
    args.using_defaults = getattr(args, "config", None) is None and not os.environ.get(config_mod.ENV_VAR)
    cfg = config_mod.load_with_overrides(getattr(args, "config", None), horos_data=getattr(args, "horos_data", None),
                                         backup_dir=getattr(args, "backup_dir", None))
    args.using_defaults = cfg.source is None
    return cfg


def defaults_note(args: argparse.Namespace) -> None:
    """On stderr: the error above came with the built-in defaults, because no config was given."""
    if getattr(args, "using_defaults", False):
        err(f"horos-backup: ({config_mod.DEFAULTS_NOTE})")


def err(line: str) -> None:
    """One line for the person at the terminal, on stderr."""
    print(line, file=sys.stderr, flush=True)


def say(text: str) -> None:
    """One progress or summary line. A reader that went away (``run --progress | head``) must not stop the
    backup or change its exit code: the rest of the output goes to /dev/null."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        silence_stdout()


def silence_stdout() -> None:
    """Point stdout at /dev/null so the flush at interpreter exit does not fail a second time."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout replaced by a test harness: nothing to silence
        pass


def program(name: str) -> str:
    """How to type ``name`` in a shell: the bare name when it is on PATH, else its path beside this Python.

    ``make demo`` installs into ``.venv/bin``, which is usually not on PATH: a bare "horos-backup" there
    would answer "command not found".
    """
    here = Path(sys.argv[0]).absolute().parent if Path(sys.argv[0]).name.startswith("horos-") else None
    for folder in (here, Path(sys.executable).parent):
        if folder is not None and (folder / name).is_file():
            beside = folder / name
            break
    else:
        return name
    on_path = shutil.which(name)
    if on_path and Path(on_path).resolve() == beside.resolve():
        return name
    return shlex.quote(str(beside))
