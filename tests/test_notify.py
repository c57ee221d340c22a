"""Alerts that reach a person: real SMTP and HTTP servers on 127.0.0.1, and what arrives at them.

The SMTP server is aiosmtpd (with a login the client must pass), the webhook and the healthcheck an
``http.server`` in a thread. The runs are real ``horos-backup run`` invocations on demo libraries.
"""

from __future__ import annotations

import email
import email.policy
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import List, Tuple

import pytest

from horos_async import cli, config as config_mod, health
from horos_async.errors import EXIT_CHECK, EXIT_CONFIG, EXIT_LOCKED, EXIT_OK, EXIT_SENTINEL, ConfigError
from horos_async.guards import RunLock
from horos_async.health import Attempt
from horos_async.notify import dispatch, episodes

from helpers import assert_backup_complete, make_config, zips

aiosmtpd_controller = pytest.importorskip("aiosmtpd.controller")
from aiosmtpd.smtp import AuthResult  # noqa: E402

PASSWORD = "app-pass-3141-5926"


# -- the servers ------------------------------------------------------------------------------------
class Mailbox:
    """An aiosmtpd handler keeping every message and every login."""

    def __init__(self) -> None:
        self.messages: List[email.message.EmailMessage] = []
        self.logins: List[Tuple[str, str]] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 OK"

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        self.logins.append((auth_data.login.decode(), auth_data.password.decode()))
        return AuthResult(success=auth_data.password.decode() == PASSWORD)

    def subjects(self) -> List[str]:
        return [str(m["Subject"]) for m in self.messages]


@pytest.fixture
def smtp():
    box = Mailbox()
    controller = aiosmtpd_controller.Controller(box, hostname="127.0.0.1", port=_free_port(),
                                                authenticator=box.authenticate, auth_require_tls=False)
    controller.start()
    box.port = controller.port
    yield box
    controller.stop()


class Web:
    """Every request that reached the HTTP server: (path, body)."""

    def __init__(self) -> None:
        self.requests: List[Tuple[str, bytes]] = []
        self.fail_paths: set = set()

    def paths(self) -> List[str]:
        return [p for p, _ in self.requests]

    def json(self) -> List[dict]:
        return [json.loads(b) for p, b in self.requests if p == "/hook"]


@pytest.fixture
def web():
    rec = Web()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            rec.requests.append((self.path, body))
            code = 500 if self.path in rec.fail_paths else 200
            self.send_response(code)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    rec.base = f"http://127.0.0.1:{server.server_address[1]}"
    yield rec
    server.shutdown()
    server.server_close()


