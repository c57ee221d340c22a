"""``horos-backup export``: chosen studies out of the backup, onto a folder or a USB stick.

Studies come from the backup (``export_select``), never from Horos. Every ZIP is verified first: each
member inflated to its end (CRC-32) and hashed (SHA-256), the hashes checked against the ZIP's
manifest when it has one; a ZIP that fails is refused and the others go on. Then, per ``--layout``:

* ``series``: each study in ``DEST/<ZIP name>/``, its members as they are in the ZIP (with the manifest);
* ``dicom-media``: one File-set for the whole stick, a DICOMDIR at ``DEST/`` (pydicom's ``FileSet``,
  PS3.10 File IDs), written last, so a stick without its DICOMDIR is visibly unfinished;
* ``--zip``: a copy of each study's ZIP in ``DEST/``, the copy read back and checked before it is named.

Every file is written under a hidden temp name, its SHA-256 compared with the verified one, synced,
and published without ever replacing an existing file (docs/design/durability.md §1). The space the
export needs is checked against the free space at ``DEST`` before anything is written.
docs/design/manifest.md §6.
"""

from __future__ import annotations

import os
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from horos_async import durable, guards
from horos_async.backup import archive, dicom_media, zip_manifest, zipcheck
from horos_async.config import Config
from horos_async.errors import ConfigError, DiskFull
from horos_async.ops.restore import check_destination, free_bytes
from horos_async.state.ledger_records import ExportRecord

CHUNK = 1 << 20
LAYOUTS = ("series", "dicom-media")
_SLACK = 4096  # bytes per file: its last block and its directory entry
_HEADER_BYTES = 1 << 16

Say = Callable[[str], None]


@dataclass
class Exported:
    """What happened to one study."""

    study: ExportRecord
    where: str = ""
    """Where it went (a folder, a ZIP, or ``DEST`` for dicom-media)."""
    files: int = 0
    bytes: int = 0
    skipped: int = 0
    """Files already there (never overwritten)."""
    error: str = ""
    """Why the study was refused or not completely written ("" when all went well)."""


@dataclass
class ExportResult:
    """The whole export."""

    items: List[Exported] = field(default_factory=list)
    dicomdir: Optional[Path] = None

    @property
    def failed(self) -> List[Exported]:
        return [i for i in self.items if i.error]


def _verified(path: Path) -> Tuple[List[archive.BuiltMember], str]:
    """(members with their SHA-256, "") when the ZIP is whole and agrees with its manifest, else ([], why)."""
    try:
        members = zipcheck.verify_zip(path, deep=True, hashes=True)
    except archive.ZipInvalid as exc:
        return [], f"fails verification: {exc}"
    except OSError as exc:
        return [], f"cannot be read: {exc.strerror or exc}"
    if zip_manifest.MANIFEST_NAME in {m.name for m in members}:
        doc = zip_manifest.read(path)
        problems = zip_manifest.check_members(doc, members) if doc is not None else ["its manifest is unreadable"]
        if problems:
            return [], f"disagrees with its manifest: {problems[0]}"
    return members, ""


def needed_bytes(cfg: Config, rows: Sequence[ExportRecord], as_zip: bool) -> int:
    """What the export writes at most: the ZIPs (``--zip``), or their members' sizes, plus a block a file."""
    total = 0
    for r in rows:
        path = cfg.backup_dir / r.zip_path
        if as_zip:
            total += int(r.zip_size or 0) + _SLACK
            continue
        try:
            with zipfile.ZipFile(path) as zf:
                total += sum(i.file_size + _SLACK for i in zf.infolist())
        except (OSError, zipfile.BadZipFile):
            total += int(r.zip_size or 0) * 3  # refused later; counted generously
    return total


