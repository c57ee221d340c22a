"""Shared by the mirror tests: a backed-up demo library with a config file that lists mirror destinations."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
from pathlib import Path
from typing import Dict, List, Sequence

from horos_async import cli
from horos_async import config as config_mod
from horos_async.state import sums

from helpers import backed_up_library


def with_mirrors(cfg, root: Path, *mirrors: config_mod.MirrorConfig) -> Path:
    """Write ``cfg`` plus ``mirrors`` as a config file; its path (for ``cli.main``)."""
    path = root / "cfg.toml"
    path.write_text(config_mod.render_toml(cfg.with_overrides(mirror=tuple(mirrors))), encoding="utf-8")
    return path


def library(root: Path):
    """(lib, cfg) of a demo library backed up once."""
    return backed_up_library(root, studies=1)


def main(*args: str) -> int:
    return cli.main(list(args))


def ledger_rows(cfg, sql: str, *params) -> List[tuple]:
    con = sqlite3.connect(str(cfg.ledger_path))
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def ok_zips(cfg) -> Dict[str, str]:
    """zip_path -> sha256 of the primary's ``ok`` ZIPs, as the ledger has them."""
    return dict(ledger_rows(cfg, "SELECT zip_path, sha256 FROM zips WHERE status='ok'"))


def copies(cfg, dest: str) -> Dict[str, tuple]:
    """path -> (stored_as, sha256, status) of the mirror copies the ledger records at ``dest``."""
    return {r[0]: r[1:] for r in ledger_rows(cfg, "SELECT path, COALESCE(stored_as, path), sha256, status "
                                                   "FROM mirror_copies WHERE dest=?", dest)}


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sha256sum_c(folder: Path) -> None:
    """``sha256sum -c`` (GNU coreutils, the format ``shasum -a 256 -c`` reads) accepts every month folder."""
    checked = 0
    for month in sorted(p for p in folder.iterdir() if (p / sums.SUMS_NAME).is_file()):
        done = subprocess.run(["sha256sum", "--strict", "-c", sums.SUMS_NAME], cwd=month, capture_output=True,
                              text=True)
        assert done.returncode == 0, (month, done.stdout, done.stderr)
        checked += 1
    assert checked, f"no {sums.SUMS_NAME} under {folder}"


def assert_mirrored(cfg, dest_root: Path, dest: str, paths: Sequence[str] = ()) -> None:
    """Every ``ok`` ZIP has a recorded copy at ``dest``, byte-identical under ``dest_root``."""
    recorded = copies(cfg, dest)
    for rel, sha in ok_zips(cfg).items():
        assert rel in recorded and recorded[rel][2] == "ok", rel
        stored = dest_root / recorded[rel][0]
        assert file_sha(stored) == sha == recorded[rel][1], rel
