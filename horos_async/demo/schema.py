"""The Horos Core Data store's tables and encodings, as the demo library writes them.

Follows docs/design/horos-database.md: the tables of §3 (verbatim), Core Data's bookkeeping (§2), dates
(§5), the study modality string (§6) and the patientUID Horos computes (§4.5).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import plistlib
import random
import sqlite3
import uuid
from typing import Any, Dict, List, Optional

REFERENCE_UNIX = 978307200
"""Unix time of 2001-01-01 00:00:00 UTC, the zero of Core Data dates."""
ENTITIES = (("Album", 1), ("Image", 2), ("LogEntry", 3), ("Series", 4), ("Study", 5))
"""Core Data entity names and numbers (``Z_ENT``), alphabetical as Core Data assigns them (§2)."""
DUE_MODALITIES = ("CT", "MR")
DROPPED_MODALITIES = ("SR", "SC", "PR", "OT", "KO")  # left out of ZSTUDY.ZMODALITY when anything else exists

SCHEMA = """
CREATE TABLE ZSTUDY ( Z_PK INTEGER PRIMARY KEY, Z_ENT INTEGER, Z_OPT INTEGER,
  ZEXPANDED INTEGER, ZHASDICOM INTEGER, ZLOCKEDSTUDY INTEGER, ZNUMBEROFIMAGES INTEGER, ZSTATETEXT INTEGER,
  ZDATE TIMESTAMP, ZDATEADDED TIMESTAMP, ZDATEOFBIRTH TIMESTAMP, ZDATEOPENED TIMESTAMP,
  ZACCESSIONNUMBER VARCHAR, ZCOMMENT VARCHAR, ZCOMMENT2 VARCHAR, ZCOMMENT3 VARCHAR, ZCOMMENT4 VARCHAR,
  ZDICTATEURL VARCHAR, ZID VARCHAR, ZINSTITUTIONNAME VARCHAR, ZMODALITY VARCHAR, ZNAME VARCHAR,
  ZPATIENTID VARCHAR, ZPATIENTSEX VARCHAR, ZPATIENTUID VARCHAR, ZPERFORMINGPHYSICIAN VARCHAR,
  ZREFERRINGPHYSICIAN VARCHAR, ZREPORTURL VARCHAR, ZSTUDYINSTANCEUID VARCHAR, ZSTUDYNAME VARCHAR,
  ZWINDOWSSTATE BLOB );
CREATE TABLE ZSERIES ( Z_PK INTEGER PRIMARY KEY, Z_ENT INTEGER, Z_OPT INTEGER,
  ZDISPLAYSTYLE INTEGER, ZID INTEGER, ZKEYSERIES INTEGER, ZNUMBEROFIMAGES INTEGER, ZNUMBEROFKEYIMAGES INTEGER,
  ZSTATETEXT INTEGER, ZXFLIPPED INTEGER, ZYFLIPPED INTEGER, ZSTUDY INTEGER,
  ZDATE TIMESTAMP, ZDATEADDED TIMESTAMP, ZDATEOPENED TIMESTAMP,
  ZROTATIONANGLE FLOAT, ZSCALE FLOAT, ZWINDOWLEVEL FLOAT, ZWINDOWWIDTH FLOAT, ZXOFFSET FLOAT, ZYOFFSET FLOAT,
  ZCOMMENT VARCHAR, ZCOMMENT2 VARCHAR, ZCOMMENT3 VARCHAR, ZCOMMENT4 VARCHAR, ZMODALITY VARCHAR, ZNAME VARCHAR,
  ZSERIESDESCRIPTION VARCHAR, ZSERIESDICOMUID VARCHAR, ZSERIESINSTANCEUID VARCHAR, ZSERIESSOPCLASSUID VARCHAR,
  ZTHUMBNAIL BLOB );
