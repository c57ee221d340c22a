"""``YYYY_MM/SHA256SUMS``: the SHA-256 of every ZIP of a month folder, in ``sha256sum`` format.

One line per ZIP, ``<64 hex digits><two spaces><file name>``, sorted by name: what ``sha256sum -c``,
``shasum -a 256 -c`` on a Mac and ``rclone check --checkfile`` read, so anyone can check a month folder,
on the backup disk or on a mirror, without horos-backup (docs/design/mirror.md §2). The hashes come
from the ledger, where each was computed while its ZIP was written; the file is rewritten through
``durable`` (temp, sync, rename, folder sync) only when its content would change.

This module owns the format: it renders and parses it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from horos_async import durable

SUMS_NAME = "SHA256SUMS"
_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


def render(entries: Iterable[Tuple[str, str]]) -> bytes:
    """The file's bytes for ``(file name, sha256 hex)`` pairs (sorted by name; one line each)."""
    lines = []
    for name, sha in sorted(entries):
        if "\n" in name or "\\" in name or "/" in name or not re.fullmatch(r"[0-9a-f]{64}", sha or ""):
            # Our ZIP names never hold these (naming.py); sha256sum would need its escaped form.
            raise ValueError(f"cannot list {name!r} ({sha!r}) in {SUMS_NAME}")
        lines.append(f"{sha}  {name}\n")
    return "".join(lines).encode("utf-8")


def parse(data: bytes) -> Dict[str, str]:
    """File name -> sha256 from a ``SHA256SUMS`` file's bytes (lines it cannot read are skipped)."""
    out: Dict[str, str] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        m = _LINE.match(line)
        if m:
            out[m.group(2)] = m.group(1)
    return out


def read(folder: Path) -> Optional[Dict[str, str]]:
    """The ``SHA256SUMS`` of ``folder``, parsed; None when it has none."""
    try:
        return parse((folder / SUMS_NAME).read_bytes())
    except FileNotFoundError:
        return None


def refresh(folder: Path, entries: Iterable[Tuple[str, str]]) -> bool:
    """Blocking: make ``folder/SHA256SUMS`` list exactly ``entries``; True when it was (re)written.

    A folder that does not exist gets none (nothing to list); an empty list writes no file either.
    """
    body = render(entries)
    path = folder / SUMS_NAME
    if not folder.is_dir() or not body:
        return False
    try:
        if path.read_bytes() == body:
            return False
    except FileNotFoundError:
        pass
    durable.write_atomic(path, body, overwrite=True)
    return True


def by_month(rows: Iterable[Tuple[str, str]]) -> Dict[str, List[Tuple[str, str]]]:
    """Group ``(zip_path relative to backup_dir, sha256)`` rows into month folder -> [(file name, sha)]."""
    out: Dict[str, List[Tuple[str, str]]] = {}
    for rel, sha in rows:
        if not sha or "/" not in rel:
            continue
        month, name = rel.rsplit("/", 1)
        out.setdefault(month, []).append((name, sha))
    return out


def refresh_all(backup_dir: Path, rows: Iterable[Tuple[str, str]]) -> int:
    """Blocking: rewrite each month folder's ``SHA256SUMS`` that differs from ``rows`` (``(zip_path,
    sha256)`` of the ledger's ``ok`` ZIPs); how many were rewritten."""
    changed = 0
    for month, entries in by_month(rows).items():
        if refresh(backup_dir / month, entries):
            changed += 1
    return changed
