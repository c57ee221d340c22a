"""Which alerts a run (or a ``verify``) gives, and sending them through every configured channel.

After each ``run`` attempt the command line calls :func:`after_run`: it reads the status (health
included), opens, reminds and closes condition episodes (``episodes``), adds the ``ZIP_FAIL`` studies
of this run and the periodic summary, retries what earlier runs could not deliver, and pings the
healthcheck URL. Channels run in parallel threads, each call bounded by ``channels.TIMEOUT``: a dead
server costs at most that once per channel, after the backup's work is done. Nothing here raises into
the backup: every failure is logged and the message kept for the next run.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from horos_async import guards, status
from horos_async.codes import HealthCode, IssueCode
from horos_async.config import Config
from horos_async.errors import EXIT_INTERRUPTED, EXIT_LOCKED
from horos_async.health import Attempt, FAILING, REFUSED_CODES, fix_for, stamp
from horos_async.notify import channels, episodes
from horos_async.notify.messages import title, word
from horos_async.timezones import zone_of

log = logging.getLogger(__name__)

LOCK_FILE = "notify.lock"
SUMMARY_SECONDS = {"daily": 24 * 3600.0, "weekly": 7 * 24 * 3600.0}
RUN_FAILURES = REFUSED_CODES + (HealthCode.DISK_FULL, HealthCode.DISK_LOW, HealthCode.RUN_FAILED,
                                HealthCode.INTERNAL_ERROR)
"""The conditions of failed runs (one FAILING episode, whichever of them is the latest)."""
ALERT_CODES = RUN_FAILURES + (HealthCode.STALLED, HealthCode.NO_PROGRESS)
"""Conditions told once per episode, reminded daily, and when they recover."""
SEVERITY = {HealthCode.NO_PROGRESS: "warning", HealthCode.DISK_LOW: "warning",
            IssueCode.INDEX_SNAPSHOT_SKIPPED: "warning"}
# The ledger conditions of status.WARNING_CONDITIONS (an index snapshot overdue...) are alert episodes too:
# told when they start, reminded daily, and when they end, like the health's conditions.


@dataclass
class Message:
    """One alert, as every channel sends it."""

    event: str
    """``problem``, ``reminder``, ``recovered``, ``ZIP_FAIL``, ``VERIFY_BAD``, ``summary`` or ``test``."""
    code: str
    severity: str
    """``error``, ``warning`` or ``info``."""
    subject: str
    text: str
    host: str
    time: float
    counts: Dict[str, Any] = field(default_factory=dict)

    def document(self) -> Dict[str, Any]:
        """The webhook's JSON: ``event``, ``severity``, ``host``, ``message``, ``counts``, plus ``title`` and
        ``text`` so ntfy (``?tpl=1&t={{.title}}&m={{.message}}``) and Slack/Teams hooks show it as is."""
        when = dt.datetime.fromtimestamp(self.time, dt.timezone.utc).isoformat(timespec="seconds")
        return {"event": self.event, "code": self.code, "severity": self.severity, "host": self.host,
                "title": self.subject, "message": self.text, "text": f"{self.subject}\n{self.text}",
                "counts": self.counts, "time": when, "source": "horos-backup"}


@dataclass
class Delivery:
    """What one channel did with one batch of messages."""

    channel: str
    ok: bool
    detail: str


# -- entry points (cli) ------------------------------------------------------------------------------
def run_started(cfg: Config) -> Optional[threading.Thread]:
    """Ping ``<healthcheck_url>/start`` in the background (not when a run is already going: that start
    will exit 4, and an unanswered ``/start`` would make healthchecks.io report a failure)."""
    url = cfg.notify.healthcheck_url
    if not url or _run_going(cfg):
        return None
    t = threading.Thread(target=_quiet_ping, args=(url.rstrip("/") + "/start", ""), name="healthcheck-start",
                         daemon=True)
    t.start()
    return t


def after_run(cfg: Config, attempt: Attempt, started: Optional[threading.Thread] = None) -> List[Delivery]:
    """Every alert this attempt gives, sent; returns what each channel did (never raises)."""
    n = cfg.notify
    if not n.channels:
        return []
    try:
        if started is not None:  # /start must reach healthchecks.io before the end of the run does
            started.join(channels.TIMEOUT)
        with _dispatch_lock(cfg) as mine:
            if not mine:  # another run is sending right now; this attempt's news waits for the next one
                return []
            return _after_run(cfg, attempt)
    except Exception as exc:  # an alert must never fail a backup: say so and go on
        log.error("alerts not sent: %s: %s", type(exc).__name__, exc)
        return [Delivery("notify", False, f"{type(exc).__name__}: {exc}")]


def verify_found_bad(cfg: Config, bad: int, uids: Sequence[str] = ()) -> List[Delivery]:
    """``verify`` found ``bad`` invalid or missing ZIPs: tell every channel (never raises)."""
    if not cfg.notify.channels or not bad:
        return []
    try:
        lang = cfg.notify.language
        msg = _message(cfg, "VERIFY_BAD", "VERIFY_BAD", "error", title(lang, "VERIFY_BAD"),
                       [word(lang, "verify_bad", count=bad), *uids[:50]], None)
        with _dispatch_lock(cfg) as mine:
            st = episodes.load(cfg) if mine else episodes.NotifyState()
            out = _deliver(cfg, [msg], st)
            if mine:
                episodes.save(cfg, st)
            return out
    except Exception as exc:
        log.error("alerts not sent: %s: %s", type(exc).__name__, exc)
        return [Delivery("notify", False, f"{type(exc).__name__}: {exc}")]


def send_test(cfg: Config) -> List[Delivery]:
    """One test message through every configured channel (``notify test``); each says if it worked."""
    lang = cfg.notify.language
    msg = _message(cfg, "test", "TEST", "info", title(lang, "TEST"), [word(lang, "test", host=_host())], None)
    results = _send_all(cfg, [msg], list(cfg.notify.channels), test=True)
    return [Delivery(ch, not failed, detail) for ch, (failed, detail) in results.items()]


# -- what to say ------------------------------------------------------------------------------------
def _after_run(cfg: Config, attempt: Attempt) -> List[Delivery]:
    n, lang, now = cfg.notify, cfg.notify.language, time.time()
    snap = status.read_snapshot(cfg)
    st = episodes.load(cfg)
    msgs: List[Message] = []
    h = snap.health
    active: Dict[str, Tuple[str, str]] = {}
    if h is not None:
        for code, summary, fix in h.problems:
            if code in ALERT_CODES:
                active[code] = (summary, fix)
    warning_since: Dict[str, float] = {}
    for code, since, detail in snap.warnings:
        active[code] = (detail, IssueCode(code).action if code in IssueCode.__members__ else "")
        warning_since[code] = since
    for code, (detail, fix) in active.items():
        ep = st.open.get(code)
        since = warning_since.get(code) or (h.since if h is not None and code == h.code and h.since else now)
        if ep is None:
            st.open[code] = episodes.Episode(since=since, last_sent=now, detail=detail)
            msgs.append(_condition(cfg, snap, "problem", code, detail, fix, since))
        elif now - ep.last_sent >= episodes.REMIND_SECONDS:
            ep.last_sent, ep.detail = now, detail
            msgs.append(_condition(cfg, snap, "reminder", code, detail, fix, ep.since))
    for code in [c for c in st.open if c not in active]:
        ep = st.open.pop(code)
        if h is not None and h.state == FAILING and code in RUN_FAILURES:
            continue  # the runs still fail, for another reason now: that one is told instead
        msgs.append(_message(cfg, "recovered", code, "info", word(lang, "recovered", title=title(lang, code)),
                             [word(lang, "since", since=stamp(ep.since, zone_of(cfg.timezone), now)),
                              word(lang, "lasted", duration=_duration(now - ep.since))], snap))
    failed_zips = sorted({i.uid for i in snap.issues if i.code == IssueCode.ZIP_FAIL and i.ts >= attempt.started and i.uid})
    if failed_zips:
        msgs.append(_message(cfg, "ZIP_FAIL", "ZIP_FAIL", "warning", title(lang, "ZIP_FAIL"),
                             [word(lang, "zip_fail", count=len(failed_zips)), *failed_zips[:50]], snap))
    period = SUMMARY_SECONDS.get(n.summary)
    if period and (st.last_summary is None or now - st.last_summary >= period):
        st.last_summary = now
        health_text = h.summary if h is not None else word(lang, "unknown")
        msgs.append(_message(cfg, "summary", "SUMMARY", "info", title(lang, f"SUMMARY_{n.summary}"),
                             [word(lang, "summary", health=health_text, **_counts_text(cfg, snap))], snap))
    deliveries = _deliver(cfg, msgs, st)
    episodes.save(cfg, st)
    if n.healthcheck_url and attempt.exit_code not in (EXIT_LOCKED, EXIT_INTERRUPTED):  # a start that found a run going, a stop
        suffix = "" if not attempt.failed else "/fail"
        body = f"{attempt.outcome} (exit {attempt.exit_code}) {attempt.message}".strip()
        results = _send_all(cfg, [], ["healthcheck"], ping_suffix=suffix, ping_body=body)
        deliveries += [Delivery(ch, not f, d) for ch, (f, d) in results.items()]
    return deliveries


def _condition(cfg: Config, snap, event: str, code: str, detail: str, fix: str, since: float) -> Message:
    lang = cfg.notify.language
    lines = [word(lang, "since", since=stamp(since, zone_of(cfg.timezone), time.time())), detail]
    fix = fix or fix_for(code)
    if fix:
        lines.append(word(lang, "fix", fix=fix))
    return _message(cfg, event, code, SEVERITY.get(code, "error"), word(lang, event, title=title(lang, code)),
                    lines, snap)


def _message(cfg: Config, event: str, code: str, severity: str, subject: str, lines: List[str], snap) -> Message:
    counts: Dict[str, Any] = {}
    if snap is not None and snap.engine != "unreadable":
        counts = {"done": snap.done, "eligible": snap.eligible, "pending": snap.pending, "failed": snap.failed,
                  "bytes": snap.bytes_done, "free_bytes": _free(cfg), "eta_seconds": snap.eta_seconds}
        if event != "summary":
            lines = lines + ["", word(cfg.notify.language, "archive", **_counts_text(cfg, snap))]
    host = _host()
    return Message(event, code, severity, f"[horos-backup] {host}: {subject}", "\n".join(lines), host,
                   time.time(), counts)


def _counts_text(cfg: Config, snap) -> Dict[str, str]:
    unknown = word(cfg.notify.language, "unknown")
    free = _free(cfg)
    return {"done": f"{snap.done:,}", "eligible": f"{snap.eligible:,}" if snap.eligible is not None else unknown,
            "pending": f"{snap.pending:,}" if snap.pending is not None else unknown, "failed": f"{snap.failed:,}",
            "bytes": guards.human_bytes(snap.bytes_done), "free": guards.human_bytes(free) if free is not None
            else unknown, "eta": _duration(snap.eta_seconds) if snap.eta_seconds is not None else unknown}


# -- sending ----------------------------------------------------------------------------------------
def _deliver(cfg: Config, msgs: List[Message], st: episodes.NotifyState) -> List[Delivery]:
    """Send the outbox, then ``msgs``, through e-mail and the webhook; what fails goes back in the outbox."""
    queue: List[Tuple[Message, List[str]]] = []
    for item in st.outbox:
        try:
            queue.append((Message(**item["message"]), [c for c in item["channels"] if c in cfg.notify.channels]))
        except (TypeError, KeyError):
            continue
    queue += [(m, [c for c in cfg.notify.channels if c != "healthcheck"]) for m in msgs]
    st.outbox = []
    deliveries: List[Delivery] = []
    by_channel: Dict[str, List[Message]] = {}
    for m, chans in queue:
        for c in chans:
            by_channel.setdefault(c, []).append(m)
    if not by_channel:
        return deliveries
    results, unsent = _send_by_channel(cfg, by_channel)
    pending: Dict[int, List[str]] = {}
    for c, left in unsent.items():
        for m in left:
            pending.setdefault(id(m), []).append(c)
    for m, _ in queue:
        if id(m) in pending:
            st.outbox.append({"message": asdict(m), "channels": pending.pop(id(m))})
    for c, (failed, detail) in results.items():
        deliveries.append(Delivery(c, not failed, detail))
    return deliveries


def _send_all(cfg: Config, msgs: List[Message], chans: List[str], *, test: bool = False, ping_suffix: str = "",
              ping_body: str = "") -> Dict[str, Tuple[bool, str]]:
    """Send ``msgs`` through ``chans`` (a healthcheck gets one ping); {channel: (failed, detail)}."""
    by_channel = {c: list(msgs) for c in chans}
    results, _ = _send_by_channel(cfg, by_channel, test=test, ping_suffix=ping_suffix, ping_body=ping_body)
    return results


def _send_by_channel(cfg: Config, by_channel: Dict[str, List[Message]], *, test: bool = False,
                     ping_suffix: str = "", ping_body: str = ""):
    """One thread per channel, joined within a bounded time; returns (results, unsent messages)."""
    n = cfg.notify
    results: Dict[str, Tuple[bool, str]] = {}
    unsent: Dict[str, List[Message]] = {}
    lock = threading.Lock()

    def work(ch: str, msgs: List[Message]) -> None:
        done: List[str] = []
        try:
            if ch == "healthcheck":
                base = n.healthcheck_url.rstrip("/")
                body = msgs[0].text if msgs else ping_body
                done.append(channels.ping(base + ("/log" if test else ping_suffix), body))
            for i, m in enumerate(msgs if ch != "healthcheck" else ()):
                try:
                    if ch == "email":
                        done.append(channels.send_email(n, m.subject, m.text))
                    elif ch == "webhook":
                        done.append(channels.post_webhook(n.webhook_url, m.document()))
                except channels.ChannelError:
                    with lock:
                        unsent[ch] = msgs[i:]  # this one and the rest wait for the next run
                    raise
            with lock:
                results[ch] = (False, done[-1] if done else ch)
        except channels.ChannelError as exc:
            log.warning("alert not delivered by %s (kept for the next run): %s", ch, exc)
            with lock:
                results[ch] = (True, str(exc))
        except Exception as exc:  # a bug in a channel must not cost the others
            log.error("alert channel %s failed: %s: %s", ch, type(exc).__name__, exc)
            with lock:
                results[ch] = (True, f"{type(exc).__name__}: {exc}")
                unsent.setdefault(ch, list(msgs) if ch != "healthcheck" else [])

    threads = [threading.Thread(target=work, args=(ch, msgs), name=f"notify-{ch}", daemon=True)
               for ch, msgs in by_channel.items()]
    for t in threads:
        t.start()
    # Each call is bounded by TIMEOUT; allow one slow call per message and a little slack, never more.
    deadline = time.monotonic() + channels.TIMEOUT * max(1, max(len(m) for m in by_channel.values())) + 2
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    with lock:
        for ch, msgs in by_channel.items():
            if ch not in results:  # still hanging past every timeout: give up on it for this run
                results[ch] = (True, f"{ch}: no answer in time")
                unsent.setdefault(ch, [] if ch == "healthcheck" else list(msgs))
        return dict(results), {k: list(v) for k, v in unsent.items()}


# -- helpers ----------------------------------------------------------------------------------------
def _quiet_ping(url: str, body: str) -> None:
    try:
        channels.ping(url, body)
    except channels.ChannelError as exc:
        log.warning("healthcheck start ping failed: %s", exc)


def _run_going(cfg: Config) -> bool:
    """A run appears to hold the run lock (its pid, written in the lock file, is alive)."""
    return guards.pid_alive(guards.read_lock_pid(cfg.lock_path))


@contextlib.contextmanager
def _dispatch_lock(cfg: Config) -> Iterator[bool]:
    """An exclusive, non-blocking lock on the alert state; yields False when another process holds it."""
    try:
        os.makedirs(cfg.health_dir, mode=0o700, exist_ok=True)
        fd = os.open(cfg.health_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError as exc:
        log.warning("alert state folder %s not writable (%s): alerts sent without memory", cfg.health_dir,
                    exc.strerror or exc)
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _free(cfg: Config) -> Optional[int]:
    try:
        return guards.free_bytes(cfg.backup_dir)
    except OSError:
        return None


def _host() -> str:
    return socket.gethostname() or "this Mac"


def _duration(seconds: float) -> str:
    if seconds < 3600:
        return f"{max(1, round(seconds / 60))} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"