CREATE TABLE ZIMAGE ( Z_PK INTEGER PRIMARY KEY, Z_ENT INTEGER, Z_OPT INTEGER,
  ZFRAMEID INTEGER, ZGENERATEDBYOSIRIX INTEGER, ZINSTANCENUMBER INTEGER, ZPATHNUMBER INTEGER,
  ZSTOREDHEIGHT INTEGER, ZSTOREDINDATABASEFOLDER INTEGER, ZSTOREDISKEYIMAGE INTEGER,
  ZSTOREDMOUNTEDVOLUME INTEGER, ZSTOREDNUMBEROFFRAMES INTEGER, ZSTOREDNUMBEROFSERIES INTEGER,
  ZSTOREDWIDTH INTEGER, ZXFLIPPED INTEGER, ZYFLIPPED INTEGER, ZSERIES INTEGER,
  ZDATE TIMESTAMP,
  ZROTATIONANGLE FLOAT, ZSCALE FLOAT, ZSLICELOCATION FLOAT, ZWINDOWLEVEL FLOAT, ZWINDOWWIDTH FLOAT,
  ZXOFFSET FLOAT, ZYOFFSET FLOAT, ZZOOM FLOAT,
  ZCOMMENT VARCHAR, ZCOMMENT2 VARCHAR, ZCOMMENT3 VARCHAR, ZCOMMENT4 VARCHAR, ZPATHSTRING VARCHAR,
  ZSTATETEXT VARCHAR, ZSTOREDEXTENSION VARCHAR, ZSTOREDFILETYPE VARCHAR, ZSTOREDMODALITY VARCHAR,
  ZCOMPRESSEDSOPINSTANCEUID BLOB );
CREATE TABLE ZALBUM ( Z_PK INTEGER PRIMARY KEY, Z_ENT INTEGER, Z_OPT INTEGER,
  ZINDEX INTEGER, ZSMARTALBUM INTEGER, ZNAME VARCHAR, ZPREDICATESTRING VARCHAR );
CREATE TABLE ZLOGENTRY ( Z_PK INTEGER PRIMARY KEY, Z_ENT INTEGER, Z_OPT INTEGER,
  ZNUMBERERROR INTEGER, ZNUMBERIMAGES INTEGER, ZNUMBERPENDING INTEGER, ZNUMBERSENT INTEGER,
  ZENDTIME TIMESTAMP, ZSTARTTIME TIMESTAMP,
  ZDESTINATIONHOSTNAME VARCHAR, ZDESTINATIONNAME VARCHAR, ZDESTINATIONPORT VARCHAR, ZMESSAGE VARCHAR,
  ZORIGINHOSTNAME VARCHAR, ZORIGINNAME VARCHAR, ZORIGINPORT VARCHAR, ZPATIENTNAME VARCHAR, ZSTATUS VARCHAR,
  ZSTUDYNAME VARCHAR, ZTYPE VARCHAR );
CREATE TABLE Z_1STUDIES ( Z_1ALBUMS INTEGER, Z_5STUDIES INTEGER, PRIMARY KEY (Z_1ALBUMS, Z_5STUDIES) );
CREATE TABLE Z_PRIMARYKEY (Z_ENT INTEGER PRIMARY KEY, Z_NAME VARCHAR, Z_SUPER INTEGER, Z_MAX INTEGER);
CREATE TABLE Z_METADATA (Z_VERSION INTEGER PRIMARY KEY, Z_UUID VARCHAR(255), Z_PLIST BLOB);
CREATE TABLE Z_MODELCACHE (Z_CONTENT BLOB);
"""
"""The tables of docs/design/horos-database.md §3 (plus ZLOGENTRY from §1.5), verbatim; indexes come separately."""
INDEXED = {
    "ZIMAGE": ("ZSERIES",),
    "ZSERIES": ("ZSTUDY", "ZID", "ZMODALITY", "ZSERIESDICOMUID", "ZSERIESINSTANCEUID"),
    "ZSTUDY": ("ZACCESSIONNUMBER", "ZCOMMENT", "ZDATE", "ZID", "ZMODALITY", "ZNAME", "ZPATIENTID",
               "ZPATIENTUID", "ZSTUDYINSTANCEUID", "ZSTUDYNAME"),
}
"""Indexed columns: Core Data's foreign keys plus the attributes the model marks "idx" (§1, §3)."""


