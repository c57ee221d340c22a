"""The one configuration object, loaded from TOML; every path is resolved here.

Resolution order (README "Configuration"): ``--config PATH``, else ``$HOROS_BACKUP_CONFIG``, else the
built-in defaults that mirror the classic layout on ``/Volumes/PACS``. Command-line overrides
(``--horos-data``, ``--backup-dir``) are applied last. Unknown keys, wrong types and impossible values
raise ``ConfigError`` naming the file, the key and the value.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from horos_async import platform
from horos_async.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised by the Python 3.9 CI job
    import tomli as tomllib

ENV_VAR = "HOROS_BACKUP_CONFIG"
DEFAULTS_NOTE = f"no config given: using the built-in defaults; pass --config or set {ENV_VAR}"
"""Said beside any error met while the built-in defaults are in use (their paths are rarely this Mac's)."""
LANGUAGE_CHOICES = ("en", "pt")
SUMMARY_CHOICES = ("off", "daily", "weekly")


@dataclass(frozen=True)
class NotifyConfig:
    """The ``[notify]`` table: where alerts go (README "Alerts"). Empty = no channel, nothing sent."""

    email_to: Tuple[str, ...] = ()
    """Addresses that get each alert by e-mail (none: no e-mail)."""
    email_from: str = ""
    """The sender address (default: ``smtp_user``)."""
    smtp_host: str = ""
    """The SMTP server, e.g. ``smtp.gmail.com`` or ``smtp.office365.com``."""
    smtp_port: int = 587
    """The SMTP port: 587 with STARTTLS (submission), 465 for TLS from the start, 25 plain."""
    smtp_starttls: bool = True
    """Upgrade the connection with STARTTLS before logging in (port 587)."""
    smtp_user: str = ""
    """The SMTP login (none: no login)."""
    smtp_password_file: Optional[Path] = None
    """A file holding the SMTP password (an app password), readable by this user only (mode 600).
    The password itself is never in the config, the logs or ``config`` output."""
    webhook_url: str = ""
    """An HTTP(S) URL that gets each alert as a JSON POST (ntfy, Slack- or Teams-style webhooks)."""
    healthcheck_url: str = ""
    """A dead-man's switch in the healthchecks.io convention: ``<url>/start`` when a run starts,
    ``<url>`` on success, ``<url>/fail`` on failure."""
    language: str = "en"
    """Language of the alerts: ``en`` or ``pt`` (Brazilian Portuguese)."""
    summary: str = "off"
    """A periodic summary (done, pending, failed, bytes, free space, ETA): ``off``, ``daily``, ``weekly``."""

    @property
    def channels(self) -> Tuple[str, ...]:
        """The configured channels: ``email``, ``webhook``, ``healthcheck``."""
        return tuple(name for name, on in (("email", bool(self.email_to)), ("webhook", bool(self.webhook_url)),
                                           ("healthcheck", bool(self.healthcheck_url))) if on)


MIRROR_VERIFY_CHOICES = ("sha256", "size")
MIRROR_SENTINEL = ".horos_mirror_sentinel"
RCLONE_PREFIX = "rclone:"
_BW_UNITS = {"": 1024, "b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}


def parse_bwlimit(text: str) -> Optional[int]:
    """Bytes per second of a ``bwlimit`` in rclone's syntax (``"10M"`` = 10 MiB/s, ``"512k"``, a bare
    number is KiB/s); None for "" or ``"off"``. ValueError when it is not one."""
    t = text.strip().lower()
    if t in ("", "off", "0"):
        return None
    unit = t[-1] if t[-1] in "bkmg" else ""
    number = t[:-1] if unit else t
    try:
        value = float(number)
    except ValueError:
        raise ValueError('expected a rate like "10M" (MiB/s), "512k" (KiB/s) or "off"') from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError('expected a positive rate like "10M" (MiB/s), "512k" (KiB/s) or "off"')
    return int(value * _BW_UNITS[unit])


@dataclass(frozen=True)
class MirrorConfig:
    """One ``[mirror]`` (or ``[[mirror]]``) table: a destination of the second copy (README "Mirror")."""

    dest: str
    """A folder (a mounted NAS share, a second disk) or an rclone remote written ``rclone:REMOTE:path``."""
    sentinel: str = MIRROR_SENTINEL
    """A folder destination's own sentinel: a file that exists only when the right volume is mounted
    (relative to ``dest``, or absolute); "" turns the check off (not recommended). Unused for rclone."""
    bwlimit: str = ""
    """Bandwidth limit in rclone's syntax (``"10M"`` = 10 MiB/s, ``"512k"``); "" = none."""
    window: str = ""
    """When the scheduled run may mirror (``"20:00-06:00"``, Horos Mac's time); "" = ``run_window``."""
    verify: str = "sha256"
    """How each copy is checked before it is recorded: ``sha256`` (read back and hashed; a remote without
    SHA-256 is downloaded) or ``size`` (only the size: for remotes where a download costs too much)."""

    @property
    def is_rclone(self) -> bool:
        """True for an ``rclone:REMOTE:path`` destination."""
        return self.dest.startswith(RCLONE_PREFIX)

    @property
    def remote(self) -> str:
        """The rclone remote path (``REMOTE:path``) of an rclone destination."""
        return self.dest[len(RCLONE_PREFIX):]

    @property
    def folder(self) -> Path:
        """The folder of a folder destination."""
        return Path(self.dest)

    @property
    def sentinel_path(self) -> Optional[Path]:
        """The sentinel of a folder destination (None: unchecked, or an rclone destination)."""
        if self.is_rclone or not self.sentinel:
            return None
        p = Path(self.sentinel)
        return p if p.is_absolute() else self.folder / p

    @property
    def bytes_per_second(self) -> Optional[int]:
        """``bwlimit`` in bytes per second (None: unlimited)."""
        return parse_bwlimit(self.bwlimit)


ORDER_CHOICES = ("study_date", "date_added")
COMPRESSION_CHOICES = ("auto", "deflate", "store")
NAMING_CHOICES = ("classic", "pseudonymous")
ZIP_LAYOUT_CHOICES = ("series", "dicom-media")


@dataclass(frozen=True)
class Config:
    """Everything a run needs to know; built once, never mutated."""

    horos_data: Path = Path("/Volumes/PACS/Database/Horos Data")
    """The ``Horos Data`` folder holding ``Database.sql`` (and usually ``DATABASE.noindex``)."""
    backup_dir: Path = Path("/Volumes/PACS/Backup")
    """Where the ``YYYY_MM/`` month folders, the ledger, ``issues.csv`` and ``logs/`` live."""
    sentinel: Optional[Path] = Path("/Volumes/PACS/.pacs_sentinel")
    """A file that exists only on the right, mounted volume; no run writes anything without it.
    Set to an empty string to disable (not recommended on removable disks)."""
    modalities: Tuple[str, ...] = ("CT", "MR")
    """A study is due when at least one of its series has one of these modalities (upper case)."""
    batch_size: int = 15
    """Studies read from the Horos database in one short read transaction (released before any file is
    touched). Only the size of one read: a run goes on, batch after batch, until nothing is due."""
    concurrency: int = 2
    """ZIP jobs running at once (threads); 2 suits a 2-core Mac, raise it on faster machines."""
    sleep_between_studies: float = 0.0
    """Seconds to pause before starting each study (0 = none). Horos already keeps its share without it:
    runs are low-priority I/O, niced, pause while INCOMING is busy, and never hold a database
    transaction over file I/O; raise it only if the Mac feels slow during a run."""
    order_by: str = "study_date"
    """Export order: ``study_date`` (oldest acquisition first) or ``date_added`` (oldest import first)."""
    incoming_max_files: int = 25000
    """Pause when Horos's INCOMING.noindex holds more files than this (Horos is busy importing)."""
    max_name_length: int = 128
    """Longest ZIP file name, without ``.zip``, in characters; the patient part is shortened."""
    log_max_bytes: int = 100 * 1024 * 1024
    """Size in bytes at which ``logs/horos-backup.log`` rotates."""
    log_backup_count: int = 10
    """Rotated log files kept."""
    zip_attempts: int = 3
    """Attempts to build and verify one ZIP before the study is recorded ``ZIP_FAIL``."""
    db_folder_size: int = 10000
    """Horos's ``DefaultFolderSizeForDB``: files per ``DATABASE.noindex/<F>/`` bucket."""
    timezone: str = ""
    """IANA zone the Horos Mac runs in (e.g. ``America/Sao_Paulo``); empty means this machine's zone."""
    stability_minutes: float = 30.0
    """A study whose images arrived less than this many minutes ago is not due yet."""
    path_map: Tuple[Tuple[str, str], ...] = ()
    """Prefix rewrites for linked (absolute-path) files, e.g. ``{"/Volumes/CD" = "/mnt/cd"}``."""
    compression: str = "auto"
    """``auto`` stores already-compressed DICOM (JPEG, JPEG 2000, RLE...) and deflates the rest;
    ``deflate`` deflates everything; ``store`` never compresses (fastest on a fast disk)."""
    compression_level: int = 1
    """Deflate level 1-9; 1 is fast and already halves uncompressed CT/MR."""
    allow_partial: bool = False
    """Export a study even when some of its files are missing, recorded as ``PARTIAL`` (not ``done``)."""
    min_free_gb: float = 5.0
    """Free space, in GB, always left on the backup volume after the next ZIP."""
    horos_free_gb: float = 20.0
    """When the backup shares Horos's disk: free space, in GB, kept so Horos never auto-cleans."""
    zip_layout: str = "series"
    """Inside each ZIP: ``series`` (``S0001_CT_Head/IM00001.dcm``) or ``dicom-media`` (DICOM PS3.12 Annex V:
    a DICOMDIR at the root and File IDs such as ``PT000000/ST000000/SE000000/IM000000``)."""
    naming: str = "classic"
    """``classic`` = ``Patient_DOB_StudyDate_UID.zip``; ``pseudonymous`` replaces the patient with a hash."""
    log_patient_names: bool = False
    """Write patient names into logs (off: studies are named by UID only)."""
    db_busy_seconds: float = 30.0
    """How long to keep retrying a busy, locked or hot-journalled Horos database before giving up."""
    read_stall_seconds: float = 300.0
    """Seconds without a byte read from a source file (a stuck network or linked volume) before that
    study's job is abandoned as ``READ_STALLED`` and the run goes on."""
    retry_backoff_minutes: float = 60.0
    """First wait before retrying a failed study; doubles on each failure, capped at one week."""
    start_interval: int = 600
    """launchd ``StartInterval``: seconds between scheduled runs."""
    run_window: str = ""
    """Only run inside this window of the Horos Mac's local time (``timezone``), e.g. ``"20:00-06:00"``;
    checked before every study, so a run stops when the window closes. Empty = any time."""
    max_run_minutes: float = 0.0
    """Time budget of one run, in minutes: no study starts after it is spent (running ones finish);
    0 = no budget, the run goes on until nothing is due. ``run --max-minutes`` overrides it."""
    index_snapshot_hours: float = 24.0
    """Hours between automatic snapshots of Horos's index (``Database.sql`` and its side files), taken by
    the scheduled run inside ``run_window``; 0 turns the automatic snapshot off (``index snapshot`` still
    works)."""
    index_keep_daily: int = 7
    """Index snapshots kept: the newest of each of the last this many days that have one."""
    index_keep_weekly: int = 5
    """... and the newest of each of the last this many weeks (Monday to Sunday)."""
    index_keep_monthly: int = 12
    """... and the newest of each of the last this many months."""
    index_lock_budget_ms: float = 150.0
    """Longest a snapshot may keep Horos from saving, in milliseconds, while Horos is saving often (a
    rollback-journal store cannot commit while the snapshot holds its read lock)."""
    index_quiet_seconds: float = 60.0
    """When a copy needs the lock longer than ``index_lock_budget_ms``, wait for Horos to have saved
    nothing for this many seconds, then copy (the lock is then held at most 5 s); 0 = never."""
    state_dir: Optional[Path] = None
    """Folder for horos-backup's own state kept off the backup volume (the health file); None = the
    platform default (:func:`platform.state_home`). Empty string in TOML means the default."""
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    """The ``[notify]`` table: alert channels (e-mail, webhook, healthcheck) and their language."""
    mirror: Tuple[MirrorConfig, ...] = ()
    """The ``[mirror]`` table, or several ``[[mirror]]`` tables: where ``mirror`` keeps a second, verified
    copy of the archive (README "Mirror"); empty = no mirror."""
    shrink_threshold: float = 0.5
    """Refuse to run (``HOROS_DB_SHRANK``) when Horos's database holds fewer CT/MR studies than this
    fraction of the last run's count (or, the first time, of the studies backed up); 0 disables."""
    source: Optional[Path] = field(default=None, compare=False)
    """The file this was loaded from (None = built-in defaults)."""

    # Derived locations -------------------------------------------------------------------------------
    @property
    def database(self) -> Path:
        """``Horos Data/Database.sql``."""
        return self.horos_data / "Database.sql"

    @property
    def old_database(self) -> Path:
        """``Horos Data/Database.sql - old``: the index Horos set aside when it last rebuilt it (the next
        rebuild deletes it; docs/design/horos-database.md §11)."""
        return self.horos_data / "Database.sql - old"

    @property
    def data_root(self) -> Path:
        """Horos's ``dataBaseDirPath``: the content of ``DBFOLDER_LOCATION`` if present, else ``horos_data``."""
        marker = self.horos_data / "DBFOLDER_LOCATION"
        try:
            text = marker.read_text(encoding="utf-8").strip()
        except (FileNotFoundError, NotADirectoryError):
            return self.horos_data
        except OSError as exc:
            raise ConfigError(f"cannot read {marker}: {exc.strerror}; check the Horos data volume") from exc
        return Path(text) if text else self.horos_data

    def horos_data_hint(self) -> str:
        """" did you mean …/Horos Data?" when ``horos_data`` names the folder above ``Horos Data`` (the
        likeliest mistake: Horos shows the folder that holds it), else ""."""
        inner = self.horos_data / "Horos Data"
        if self.database.exists() or not inner.is_dir():
            return ""
        return f"; 'horos_data' must be the 'Horos Data' folder itself: did you mean '{inner}'?"

    @property
    def incoming_dir(self) -> Path:
        """Horos's drop box of files waiting to be indexed."""
        return self.data_root / "INCOMING.noindex"

    @property
    def health_dir(self) -> Path:
        """horos-backup's own state off the backup volume: ``state_dir``, else the platform default."""
        return self.state_dir if self.state_dir is not None else platform.state_home()

    @property
    def health_path(self) -> Path:
        """The health file: every ``run`` attempt, kept off the backup volume (``horos_async.health``)."""
        return self.health_dir / "health.json"

    @property
    def alerts_state_path(self) -> Path:
        """What the alerts remember: open episodes, the last summary, undelivered messages (``notify.episodes``)."""
        return self.health_dir / "notify.json"

    @property
    def ledger_path(self) -> Path:
        """The engine's state database, the single truth for "done"."""
        return self.backup_dir / "export_state.sqlite"

    @property
    def work_dir(self) -> Path:
        """Lock, temp and live-progress files (the backup volume's temp folder)."""
        return self.backup_dir / ".tmp"

    @property
    def lock_path(self) -> Path:
        """The run lock: held by ``run``, ``verify`` and ``rebuild-ledger``, read by ``doctor``."""
        return self.work_dir / "run.lock"

    @property
    def live_status_path(self) -> Path:
        """The live status file a running engine replaces about twice a second (``state.live``)."""
        return self.work_dir / "status.json"

    @property
    def verify_state_path(self) -> Path:
        """Where an interrupted ``verify`` pass remembers how far it got."""
        return self.work_dir / "verify_state.json"

    @property
    def source_baseline_path(self) -> Path:
        """What the last run read of Horos's database, for the ``HOROS_DB_SHRANK`` guard (``backup.source_guard``)."""
        return self.work_dir / "horos_source.json"

    @property
    def quarantine_dir(self) -> Path:
        """Damaged ZIPs moved aside, never deleted (``<month>/<name>.zip`` inside)."""
        return self.backup_dir / ".quarantine"

    @property
    def issues_csv(self) -> Path:
        """Human-readable issue log."""
        return self.backup_dir / "issues.csv"

    @property
    def index_dir(self) -> Path:
        """Verified snapshots of Horos's index, one folder per snapshot (``HorosIndex/<local time>/``)."""
        return self.backup_dir / "HorosIndex"

    @property
    def log_dir(self) -> Path:
        """Rotating engine logs."""
        return self.backup_dir / "logs"

    def with_overrides(self, **changes: Any) -> "Config":
        """Return a copy with some fields replaced (None values are ignored)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **changes) if changes else self


_FIELDS = {f.name: f for f in fields(Config) if f.name != "source"}
_NOTIFY_FIELDS = {f.name: f for f in fields(NotifyConfig)}


def _fail(source: str, key: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"{source}: key '{key}' = {value!r}: {why}")


def _parses(source: str, key: str, value: Any, parse: Callable[[Any], Any]) -> None:
    """``parse(value)``'s ValueError as the config error naming ``key``."""
    try:
        parse(value)
    except ValueError as exc:
        raise _fail(source, key, value, str(exc)) from None


def _path(source: str, key: str, value: Any, base: Path) -> Optional[Path]:
    if not isinstance(value, str):
        raise _fail(source, key, value, "expected a path in quotes")
    if value == "" and key in ("sentinel", "state_dir"):
        return None
    if not value:
        raise _fail(source, key, value, "must not be empty")
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else (base / p)


def _convert(source: str, key: str, value: Any, base: Path) -> Any:
    """Check one TOML value against the field's type and limits; return the stored form."""
    if key in ("horos_data", "backup_dir", "sentinel", "state_dir"):
        return _path(source, key, value, base)
    if key == "modalities":
        if not isinstance(value, list) or not value or not all(isinstance(m, str) and m.strip() for m in value):
            raise _fail(source, key, value, 'expected a non-empty list of modality codes, e.g. ["CT", "MR"]')
        return tuple(dict.fromkeys(m.strip().upper() for m in value))
    if key == "notify":
        return _notify(source, value, base)
    if key == "mirror":
        return _mirrors(source, value, base)
    if key == "path_map":
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise _fail(source, key, value, 'expected a table of "old prefix" = "new prefix"')
        # Longest prefix first so "/Volumes/CD/A" wins over "/Volumes/CD".
        return tuple(sorted(value.items(), key=lambda kv: -len(kv[0])))
    default = getattr(Config, key)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise _fail(source, key, value, "expected true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(source, key, value, "expected a whole number")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(source, key, value, "expected a number")
        if not math.isfinite(value):
            raise _fail(source, key, value, "expected a finite number (inf and nan are not allowed)")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise _fail(source, key, value, "expected text in quotes")
        return value
    raise _fail(source, key, value, "unsupported key")  # pragma: no cover


def _notify(source: str, value: Any, base: Path) -> NotifyConfig:
    """The ``[notify]`` table, each key checked like the top-level ones (named ``notify.<key>``)."""
    if not isinstance(value, dict):
        raise _fail(source, "notify", value, "expected a table: a [notify] section")
    out: Dict[str, Any] = {}
    for key, v in value.items():
        name = f"notify.{key}"
        if key not in _NOTIFY_FIELDS:
            raise _fail(source, name, v, f"unknown key; the keys are {', '.join(_NOTIFY_FIELDS)}")
        default = getattr(NotifyConfig, key, None)
        if key == "email_to":
            if isinstance(v, str):
                v = [v]
            if not isinstance(v, list) or not all(isinstance(a, str) and "@" in a for a in v):
                raise _fail(source, name, v, 'expected a list of e-mail addresses, e.g. ["ti@clinica.com.br"]')
            out[key] = tuple(a.strip() for a in v)
        elif key == "smtp_password_file":
            out[key] = None if v == "" else _path(source, name, v, base)
        elif isinstance(default, bool):
            if not isinstance(v, bool):
                raise _fail(source, name, v, "expected true or false")
            out[key] = v
        elif isinstance(default, int):
            if isinstance(v, bool) or not isinstance(v, int):
                raise _fail(source, name, v, "expected a whole number")
            out[key] = v
        else:
            if not isinstance(v, str):
                raise _fail(source, name, v, "expected text in quotes")
            out[key] = v.strip()
    n = NotifyConfig(**out)
    checks = [
        ("smtp_port", 1 <= n.smtp_port <= 65535, "must be a port number (587, 465 or 25)"),
        ("language", n.language in LANGUAGE_CHOICES, f"must be one of {', '.join(LANGUAGE_CHOICES)}"),
        ("summary", n.summary in SUMMARY_CHOICES, f"must be one of {', '.join(SUMMARY_CHOICES)}"),
        ("smtp_host", bool(n.smtp_host) or not n.email_to, "must be set when email_to is (the SMTP server)"),
        ("email_from", bool(n.email_from or n.smtp_user) or not n.email_to,
         "must be set when email_to is (or set smtp_user)"),
        ("webhook_url", not n.webhook_url or n.webhook_url.startswith(("http://", "https://")),
         "must start with https:// (or http://)"),
        ("healthcheck_url", not n.healthcheck_url or n.healthcheck_url.startswith(("http://", "https://")),
         "must start with https:// (or http://), e.g. https://hc-ping.com/<uuid>"),
    ]
    for key, ok, why in checks:
        if not ok:
            raise _fail(source, f"notify.{key}", getattr(n, key), why)
    return n


_MIRROR_FIELDS = ("dest", "sentinel", "bwlimit", "window", "verify")


def _mirrors(source: str, value: Any, base: Path) -> Tuple[MirrorConfig, ...]:
    """``[mirror]`` (one table) or ``[[mirror]]`` (a list of tables), each key checked (``mirror.<key>``)."""
    tables = [value] if isinstance(value, dict) else value
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise _fail(source, "mirror", value, "expected a [mirror] table or [[mirror]] tables")
    out: List[MirrorConfig] = []
    for t in tables:
        for key, v in t.items():
            if key not in _MIRROR_FIELDS:
                raise _fail(source, f"mirror.{key}", v, f"unknown key; the keys are {', '.join(_MIRROR_FIELDS)}")
            if not isinstance(v, str):
                raise _fail(source, f"mirror.{key}", v, "expected text in quotes")
        dest = t.get("dest", "").strip()
        if not dest:
            raise _fail(source, "mirror.dest", dest, 'must be set: a folder, or "rclone:REMOTE:path"')
        if dest.startswith(RCLONE_PREFIX):
            remote = dest[len(RCLONE_PREFIX):]
            if ":" not in remote:
                raise _fail(source, "mirror.dest", dest, 'an rclone destination is "rclone:REMOTE:path" '
                            '(a remote from "rclone config", a colon, a folder in it)')
        else:
            dest = str(_path(source, "mirror.dest", dest, base))
        m = MirrorConfig(dest=dest, **{k: t[k].strip() for k in _MIRROR_FIELDS[1:] if k in t})
        if m.verify not in MIRROR_VERIFY_CHOICES:
            raise _fail(source, "mirror.verify", m.verify, f"must be one of {', '.join(MIRROR_VERIFY_CHOICES)}")
        _parses(source, "mirror.bwlimit", m.bwlimit, parse_bwlimit)
        if m.window:
            from horos_async.schedule import parse_window

            _parses(source, "mirror.window", m.window, parse_window)
        if any(o.dest == m.dest for o in out):
            raise _fail(source, "mirror.dest", m.dest, "listed twice")
        out.append(m)
    return tuple(out)


def validate(cfg: Config) -> Config:
    """Reject impossible values; returns ``cfg`` unchanged when all is well."""
    src = str(cfg.source) if cfg.source else "built-in defaults"
    checks = [
        ("batch_size", cfg.batch_size >= 1, "must be at least 1"),
        ("concurrency", 1 <= cfg.concurrency <= 64, "must be between 1 and 64"),
        ("sleep_between_studies", cfg.sleep_between_studies >= 0, "must not be negative"),
        ("order_by", cfg.order_by in ORDER_CHOICES, f"must be one of {', '.join(ORDER_CHOICES)}"),
        ("incoming_max_files", cfg.incoming_max_files >= 1, "must be at least 1"),
        ("max_name_length", 100 <= cfg.max_name_length <= 240,
         "must be between 100 and 240 (the full Study UID, up to 64 characters, is always kept)"),
        ("log_max_bytes", cfg.log_max_bytes >= 64 * 1024, "must be at least 65536"),
        ("log_backup_count", cfg.log_backup_count >= 1, "must be at least 1"),
        ("zip_attempts", 1 <= cfg.zip_attempts <= 10, "must be between 1 and 10"),
        ("db_folder_size", cfg.db_folder_size >= 1, "must be at least 1 (Horos's default is 10000)"),
        ("stability_minutes", cfg.stability_minutes >= 0, "must not be negative"),
        ("compression", cfg.compression in COMPRESSION_CHOICES, f"must be one of {', '.join(COMPRESSION_CHOICES)}"),
        ("compression_level", 1 <= cfg.compression_level <= 9, "must be between 1 and 9"),
        ("min_free_gb", cfg.min_free_gb >= 0, "must not be negative"),
        ("horos_free_gb", cfg.horos_free_gb >= 0, "must not be negative"),
        ("naming", cfg.naming in NAMING_CHOICES, f"must be one of {', '.join(NAMING_CHOICES)}"),
        ("zip_layout", cfg.zip_layout in ZIP_LAYOUT_CHOICES, f"must be one of {', '.join(ZIP_LAYOUT_CHOICES)}"),
        ("retry_backoff_minutes", cfg.retry_backoff_minutes >= 0, "must not be negative"),
        ("db_busy_seconds", cfg.db_busy_seconds >= 0, "must not be negative"),
        ("read_stall_seconds", cfg.read_stall_seconds >= 1, "must be at least 1 second"),
        ("start_interval", cfg.start_interval >= 60, "must be at least 60 seconds"),
        ("index_snapshot_hours", cfg.index_snapshot_hours == 0 or cfg.index_snapshot_hours >= 1,
         "must be 0 (no automatic snapshot) or at least 1 hour"),
        ("index_keep_daily", cfg.index_keep_daily >= 1, "must be at least 1 (the newest snapshot is always kept)"),
        ("index_keep_weekly", cfg.index_keep_weekly >= 0, "must not be negative"),
        ("index_keep_monthly", cfg.index_keep_monthly >= 0, "must not be negative"),
        ("index_lock_budget_ms", 10 <= cfg.index_lock_budget_ms <= 2000, "must be between 10 and 2000 milliseconds"),
        ("index_quiet_seconds", 0 <= cfg.index_quiet_seconds <= 3600, "must be between 0 and 3600 seconds"),
        ("shrink_threshold", 0 <= cfg.shrink_threshold <= 1, "must be between 0 (off) and 1"),
        ("max_run_minutes", cfg.max_run_minutes >= 0, "must not be negative (0 = no budget)"),
    ]
    for key, ok, why in checks:
        if not ok:
            raise _fail(src, key, getattr(cfg, key), why)
    if cfg.timezone:
        from horos_async.timezones import load_zone

        _parses(src, "timezone", cfg.timezone, load_zone)
    if cfg.run_window:
        from horos_async.schedule import parse_window

        _parses(src, "run_window", cfg.run_window, parse_window)
    _check_outside_horos(cfg, src)
    for m in cfg.mirror:
        if m.is_rclone:
            continue
        for folder, why in ((cfg.backup_dir, "backup_dir"), (cfg.horos_data, "horos_data")):
            try:
                m.folder.resolve().relative_to(folder.resolve())
            except ValueError:
                continue
            raise _fail(src, "mirror.dest", m.dest, f"must not be inside {why} ({folder}): a second copy belongs on "
                        f"another disk or share")
    return cfg


def _check_outside_horos(cfg: Config, src: str) -> None:
    """``backup_dir`` must not lie inside Horos's folders: ``horos_data``, nor the data root that
    ``DBFOLDER_LOCATION`` names (where ``DATABASE.noindex`` and ``INCOMING.noindex`` live). ZIPs there
    would be inside what they back up, and could be swept up by Horos."""
    try:
        data_root = cfg.data_root
    except ConfigError:  # an unreadable DBFOLDER_LOCATION is reported where it is used
        data_root = cfg.horos_data
    backup = cfg.backup_dir.resolve()
    for folder, why in ((cfg.horos_data, "the Horos data folder"),
                        (data_root, f"Horos's data folder named in {cfg.horos_data / 'DBFOLDER_LOCATION'}")):
        try:
            backup.relative_to(folder.resolve())
        except ValueError:
            continue
        raise _fail(src, "backup_dir", str(cfg.backup_dir), f"must not be inside {why} ({folder}): choose a "
                    f"folder on another disk (README 'Configuration')")


def similar_keys(key: str) -> List[str]:
    """Known keys a mistyped one probably meant: the same ignoring case and ``-`` (``Batch_Size``,
    ``batch-size``), else those sharing its first word, else close spellings (``concurency``)."""
    folded = key.lower().replace("-", "_")
    return ([k for k in _FIELDS if k == folded] or [k for k in _FIELDS if k.split("_")[0] == folded.split("_")[0]]
            or difflib.get_close_matches(folded, list(_FIELDS), n=3, cutoff=0.8))


def from_mapping(data: Mapping[str, Any], source: Optional[Path] = None) -> Config:
    """Build a validated Config from a parsed TOML table."""
    name = str(source) if source else "config"
    base = source.parent if source else Path.cwd()
    values: Dict[str, Any] = {}
    for key, value in data.items():
        if key not in _FIELDS:
            close = similar_keys(key)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise _fail(name, key, value, f"unknown key{hint}; see README 'Configuration'")
        values[key] = _convert(name, key, value, base)
    return validate(Config(source=source, **values))


def load(path: Optional[Path] = None, env: Optional[Mapping[str, str]] = None) -> Config:
    """Load the config: ``path``, else ``$HOROS_BACKUP_CONFIG``, else built-in defaults."""
    env = os.environ if env is None else env
    if path is None and env.get(ENV_VAR):
        path = Path(env[ENV_VAR])
    if path is None:
        return validate(Config())
    path = Path(os.path.expanduser(str(path)))
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; create it (README 'Configuration') "
                          f"or pass --config") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return from_mapping(data, source=path.resolve())


def render_toml(cfg: Config) -> str:
    """Render a config as TOML (used by ``demo`` to write a ready config file)."""
    lines = []
    for name, f in _FIELDS.items():
        value = getattr(cfg, name)
        if name in ("path_map", "notify", "mirror"):
            continue
        if value is None:
            value = ""
        if isinstance(value, Path):
            value = str(value)
        if isinstance(value, tuple):
            lines.append(f"{name} = [{', '.join(_toml_str(v) for v in value)}]")
        elif isinstance(value, bool):
            lines.append(f"{name} = {'true' if value else 'false'}")
        elif isinstance(value, (int, float)):
            lines.append(f"{name} = {value}")
        else:
            lines.append(f"{name} = {_toml_str(value)}")
    if cfg.path_map:
        lines.append("")
        lines.append("[path_map]")
        lines.extend(f"{_toml_str(k)} = {_toml_str(v)}" for k, v in cfg.path_map)
    if cfg.notify != NotifyConfig():  # the password file's path, never the password
        lines.append("")
        lines.append("[notify]")
        for name in _NOTIFY_FIELDS:
            value = getattr(cfg.notify, name)
            if isinstance(value, tuple):
                lines.append(f"{name} = [{', '.join(_toml_str(v) for v in value)}]")
            elif isinstance(value, bool):
                lines.append(f"{name} = {'true' if value else 'false'}")
            elif isinstance(value, int):
                lines.append(f"{name} = {value}")
            else:
                lines.append(f"{name} = {_toml_str(str(value) if value is not None else '')}")
    for m in cfg.mirror:
        lines.append("")
        lines.append("[[mirror]]")
        lines.extend(f"{name} = {_toml_str(getattr(m, name))}" for name in _MIRROR_FIELDS)
    return "\n".join(lines) + "\n"


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def load_with_overrides(path: Optional[Path] = None, *, horos_data: Optional[Path] = None,
                        backup_dir: Optional[Path] = None) -> Config:
    """The config every command uses: :func:`load`, then the ``--horos-data``/``--backup-dir`` overrides."""
    cfg = load(path)
    over = {}
    if horos_data:
        over["horos_data"] = Path(horos_data).expanduser().absolute()
    if backup_dir:
        over["backup_dir"] = Path(backup_dir).expanduser().absolute()
    return validate(cfg.with_overrides(**over)) if over else cfg
