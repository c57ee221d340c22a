"""Logging set-up: a rotating file in ``backup_dir/logs/`` plus warnings on stderr (launchd keeps it)."""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys

from horos_async.config import Config

LOG_NAME = "horos-backup.log"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup(cfg: Config, *, verbose: bool = False, to_file: bool = True, interactive: bool = False) -> logging.Logger:
    """Configure the ``horos_async`` logger once per process; returns it.

    ``interactive``: a person watches per-study progress lines, so stderr only carries errors.
    """
    logger = logging.getLogger("horos_async")
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.DEBUG if verbose else (logging.ERROR if interactive else logging.WARNING))
    err.setFormatter(logging.Formatter("horos-backup: %(levelname)s: %(message)s"))
    logger.addHandler(err)
    if to_file:
        os.makedirs(cfg.log_dir, mode=0o750, exist_ok=True)
        fh = logging.handlers.RotatingFileHandler(cfg.log_dir / LOG_NAME, maxBytes=cfg.log_max_bytes,
                                                  backupCount=cfg.log_backup_count, encoding="utf-8")
        fh.setFormatter(logging.Formatter(FORMAT))
        logger.addHandler(fh)
    return logger