def check_room(cfg: Config, rows: Sequence[ExportRecord], dest: Path, as_zip: bool) -> int:
    """Raise DiskFull (exit 6) when the export cannot fit at ``dest``; nothing is written then."""
    need, free = needed_bytes(cfg, rows, as_zip), free_bytes(dest)
    if need > free:
        raise DiskFull(f"the export needs {guards.human_bytes(need)}, only {guards.human_bytes(free)} free at "
                       f"{dest}; nothing was written. Export fewer studies (--date-from/--date-to), or use a "
                       f"larger disk")
    return need


def run_export(cfg: Config, rows: Sequence[ExportRecord], dest: Path, *, layout: str = "series",
               as_zip: bool = False, say: Say = lambda line: None) -> ExportResult:
    """Export ``rows`` to ``dest``; one study's problem never stops the others (see ``Exported.error``)."""
    if layout not in LAYOUTS:
        raise ConfigError(f"--layout {layout!r}: one of {', '.join(LAYOUTS)}")
    dest = check_destination(dest)
    if layout == "dicom-media" and not as_zip and os.path.lexists(dest / zip_manifest.DICOMDIR_NAME):
        raise ConfigError(f"{dest} already holds a DICOMDIR: export onto an empty folder or stick (nothing is "
                          f"ever overwritten); nothing was written")
    need = check_room(cfg, rows, dest, as_zip)
    say(f"export: {len(rows)} studies, up to {guards.human_bytes(need)}, to {dest}")
    if layout == "dicom-media" and not as_zip:
        return _to_media(cfg, rows, dest, say)
    result = ExportResult()
    for n, r in enumerate(rows, 1):
        item = Exported(r)
        path = cfg.backup_dir / r.zip_path
        members, why = _verified(path)
        if why:
            item.error = f"REFUSED {r.zip_path}: {why}; nothing written for this study"
        elif as_zip:
            _copy_zip(path, dest / path.name, members, item)
        else:
            _extract_all(path, dest / path.stem, members, item)
        result.items.append(item)
        say(f"[{n}/{len(rows)}] " + (item.error or _line(item)))
    return result


def _line(item: Exported) -> str:
    skipped = f", {item.skipped} already there (never overwritten)" if item.skipped else ""
    return f"{item.where}: {item.files} files, {item.bytes / 1e6:.1f} MB, CRC and SHA-256 checked{skipped}"


def _write_checked(source, final: Path, sha256: str, mtime: Optional[float] = None) -> Optional[int]:
    """Stream ``source`` into ``final`` via a hidden temp file, checking its SHA-256 before publishing;
    None when ``final`` already exists. Raises ValueError when the bytes are not the verified ones."""
    return durable.write_stream(final, source, tag="export", sha256=sha256, mtime=mtime, chunk=CHUNK)


def _safe_target(root: Path, name: str) -> Path:
    if not archive.safe_member_name(name):
        raise ValueError(f"member {name!r} has an unsafe name")
    return root.joinpath(*name.split("/"))


def _extract_all(path: Path, root: Path, members: List[archive.BuiltMember], item: Exported) -> None:
    """``--layout series``: the ZIP's members into ``root``, each checked against its verified SHA-256."""
    item.where = str(root)
    sha = {m.name: m.sha256 for m in members}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                final = _safe_target(root, info.filename)
                with zf.open(info) as src:  # zipfile checks the CRC at the end of the member
                    stamp = time.mktime(info.date_time + (0, 0, -1))
                    n = _write_checked(src, final, sha.get(info.filename, ""), stamp)
                if info.filename not in zip_manifest.SPECIAL:  # the manifest comes along, uncounted
                    _count(item, n)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        item.error = f"STOPPED {path.name}: {_why(exc)}; files written so far are complete and checked"


