"""The benchmarks' large store: a ``Database.sql`` with 130,000 studies and millions of image rows, no files.

Kept apart from the test fixtures: scripts/bench_plan.py and scripts/bench_index.py build it once.
"""

from __future__ import annotations

import datetime as dt
import random
import sqlite3
from pathlib import Path
from typing import List

from horos_async.demo import dicom as dd
from horos_async.demo.cases import FIRST_NAMES, LAST_NAMES
from horos_async.demo.schema import (SCHEMA, bookkeeping, core_data_time, create_indexes, horos_patient_uid,
                                     horos_study_modality)


def build_large_database(path: Path, *, studies: int = 130_000, images_per_study: int = 40, seed: int = 1) -> None:
    """A ``Database.sql`` with rows only (no files) for planning benchmarks: millions of ZIMAGE rows."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; choose a new file for the large database")
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        # Nothing to protect while building: no journal, no fsync, and the indexes after the rows.
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-200000")
        conn.executescript(SCHEMA)
        conn.execute("BEGIN")
        prefix = dd.make_uid(seed, "large")[:40] + "."
        kinds = (("CT",), ("CT",), ("CT",), ("MR",), ("MR",), ("MR",), ("PT", "CT"), ("PT",), ("CR",), ("US",))
        zone = dt.timezone(dt.timedelta(hours=-3))
        first_day = core_data_time(dt.datetime(2015, 1, 1, tzinfo=zone))
        series_pk = image_pk = 0
        study_rows: List[tuple] = []
        series_rows: List[tuple] = []
        image_rows: List[tuple] = []

        def flush() -> None:
            conn.executemany("INSERT INTO ZSTUDY (Z_PK, Z_ENT, Z_OPT, ZHASDICOM, ZNUMBEROFIMAGES, ZDATE, ZDATEADDED, "
                             "ZDATEOFBIRTH, ZMODALITY, ZNAME, ZPATIENTID, ZPATIENTUID, ZSTUDYINSTANCEUID, "
                             "ZACCESSIONNUMBER) VALUES (?, 5, 2, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", study_rows)
            conn.executemany("INSERT INTO ZSERIES (Z_PK, Z_ENT, Z_OPT, ZID, ZNUMBEROFIMAGES, ZSTUDY, ZDATE, "
                             "ZMODALITY, ZSERIESDICOMUID, ZSERIESINSTANCEUID, ZSERIESSOPCLASSUID) "
                             "VALUES (?, 4, 2, ?, ?, ?, ?, ?, ?, ?, ?)", series_rows)
            conn.executemany("INSERT INTO ZIMAGE (Z_PK, Z_ENT, Z_OPT, ZINSTANCENUMBER, ZPATHNUMBER, ZSERIES, ZDATE, "
                             "ZCOMPRESSEDSOPINSTANCEUID, ZSTOREDMODALITY) VALUES (?, 2, 1, ?, ?, ?, ?, ?, ?)",
                             image_rows)
            del study_rows[:], series_rows[:], image_rows[:]

        for pk in range(1, studies + 1):
            kind = kinds[rng.randrange(len(kinds))]
            date = first_day + rng.randrange(10 * 365) * 86400 + rng.randrange(7 * 3600, 20 * 3600)
            name, pid = f"{rng.choice(LAST_NAMES)}^{rng.choice(FIRST_NAMES)} {pk}", f"P{pk:07d}"
            birth = dt.date(1935, 1, 1) + dt.timedelta(days=rng.randrange(80 * 365))
            born = core_data_time(dt.datetime.combine(birth, dt.time(), zone))
            study_rows.append((pk, images_per_study, date, date + rng.uniform(600, 86400 * 30), born,
                               horos_study_modality(list(kind)), name, pid, horos_patient_uid(name, pid, birth),
                               f"{prefix}1.{pk}", f"A{pk:08d}"))
            parts = len(kind) if len(kind) > 1 else min(2, images_per_study) or 1
            for j in range(parts):
                modality = kind[j % len(kind)]
                series_pk += 1
                count = images_per_study // parts + (1 if j < images_per_study % parts else 0)
                series_uid = f"{prefix}2.{series_pk}"
                series_rows.append((series_pk, j + 1, count, pk, date + 300 * j, modality, series_uid,
                                    f"{j + 1:08d} {series_uid}",
                                    dd.SOP_CLASSES.get(modality, "1.2.840.10008.5.1.4.1.1.7")))
                stored = None if modality == "CT" else modality
                for i in range(count):
                    image_pk += 1
                    image_rows.append((image_pk, i + 1, image_pk, series_pk, date + 300 * j + i,
                                       dd.packed_uid(f"{prefix}3.{image_pk}"), stored))
            if len(image_rows) >= 200_000:
                flush()
        flush()
        create_indexes(conn)
        bookkeeping(conn, seed, {"Study": studies, "Series": series_pk, "Image": image_pk})
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode=delete")  # what Horos uses today (§8)
    finally:
        conn.close()