@pytest.fixture
def dead_smtp():
    """A port that accepts connections (the kernel's backlog) and never says a word."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s.getsockname()[1]
    s.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- configs ----------------------------------------------------------------------------------------
def password_file(tmp_path: Path, mode: int = 0o600) -> Path:
    p = tmp_path / "smtp-password"
    p.write_text(PASSWORD + "\n", encoding="utf-8")
    p.chmod(mode)
    return p


def notify_table(tmp_path, smtp_port=None, web=None, **over):
    table = {"language": "en"}
    if smtp_port:
        table.update(email_to=["ti@clinica.example"], email_from="backup@clinica.example", smtp_host="127.0.0.1",
                     smtp_port=smtp_port, smtp_starttls=False, smtp_user="backup@clinica.example",
                     smtp_password_file=str(password_file(tmp_path)))
    if web:
        table.update(webhook_url=web.base + "/hook", healthcheck_url=web.base + "/ping/abc")
    table.update(over)
    return table


def setup_cli(lib, tmp_path, *, sentinel=None, over=None, **notify):
    cfg = make_config(lib, tmp_path / "Backup", notify=notify, **(over or {}),
                      **({"sentinel": str(sentinel)} if sentinel else {}))
    path = tmp_path / "cfg.toml"
    path.write_text(config_mod.render_toml(cfg), encoding="utf-8")
    return cfg, path


def age_episodes(cfg, seconds: float) -> None:
    """Make every open episode (and the last summary) ``seconds`` older, as if that time had passed."""
    st = episodes.load(cfg)
    for ep in st.open.values():
        ep.last_sent -= seconds
        ep.since -= seconds
    if st.last_summary:
        st.last_summary -= seconds
    episodes.save(cfg, st)


# -- the rules --------------------------------------------------------------------------------------
def test_refused_runs_alert_once_then_daily_then_on_recovery(demo_lib, tmp_path, smtp, web, launchd_installed):
    sentinel = tmp_path / "disk" / ".pacs_sentinel"
    sentinel.parent.mkdir()
    cfg, path = setup_cli(demo_lib, tmp_path, sentinel=sentinel, **notify_table(tmp_path, smtp.port, web))
    for _ in range(3):
        assert cli.main(["run", "--config", str(path)]) == EXIT_SENTINEL
    # once per episode: one e-mail, one webhook document, for three refused runs
    assert len(smtp.messages) == 1, smtp.subjects()
    mail = smtp.messages[0]
    assert "runs refused: the sentinel file is missing" in str(mail["Subject"])
    body = mail.get_content()
    assert str(sentinel) in body and "What to do: mount the backup volume" in body
    assert smtp.logins == [("backup@clinica.example", PASSWORD)]  # the password came from its file
    (doc,) = web.json()
    assert doc["event"] == "problem" and doc["code"] == "SENTINEL_MISSING" and doc["severity"] == "error"
    assert doc["host"] == socket.gethostname() and str(sentinel) in doc["message"]
    assert doc["text"].startswith(doc["title"]) and isinstance(doc["counts"], dict)
    # the healthcheck: /start then /fail for each refused run, the reason in the body
    pings = [p for p in web.paths() if p.startswith("/ping")]
    assert pings == ["/ping/abc/start", "/ping/abc/fail"] * 3
    assert b"SENTINEL_MISSING" in [b for p, b in web.requests if p == "/ping/abc/fail"][0]

    age_episodes(cfg, 25 * 3600)  # a day later, still refused: one reminder
    assert cli.main(["run", "--config", str(path)]) == EXIT_SENTINEL
    assert len(smtp.messages) == 2 and str(smtp.messages[1]["Subject"]).endswith(
        "still: runs refused: the sentinel file is missing (backup volume not mounted?)")
    assert cli.main(["run", "--config", str(path)]) == EXIT_SENTINEL
    assert len(smtp.messages) == 2  # and not again within the day

    sentinel.touch()  # the volume is back: the run succeeds, the recovery is told once
    assert cli.main(["run", "--config", str(path), "--until-done"]) == EXIT_OK
    assert len(smtp.messages) == 3
    assert "recovered: runs refused: the sentinel file is missing" in str(smtp.messages[2]["Subject"])
    assert "It lasted 25.0 h" in smtp.messages[2].get_content()
    assert web.json()[-1]["event"] == "recovered" and web.json()[-1]["severity"] == "info"
    assert [p for p in web.paths() if p.startswith("/ping")][-2:] == ["/ping/abc/start", "/ping/abc"]  # success
    assert cli.main(["run", "--config", str(path)]) == EXIT_OK
    assert len(smtp.messages) == 3  # all quiet while all is well


def test_a_start_that_finds_a_run_going_pings_nothing_and_alerts_nothing(demo_lib, tmp_path, web):
    cfg, path = setup_cli(demo_lib, tmp_path, **notify_table(tmp_path, web=web))
    cfg.work_dir.mkdir(parents=True)
    with RunLock(cfg.lock_path):  # this test process holds it, as a long run would
        assert cli.main(["run", "--config", str(path)]) == EXIT_LOCKED
    assert web.requests == []


def test_disk_low_shrunk_database_and_stall_are_told(tmp_path, web):
    import os
    import sqlite3

    from helpers import backed_up_library

    from horos_async import demo

    lib, plain = backed_up_library(tmp_path, studies=2)
    table = notify_table(tmp_path, web=web)
    low, low_path = setup_cli(lib, tmp_path, over={"min_free_gb": 10 ** 6}, **table)  # no disk has 1 PB free
    demo.add_study(lib, modality="CT", images=2, date_added=time.time() - 7200)  # something new to export
    assert cli.main(["run", "--config", str(low_path)]) == 6
    assert [d["code"] for d in web.json()] == ["DISK_LOW"] and web.json()[0]["severity"] == "warning"
    cfg, path = setup_cli(lib, tmp_path, **table)
    with sqlite3.connect(lib.database) as db:  # Horos now answers with an empty database
        db.execute("DELETE FROM ZSERIES")
        db.execute("DELETE FROM ZSTUDY")
    assert cli.main(["run", "--config", str(path)]) == 11
    assert [d["code"] for d in web.json()][-1:] == ["HOROS_DB_SHRANK"]
    assert "Is the right Horos Data mounted?" in web.json()[-1]["message"]
    # a run hangs: alive (this process), heartbeat fresh, nothing done for 31 minutes; the next scheduled
    # start finds the lock held, exits 4, and tells of the stall
    doc = {"version": 1, "pid": os.getpid(), "host": os.uname().nodename, "state": "running",
           "heartbeat": time.time(), "started": time.time() - 3600, "progress_at": time.time() - 31 * 60}
    cfg.live_status_path.write_text(json.dumps(doc), encoding="utf-8")
    with RunLock(cfg.lock_path):
        assert cli.main(["run", "--config", str(path)]) == EXIT_LOCKED
    stalled = [d for d in web.json() if d["code"] == "STALLED"]
    assert len(stalled) == 1 and "has made no progress for 31 min" in stalled[0]["message"]


def test_summary_names_the_counts_and_comes_once_a_period(demo_lib, tmp_path, smtp, web):
    cfg, path = setup_cli(demo_lib, tmp_path, **notify_table(tmp_path, smtp.port, web, summary="daily"))
    assert cli.main(["run", "--config", str(path), "--until-done"]) == EXIT_OK
    summaries = [m for m in smtp.messages if "daily summary" in str(m["Subject"])]
    assert len(summaries) == 1
    text = summaries[0].get_content()
    done = len(zips(cfg.backup_dir))
    assert f"Archive: {done} of " in text and "pending" in text and "failing" in text
    assert "free on the backup disk" in text and "ETA" in text and "Health:" in text
    doc = next(d for d in web.json() if d["event"] == "summary")
    assert doc["counts"]["done"] == done and doc["counts"]["free_bytes"] > 0 and "eta_seconds" in doc["counts"]
    assert cli.main(["run", "--config", str(path)]) == EXIT_OK
    assert len([m for m in smtp.messages if "daily summary" in str(m["Subject"])]) == 1
    age_episodes(cfg, 25 * 3600)
    assert cli.main(["run", "--config", str(path)]) == EXIT_OK
    assert len([m for m in smtp.messages if "daily summary" in str(m["Subject"])]) == 2


def test_zip_fail_alert_names_studies_by_uid_only(tmp_path, smtp):
    from helpers import backed_up_library
    import sqlite3

    lib, plain = backed_up_library(tmp_path, studies=2)
    cfg = make_config(lib, plain.backup_dir, notify=notify_table(tmp_path, smtp.port))
    study = lib.studies[0]
    started = time.time() - 1
    with sqlite3.connect(cfg.ledger_path) as db:  # what the engine writes when a study's ZIP fails
        db.execute("INSERT INTO issues (ts, code, key, uid, zip_path, detail) VALUES (?,?,?,?,?,?)",
                   (time.time(), "ZIP_FAIL", "", study.uid, f"2019_01/{study.patient_name}_x_{study.uid}.zip",
                    "3 attempts produced no valid ZIP"))
    dispatch.after_run(cfg, Attempt(started=started, ended=time.time(), outcome="ok", exit_code=0))
    (mail,) = [m for m in smtp.messages if "ZIP_FAIL" in str(m["Subject"])]
    body = mail.get_content()
    assert study.uid in body and "1 studies could not be zipped" in body
    name_parts = [p for p in study.patient_name.replace("^", " ").split() if len(p) > 2]
    assert name_parts and not any(p in body for p in name_parts)


def test_a_dead_smtp_server_does_not_hold_the_backup_and_the_alert_is_retried(demo_lib, tmp_path, dead_smtp,
                                                                              smtp, monkeypatch):
    sentinel = tmp_path / "disk" / ".pacs_sentinel"
    sentinel.parent.mkdir()
    cfg, path = setup_cli(demo_lib, tmp_path, sentinel=sentinel, **notify_table(tmp_path, dead_smtp))
    t0 = time.monotonic()
    assert cli.main(["run", "--config", str(path)]) == EXIT_SENTINEL  # an alert to send, to a dead server
    took = time.monotonic() - t0
    assert took < dispatch.channels.TIMEOUT + 5, took  # the one timeout, not one per message or a hang
    assert len(episodes.load(cfg).outbox) == 1  # kept for the next run
    sentinel.touch()
    t0 = time.monotonic()
    assert cli.main(["run", "--config", str(path), "--until-done"]) == EXIT_OK  # the backup is done, whole
    assert time.monotonic() - t0 < 60
    assert_backup_complete(demo_lib, cfg.backup_dir)
    assert health.read(cfg).attempts[-1].exit_code == EXIT_OK  # the failed alert changed nothing
    # the SMTP server is back (configured anew): the next run delivers what waited
    cfg2, path2 = setup_cli(demo_lib, tmp_path, sentinel=sentinel, **notify_table(tmp_path, smtp.port))
    assert cli.main(["run", "--config", str(path2)]) == EXIT_OK
    subjects = smtp.subjects()
    assert any("runs refused: the sentinel file is missing" in s for s in subjects), subjects
    assert any("recovered" in s for s in subjects), subjects
    assert episodes.load(cfg).outbox == []


def test_verify_finding_bad_zips_is_told(tmp_path, web):
    from helpers import backed_up_library

    lib, plain = backed_up_library(tmp_path, studies=2)
    cfg, path = setup_cli(lib, tmp_path, **notify_table(tmp_path, web=web))
    zips(cfg.backup_dir)[0].unlink()
    assert cli.main(["verify", "--config", str(path)]) == EXIT_CHECK
    (doc,) = web.json()
    assert doc["event"] == "VERIFY_BAD" and doc["severity"] == "error"
    assert "verify found 1 bad or missing ZIPs" in doc["message"]
    assert cli.main(["verify", "--config", str(path)]) == EXIT_OK  # re-queued, nothing bad left: silence
    assert len(web.json()) == 1


def test_notify_test_says_which_channel_worked(demo_lib, tmp_path, smtp, web, capsys):
    cfg, path = setup_cli(demo_lib, tmp_path, **notify_table(tmp_path, smtp.port, web))
    assert cli.main(["notify", "test", "--config", str(path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert out.count(" OK ") == 3 and "all 3 channels worked" in out
    assert len(smtp.messages) == 1 and "test message" in str(smtp.messages[0]["Subject"])
    assert web.json()[0]["event"] == "test" and "/ping/abc/log" in web.paths()  # /log: no state change
    web.fail_paths.add("/hook")
    assert cli.main(["notify", "test", "--config", str(path)]) == EXIT_CHECK
    captured = capsys.readouterr()
    assert "webhook      FAILED  webhook http://127.0.0.1:" in captured.out and "HTTP 500" in captured.out
    assert "1 of 3 channels failed: webhook" in captured.err
    bare, bare_path = setup_cli(demo_lib, tmp_path)
    assert cli.main(["notify", "test", "--config", str(bare_path)]) == EXIT_CONFIG


def test_password_file_must_be_private_and_the_password_never_shows(demo_lib, tmp_path, smtp, capsys):
    table = notify_table(tmp_path, smtp.port)
    cfg, path = setup_cli(demo_lib, tmp_path, **table)
    Path(table["smtp_password_file"]).chmod(0o644)
    assert cli.main(["notify", "test", "--config", str(path)]) == EXIT_CHECK
    out = capsys.readouterr().out
    assert "readable by other users (mode 644); refused. Run: chmod 600" in out and smtp.messages == []
    Path(table["smtp_password_file"]).chmod(0o600)
    assert cli.main(["config", "--config", str(path)]) == EXIT_OK
    shown = capsys.readouterr().out
    assert "[notify]" in shown and table["smtp_password_file"] in shown and PASSWORD not in shown
    assert cli.main(["run", "--config", str(path), "--until-done"]) == EXIT_OK
    logs = "".join(p.read_text(encoding="utf-8") for p in cfg.log_dir.glob("*.log*"))
    assert PASSWORD not in logs and PASSWORD not in cfg.health_path.read_text(encoding="utf-8")


def test_alerts_in_portuguese(demo_lib, tmp_path, smtp):
    sentinel = tmp_path / "disk" / ".pacs_sentinel"
    sentinel.parent.mkdir()
    cfg, path = setup_cli(demo_lib, tmp_path, sentinel=sentinel, **notify_table(tmp_path, smtp.port, language="pt"))
    assert cli.main(["run", "--config", str(path)]) == EXIT_SENTINEL
    (mail,) = smtp.messages
    assert "execuções recusadas: o arquivo sentinela não existe" in str(mail["Subject"])
    assert "O que fazer:" in mail.get_content() and "Desde:" in mail.get_content()


def test_notify_table_is_checked_like_every_key(tmp_path):
    with pytest.raises(ConfigError, match="notify.language"):
        config_mod.from_mapping({"notify": {"language": "es"}})
    with pytest.raises(ConfigError, match="notify.smtp_host"):
        config_mod.from_mapping({"notify": {"email_to": ["a@b.c"], "email_from": "x@b.c"}})
    with pytest.raises(ConfigError, match="notify.webhook_url"):
        config_mod.from_mapping({"notify": {"webhook_url": "ntfy.sh/topic"}})
    with pytest.raises(ConfigError, match="notify.colour"):
        config_mod.from_mapping({"notify": {"colour": "red"}})
    n = config_mod.from_mapping({"notify": {"webhook_url": "https://ntfy.sh/x", "summary": "weekly"}}).notify
    assert n.channels == ("webhook",) and n.smtp_port == 587 and n.smtp_starttls is True


def test_a_day_without_an_index_snapshot_is_told_then_its_recovery(demo_lib, tmp_path, web):
    """INDEX_SNAPSHOT_SKIPPED is a ledger condition, not a health state: status shows it as a warning
    and the alerts tell it once, daily while it lasts, and when a snapshot succeeds again."""
    import asyncio
    import os
    import sqlite3

    from horos_async import status
    from horos_async.ops import index_upkeep

    from test_index_upkeep import hot_journal

    cfg, _path = setup_cli(demo_lib, tmp_path, **notify_table(tmp_path, web=web))
    hot_journal(demo_lib.database)  # a crashed Horos: no consistent copy can be taken
    t0 = time.time()
    asyncio.run(index_upkeep.after_run(cfg, now=t0))
    asyncio.run(index_upkeep.after_run(cfg, now=t0 + 25 * 3600))  # a day has passed without a copy
    snap = status.read_snapshot(cfg)
    assert [w[0] for w in snap.warnings] == ["INDEX_SNAPSHOT_SKIPPED"]
    text = status.render(snap)
    assert "Warning: INDEX_SNAPSHOT_SKIPPED since" in text and "hot journal" in text
    assert status.to_json(snap)["warnings"][0][0] == "INDEX_SNAPSHOT_SKIPPED"

    def ok_attempt():
        return Attempt(started=time.time() - 1, ended=time.time(), outcome="ok", exit_code=0)

    dispatch.after_run(cfg, ok_attempt())
    told = [d for d in web.json() if d["code"] == "INDEX_SNAPSHOT_SKIPPED"]
    assert len(told) == 1 and told[0]["event"] == "problem" and told[0]["severity"] == "warning"
    assert "hot journal" in told[0]["message"] and "index snapshot" in told[0]["message"]
    dispatch.after_run(cfg, ok_attempt())  # the next run: nothing new to tell
    assert len([d for d in web.json() if d["code"] == "INDEX_SNAPSHOT_SKIPPED"]) == 1
    age_episodes(cfg, 25 * 3600)
    dispatch.after_run(cfg, ok_attempt())
    assert [d["event"] for d in web.json() if d["code"] == "INDEX_SNAPSHOT_SKIPPED"] == ["problem", "reminder"]
    # Horos recovers its database; the next run's snapshot succeeds and ends the condition
    sqlite3.connect(demo_lib.database).execute("SELECT COUNT(*) FROM ZSTUDY").fetchone()
    assert not os.path.exists(str(demo_lib.database) + "-journal") or \
        os.path.getsize(str(demo_lib.database) + "-journal") == 0
    assert asyncio.run(index_upkeep.after_run(cfg)).snapshot is not None
    assert status.read_snapshot(cfg).warnings == ()
    dispatch.after_run(cfg, ok_attempt())
    events = [d["event"] for d in web.json() if d["code"] == "INDEX_SNAPSHOT_SKIPPED"]
    assert events == ["problem", "reminder", "recovered"]


def test_a_failing_mirror_is_told_once_then_its_recovery(tmp_path, web):
    """A mirror destination whose disk is not mounted (no sentinel): MIRROR_FAILED reaches the webhook once
    with the reason, not again on the next failing mirror, and 'recovered' once the disk is back."""
    from horos_async import config as config_mod
    from horos_async.errors import EXIT_MIRROR

    from mirror_helpers import library, with_mirrors

    _lib, cfg = library(tmp_path)
    nas = tmp_path / "Volumes" / "NAS"
    nas.mkdir(parents=True)  # a bare mount point: the share is not mounted
    table = notify_table(tmp_path, web=web)
    conf = with_mirrors(cfg, tmp_path, config_mod.MirrorConfig(dest=str(nas)))
    assert "[notify]" not in conf.read_text(encoding="utf-8")
    with conf.open("a", encoding="utf-8") as f:  # the notify table, as a person adds it
        f.write("\n[notify]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items()))
    assert cli.main(["mirror", "--config", str(conf)]) == EXIT_MIRROR
    failed = [d for d in web.json() if d["code"] == "MIRROR_FAILED"]
    assert len(failed) == 1 and failed[0]["event"] == "problem" and failed[0]["severity"] == "error"
    assert str(nas) in failed[0]["message"] and "not mounted" in failed[0]["message"]
    assert cli.main(["mirror", "--config", str(conf)]) == EXIT_MIRROR  # still failing: nothing new told
    assert len([d for d in web.json() if d["code"] == "MIRROR_FAILED"]) == 1
    (nas / config_mod.MIRROR_SENTINEL).touch()  # the share is mounted again
    assert cli.main(["mirror", "--config", str(conf)]) == EXIT_OK
    assert [d["event"] for d in web.json() if d["code"] == "MIRROR_FAILED"] == ["problem", "recovered"]
