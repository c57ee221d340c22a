"""``horos-backup export``: chosen studies from the backup onto a folder or USB stick (verified, never overwriting)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from horos_async.cli.common import add_common, config_from, err
from horos_async.errors import EXIT_CHECK, EXIT_OK, ConfigError
from horos_async.ops import export, export_select


def build_parser_export(sub) -> None:
    e = sub.add_parser("export", help="copy chosen studies from the backup to a folder or USB stick "
                                      "(series folders, a DICOMDIR, or ZIPs)")
    add_common(e)
    e.add_argument("--to", type=Path, required=True, metavar="DIR", help="the folder or stick to write to")
    e.add_argument("--patient-id", metavar="ID", help="studies of this patient ID (MRN)")
    e.add_argument("--name", metavar="TEXT", help="patients whose name contains TEXT (accents and case ignored)")
    e.add_argument("--accession", metavar="N", help="the study with this accession number")
    e.add_argument("--date-from", metavar="YYYY-MM-DD", help="studies on or after this date")
    e.add_argument("--date-to", metavar="YYYY-MM-DD", help="studies on or before this date")
    e.add_argument("--list", type=Path, metavar="FILE",
                   help="one patient ID per line (or 'name: TEXT', 'accession: N', 'uid: UID'); # comments")
    e.add_argument("--layout", choices=export.LAYOUTS, default="series",
                   help="series: a folder per study (default); dicom-media: one DICOMDIR for the whole stick")
    e.add_argument("--zip", action="store_true", help="one portable ZIP per study instead of files")
    e.add_argument("--dry-run", action="store_true", help="list the studies that would be exported, write nothing")
    e.set_defaults(func=do_export)


def do_export(args: argparse.Namespace) -> int:
    os.umask(0o027)
    cfg = config_from(args)
    if args.zip and args.layout != "series":
        raise ConfigError("--zip writes the ZIPs as they are: leave out --layout")
    criteria = export_select.Criteria(
        patient_id=args.patient_id, name=args.name, accession=args.accession,
        date_from=export_select.check_date("--date-from", args.date_from),
        date_to=export_select.check_date("--date-to", args.date_to))
    lines = export_select.read_list(args.list) if args.list else []
    rows, unmatched = export_select.select(cfg, criteria, lines)
    for line in unmatched:
        err(f"horos-backup: --list line {line.number} ({line.kind} {line.value!r}) matches no backed-up study")
    if not rows:
        raise ConfigError("no backed-up study matches the selection: check it with 'horos-backup catalog "
                          "--search TEXT'; nothing was written")
    if args.dry_run:
        for r in rows:
            print(f"{(r.study_date or '')[:10]:10}  {r.patient_id or '-':14}  {r.patient_name or ''}  {r.zip_path}")
        print(f"{len(rows)} stud{'y' if len(rows) == 1 else 'ies'} would be exported")
        return EXIT_CHECK if unmatched else EXIT_OK
    result = export.run_export(cfg, rows, args.to, layout=args.layout, as_zip=args.zip, say=print)
    failed = result.failed
    done = len(result.items) - len(failed)
    tail = f"; DICOMDIR {result.dicomdir}" if result.dicomdir else ""
    print(f"export: {done} of {len(result.items)} studies written to {args.to}, every CRC and SHA-256 checked{tail}")
    if failed:
        err(f"horos-backup: {len(failed)} stud{'y' if len(failed) == 1 else 'ies'} not exported (see the REFUSED and "
            f"STOPPED lines): 'horos-backup verify --deep' checks the backup; the others were written")
    return EXIT_CHECK if failed or unmatched else EXIT_OK