def _copy_zip(path: Path, final: Path, members: List[archive.BuiltMember], item: Exported) -> None:
    """``--zip``: copy the ZIP, read the copy back (every CRC and SHA-256) before naming it."""
    item.where = str(final)
    if os.path.lexists(final):
        item.skipped += 1
        return

    def read_back(tmp: Path) -> None:
        copied = zipcheck.verify_zip(tmp, members, deep=True, hashes=True)
        want = {m.name: m.sha256 for m in members}
        bad = [m.name for m in copied if m.sha256 != want.get(m.name)]
        if bad:
            raise ValueError(f"the copy of {bad[0]} differs from the original (SHA-256)")

    try:
        with open(path, "rb") as src:
            written = durable.write_stream(final, src, tag="export", check=read_back, chunk=CHUNK)
    except (OSError, ValueError, archive.ZipInvalid) as exc:
        item.error = f"STOPPED {path.name}: {_why(exc)}; the copy was removed"
        return
    if written is None:  # appeared meanwhile: never overwritten
        item.skipped += 1
        return
    item.files, item.bytes = sum(1 for m in members if m.name not in zip_manifest.SPECIAL), final.stat().st_size


def _to_media(cfg: Config, rows: Sequence[ExportRecord], dest: Path, say: Say) -> ExportResult:
    """``--layout dicom-media``: one File-set for every study, its DICOMDIR at ``dest`` written last."""
    result = ExportResult()
    plan: List[Tuple[Exported, Path, List[str], Dict[str, str]]] = []
    headers: List[Optional[dicom_media.Header]] = []
    for r in rows:
        item = Exported(r, where=str(dest))
        result.items.append(item)
        path = cfg.backup_dir / r.zip_path
        members, why = _verified(path)
        if why:
            item.error = f"REFUSED {r.zip_path}: {why}; nothing written for this study"
            continue
        names = [m.name for m in members if m.name not in zip_manifest.SPECIAL and not m.name.endswith("/")]
        with zipfile.ZipFile(path) as zf:
            for name in names:
                with zf.open(name) as f:
                    head = f.read(_HEADER_BYTES)
                ds = dicom_media.read_header(head) or dicom_media.read_header(zf.read(name))
                folder = name.rsplit("/", 1)[0] if "/" in name else ""
                headers.append(dicom_media.Header(ds, f"{r.key}|{folder}") if ds is not None else None)
        plan.append((item, path, names, {m.name: m.sha256 for m in members}))
    if not plan:
        return result
    layout = dicom_media.lay_out(headers)
    targets = [dest.joinpath(*n.split("/")) for n in layout.names]
    taken = [t for t in targets if os.path.lexists(t)]
    if taken:
        raise ConfigError(f"{taken[0]} already exists: export onto an empty folder or stick (nothing is ever "
                          f"overwritten); nothing was written")
    at = 0
    for n, (item, path, names, sha) in enumerate(plan, 1):
        try:
            with zipfile.ZipFile(path) as zf:
                for name in names:
                    with zf.open(name) as src:
                        _count(item, _write_checked(src, targets[at], sha.get(name, "")))
                    at += 1
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            item.error = f"STOPPED {path.name}: {_why(exc)}"
            at = sum(len(p[2]) for p in plan[:n])
        say(f"[{n}/{len(plan)}] " + (item.error or _line(item).replace(str(dest), item.study.zip_path, 1)))
    if any(i.error for i, *_ in plan):
        say("export: the DICOMDIR is NOT written because a study failed: the folder is not a complete File-set")
        return result
    if layout.dicomdir:
        durable.write_atomic(dest / zip_manifest.DICOMDIR_NAME, layout.dicomdir, overwrite=False)
        result.dicomdir = dest / zip_manifest.DICOMDIR_NAME
    if layout.unreferenced:
        say(f"export: {layout.unreferenced} file(s) the DICOMDIR cannot reference (not DICOM, or a repeated "
            f"SOP Instance UID) are in {dest / dicom_media.UNREFERENCED}")
    return result


def _count(item: Exported, n: Optional[int]) -> None:
    if n is None:
        item.skipped += 1
    else:
        item.files, item.bytes = item.files + 1, item.bytes + n


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)