def create_indexes(conn: sqlite3.Connection) -> None:
    # One execute per statement: executescript() would commit the caller's open transaction.
    for table, columns in INDEXED.items():
        for c in columns:
            conn.execute(f"CREATE INDEX {table}_{c}_INDEX ON {table} ({c})")
    conn.execute("CREATE INDEX Z_1STUDIES_Z_5STUDIES_INDEX ON Z_1STUDIES (Z_5STUDIES, Z_1ALBUMS)")


def bookkeeping(conn: sqlite3.Connection, seed: int, maxima: Dict[str, int]) -> None:
    """Z_PRIMARYKEY, Z_METADATA and Z_MODELCACHE rows as a Core Data store has them."""
    conn.executemany("INSERT INTO Z_PRIMARYKEY VALUES (?, ?, 0, ?)",
                     [(ent, name, maxima.get(name, 0)) for name, ent in ENTITIES])
    store_uuid = str(uuid.UUID(int=random.Random(seed).getrandbits(128), version=4)).upper()
    meta = {"NSStoreType": "SQLite", "NSStoreUUID": store_uuid, "NSStoreModelVersionHashesVersion": 3,
            "NSStoreModelVersionHashes": {n: hashlib.sha256(n.encode()).digest() for n, _ in ENTITIES},
            "patientUIDVersion": 2}  # Horos's own key (§2); the value is made up
    conn.execute("INSERT INTO Z_METADATA VALUES (1, ?, ?)",
                 (store_uuid, plistlib.dumps(meta, fmt=plistlib.FMT_BINARY, sort_keys=True)))
    conn.execute("INSERT INTO Z_MODELCACHE VALUES (?)", (b"horos-backup demo: no compiled model",))


def insert_row(conn: sqlite3.Connection, table: str, row: Dict[str, Any]) -> None:
    conn.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                 tuple(row.values()))


def core_data_time(moment: dt.datetime) -> float:
    """Seconds since 2001-01-01 UTC for an aware datetime; whole values come back as int."""
    value = moment.timestamp() - REFERENCE_UNIX
    # SQLite's NUMERIC affinity stores whole values as INTEGER anyway; returning an int keeps the
    # truth on the Python side equal to what a reader gets back.
    return int(value) if value == int(value) else value


def horos_study_modality(series_modalities: List[str]) -> str:
    """``ZSTUDY.ZMODALITY`` from the series modalities in series-date order (docs/design/horos-database.md §6)."""
    kept: List[str] = []
    for m in series_modalities:
        m = "RT" if m == "RTSTRUCT" else m
        if m not in DROPPED_MODALITIES and m not in kept:
            kept.append(m)
    if not kept:
        present = set(series_modalities)
        fallback = [m for m in ("SC", "OT") if m in present][:1]
        kept = fallback or [m for m in ("SR", "PR") if m in present]
    return "\\".join(kept)


def horos_patient_uid(name: str, patient_id: str, birth: Optional[dt.date]) -> str:
    """Horos's ``ZPATIENTUID``: ``NAME-ID-YYYYMMDD`` cleaned and upper-cased (``+[DicomFile patientUID:]``)."""
    def clean(s: str) -> str:  # +[DicomFile NSreplaceBadCharacter:]
        return s.replace("^", " ").replace("/", "-").replace("\r", "").replace("\n", "").replace('"', "'").rstrip(" ")

    person = clean(name).replace("-", " ").split("=")[0] or clean(name)
    # A missing birth date is left empty; what Horos prints for one is not verified.
    return clean(f"{person}-{patient_id}-{birth.strftime('%Y%m%d') if birth else ''}").upper()
