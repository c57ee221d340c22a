"""``horos-backup index snapshot|list|restore``: verified snapshots of Horos's own index, and getting it back."""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

from horos_async import durable, guards
from horos_async.blocking import offload
from horos_async.cli.common import add_common, config_from, err
from horos_async.cli.signals import run_stoppable, stopped_code
from horos_async.config import Config
from horos_async.errors import EXIT_CHECK, EXIT_OK, DatabaseUnavailable, SnapshotError, VolumeError
from horos_async.guards import human_bytes
from horos_async.ops import index_restore, index_snapshot, index_store, index_upkeep


def build_parser_index(sub) -> None:
    p = sub.add_parser("index", help="snapshots of Horos's own index (Database.sql and its side files)")
    verbs = p.add_subparsers(dest="index_command", metavar="ACTION")
    verbs.required = True
    s = verbs.add_parser("snapshot", help="take a verified snapshot now (then apply retention)")
    add_common(s)
    s.add_argument("--json", action="store_true", help="print the snapshot's manifest")
    s.set_defaults(func=do_index_snapshot)
    ls = verbs.add_parser("list", help="the snapshots: when, size, studies, images, integrity, side files")
    add_common(ls)
    ls.add_argument("--check", action="store_true", help="re-read every file against its SHA-256 (exit 9 if one fails)")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=do_index_list)
    r = verbs.add_parser("restore", help="write a snapshot back: into an empty folder, or as Horos's live index")
    add_common(r)
    r.add_argument("snapshot", metavar="SNAPSHOT", help="a name from 'index list' (e.g. 2026-05-03_021500), a path, "
                                                        "or 'latest'")
    where = r.add_mutually_exclusive_group(required=True)
    where.add_argument("--to", type=Path, metavar="DIR", help="write Database.sql and the side files into DIR (empty)")
    where.add_argument("--into-horos", action="store_true",
                       help="replace Horos's live index (Horos must be quit; the current index is moved aside)")
    r.set_defaults(func=do_index_restore)


def do_index_snapshot(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    guards.check_sentinel(cfg)
    guards.check_volumes(cfg)
    guards.check_backup_writable(cfg)
    os.umask(0o027)
    cancel = threading.Event()
    box: list = []

    def make():
        async def work():
            with guards.RunLock(cfg.lock_path):
                events = await offload(index_upkeep.retention_events, cfg)
                box.append(await offload(index_snapshot.take_and_prune, cfg, events, cancel=cancel, log_line=err))
        return work, cancel.set

    durable.ensure_dir(cfg.work_dir)  # where the run lock lives (before the event loop starts)
    try:
        _, stopped = run_stoppable(make)
    except index_snapshot.Stopped:
        return stopped_code(EXIT_OK, True)
    except index_snapshot.Busy as exc:
        raise DatabaseUnavailable(f"no consistent snapshot now: {exc}") from None
    if stopped or not box:
        return stopped_code(EXIT_OK, True)
    taken = box[0]
    m = taken.snapshot.manifest
    if args.json:
        print(m.to_bytes().decode("utf-8"), end="")
        return EXIT_OK
    print(f"horos-backup: index snapshot {cfg.index_dir / m.name}")
    print(f"  {_counts(m)}; {human_bytes(m.db_bytes)} database, {human_bytes(taken.snapshot.size)} stored; "
          f"integrity {m.integrity}")
    print(f"  method {m.method}: Horos's database locked {m.lock_ms:.1f} ms; took {m.duration_s:.1f} s")
    print(f"  side files: {', '.join(m.side_present) or 'none'}"
          + (f"; absent: {', '.join(m.side_absent)}" if m.side_absent else ""))
    if taken.pruned:
        print(f"  retention removed {len(taken.pruned)} older snapshot(s): {', '.join(taken.pruned)}")
    return EXIT_OK


def do_index_list(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    missing = guards.backup_dir_missing(cfg)
    if missing:
        raise VolumeError(missing)
    snaps = index_store.list_snapshots(cfg.index_dir, check=args.check)
    kept = index_store.reasons(cfg.index_dir, keep_daily=cfg.index_keep_daily, keep_weekly=cfg.index_keep_weekly,
                               keep_monthly=cfg.index_keep_monthly, zone=index_snapshot.zone_of(cfg),
                               events=index_upkeep.retention_events(cfg))
    if args.json:
        print(json.dumps([{"name": s.name, "path": str(s.path), "verified": s.verified, "problem": s.problem,
                           "kept_because": kept.get(s.name, ""),
                           "manifest": json.loads(s.manifest.to_bytes()) if s.manifest else None} for s in snaps],
                         indent=2, ensure_ascii=False))
    else:
        print(render_list(snaps, kept, time.time(), cfg))
    return EXIT_CHECK if args.check and any(not s.verified for s in snaps) else EXIT_OK


def render_list(snaps, kept, now: float, cfg: Config) -> str:
    """The table of ``index list``."""
    if not snaps:
        return (f"no snapshots of Horos's index in {cfg.index_dir} yet; 'horos-backup index snapshot' takes one "
                f"(the scheduled run does every index_snapshot_hours = {cfg.index_snapshot_hours:g})")
    head = ("Snapshot", "Age", "Stored", "Studies", "Series", "Images", "Integrity", "Lock ms", "Method", "Side files")
    body = []
    for s in snaps:
        m = s.manifest
        if m is None:
            body.append((s.name, "", "", "", "", "", "NOT USABLE: " + s.problem, "", "", ""))
            continue
        state = "ok" if s.verified else "BAD: " + s.problem
        body.append((s.name, _age(now - m.created), human_bytes(s.size), str(m.counts.get("studies", "")),
                     str(m.counts.get("series", "")), str(m.counts.get("images", "")), state, f"{m.lock_ms:.0f}",
                     m.method, ", ".join(m.side_present) or "-"))
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)).rstrip() for b in body]
    pinned = [f"{name}: {why}" for name, why in kept.items() if why.startswith("last before")]
    if pinned:
        lines.append("kept whatever retention says: " + "; ".join(pinned))
    lines.append(f"{len(snaps)} snapshot(s) in {cfg.index_dir}; restore one with "
                 f"'horos-backup index restore NAME --to DIR' (or --into-horos with Horos quit)")
    return "\n".join(lines)


def do_index_restore(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    os.umask(0o022)  # a restored index is Horos's, readable as Horos's own files are
    try:
        snap = index_store.find(cfg.index_dir, args.snapshot)
    except LookupError as exc:
        raise SnapshotError(str(exc)) from None
    if args.into_horos:
        done = index_restore.restore_into_horos(cfg, snap)
        print(f"horos-backup: Horos's index restored from snapshot {snap.name} into {done.dest} ({_counts(done)})")
        if done.added:
            print(f"  {done.added} report/ROI files that were missing were added back")
    else:
        done = index_restore.restore_to(snap, args.to)
        print(f"horos-backup: snapshot {snap.name} written to {done.dest} ({_counts(done)}); checked: "
              f"integrity ok, row counts as recorded")
    for note in done.notes:
        print(f"  next: {note}")
    return EXIT_OK


def _counts(x) -> str:
    c = x.counts
    return f"{c.get('studies', 0)} studies, {c.get('series', 0)} series, {c.get('images', 0)} images"


def _age(seconds: float) -> str:
    if seconds < 3600:
        return f"{max(0, seconds) / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"
