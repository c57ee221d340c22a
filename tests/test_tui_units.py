"""The TUI's plain parts: formatters, the launch command, the log tail, and what each widget would show."""

from __future__ import annotations

import datetime as dt
import os
import sys
import time

import pytest

os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")

from horos_async.config import Config
from horos_async.status import IssueRow, Job, Snapshot
from tui import formatting as fmt
from tui import launcher, source
from tui.scripted import SAMPLE_NOW, ScriptedSource, sample_snapshot
from tui.widgets.archive_progress import counts_line, month_range, month_strip, rate_history, rate_text, remaining
from tui.widgets.engine_header import describe
from tui.widgets.incoming_gauge import history_strip, incoming_state, incoming_text
from tui.widgets.issues_table import code_counts, newest_first
from tui.widgets.job_table import batch_rows, batch_title, job_fraction
from tui.widgets.log_pane import new_lines

SP = dt.timezone(dt.timedelta(hours=-3))  # São Paulo has had no DST since 2019


# formatting ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seconds, text", [
    (None, "–"), (-1, "–"), (0, "0s"), (45.4, "45s"), (192, "3m 12s"), (3600, "1h 00m"),
    (7500, "2h 05m"), (47 * 3600 + 59 * 60, "47h 59m"), (3 * 86400 + 4 * 3600, "3d 4h"),
])
def test_duration(seconds, text):
    assert fmt.duration(seconds) == text


@pytest.mark.parametrize("n, text", [
    (None, "–"), (0, "0 B"), (999, "999 B"), (1000, "1.0 kB"), (1_234_567, "1.2 MB"),
    (182_300_000_000, "182.3 GB"), (1_050_000_000_000, "1.05 TB"), (2.5e15, "2500.00 TB"),
])
def test_size(n, text):
    assert fmt.size(n) == text


def test_clock_time_same_day_other_day_and_unknown():
    assert fmt.clock_time(SAMPLE_NOW - 60, SP, SAMPLE_NOW) == "10:59:00"
    assert fmt.clock_time(SAMPLE_NOW - 86400, SP, SAMPLE_NOW) == "2024-05-31 11:00"
    assert fmt.clock_time(SAMPLE_NOW, SP) == "2024-06-01 11:00"
    assert fmt.clock_time(None, SP, SAMPLE_NOW) == "–"


def test_ago_bar_levels_percent_rate_count():
    assert fmt.ago(100.0, 160.0) == "1m 00s ago"
    assert fmt.ago(220.0, 160.0) == "in 1m 00s"
    assert fmt.bar(0.5, 10) == "█████░░░░░"
    assert fmt.bar(None, 4) == "░░░░"
    assert fmt.bar(7.0, 3) == "███"
    assert fmt.levels([0.0, 0.5, 1.0, None]) == "▁▄█·"
    assert fmt.percent(5, 0) is None and fmt.percent(5, None) is None
    assert fmt.percent(30, 20) == 100.0
    assert fmt.rate(42.04) == "42.0" and fmt.rate(5670.2) == "5,670"
    assert fmt.count(1250) == "1,250" and fmt.count(None) == "–"


def test_shorten_keeps_both_ends():
    name = "SILVA^MARIA_19570312_20190114_1.2.826.0.1.3680043.8.498.10243957162039871.zip"
    short = fmt.shorten(name, 24)
    assert len(short) == 24 and short.startswith("SILVA^MARIA") and short.endswith("039871.zip") and "…" in short
    assert fmt.shorten("abc", 10) == "abc"
    assert fmt.shorten("abcdef", 2) == "ab"
    assert fmt.shorten("abc", 0) == ""


# launcher -----------------------------------------------------------------------------------------------
def test_launch_uses_launchctl_on_a_mac_with_the_agent_installed(tmp_path):
    agents = tmp_path / "Library" / "LaunchAgents"
    agents.mkdir(parents=True)
    (agents / f"{launcher.LABEL}.plist").write_text("<plist/>")
    plan = launcher.plan_launch(Config(source=tmp_path / "cfg.toml"), platform="darwin", home=tmp_path, uid=501)
    assert plan.via_launchd
    assert plan.argv == ["launchctl", "kickstart", "gui/501/org.horos-backup.agent"]


@pytest.mark.parametrize("platform", ["darwin", "linux"])
def test_launch_runs_the_engine_detached_without_the_agent(tmp_path, platform):
    cfg_file = tmp_path / "cfg.toml"
    plan = launcher.plan_launch(Config(source=cfg_file), platform=platform, home=tmp_path, python="/py")
    assert not plan.via_launchd
    assert plan.argv == ["/py", "-m", "horos_async", "run", "--config", str(cfg_file)]
    bare = launcher.plan_launch(Config(), platform=platform, home=tmp_path, python="/py")
    assert bare.argv == ["/py", "-m", "horos_async", "run"]  # defaults or $HOROS_BACKUP_CONFIG, like launchd
    assert "detached engine run" in bare.describe()


def test_start_detached_survives_in_its_own_session(tmp_path):
    marker = tmp_path / "ran"
    code = f"import os, pathlib; pathlib.Path({str(marker)!r}).write_text(str(os.getsid(0)))"
    said = launcher.start(launcher.Launch([sys.executable, "-c", code], via_launchd=False))
    assert "started a backup run (pid" in said
    deadline = time.monotonic() + 10
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert int(marker.read_text()) != os.getsid(0)  # start_new_session: a TUI quit cannot signal it


def test_start_via_launchd_reports_a_failing_launchctl():
    fail = [sys.executable, "-c", "import sys; sys.stderr.write('Could not find service'); sys.exit(113)"]
    with pytest.raises(RuntimeError, match="Could not find service"):
        launcher.start(launcher.Launch(fail, via_launchd=True))
    ok = launcher.start(launcher.Launch([sys.executable, "-c", "pass"], via_launchd=True))
    assert "asked launchd" in ok


# source -------------------------------------------------------------------------------------------------
def test_tail_reads_only_the_end(tmp_path):
    log = tmp_path / "horos-backup.log"
    log.write_text("".join(f"line {i}\n" for i in range(10000)), encoding="utf-8")
    assert source.tail(log, 3) == ["line 9997", "line 9998", "line 9999"]
    rows = source.tail(log, 100000, max_bytes=100)
    assert rows[-1] == "line 9999" and all(r.startswith("line ") for r in rows)  # no half line first
    assert source.tail(tmp_path / "missing.log") == []


def test_status_source_calls_read_snapshot_with_the_clock(tmp_path, monkeypatch):
    seen = {}

    def fake(cfg, now=None):
        seen.update(cfg=cfg, now=now)
        return Snapshot(taken=now, engine="idle", detail="")

    monkeypatch.setattr(source.status, "read_snapshot", fake, raising=False)
    cfg = Config(backup_dir=tmp_path)
    src = source.StatusSource(cfg, clock=lambda: 123.0)
    assert src.read().engine == "idle" and seen == {"cfg": cfg, "now": 123.0}
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "horos-backup.log").write_text("a\nb\n")
    assert src.read_log(1) == ["b"]


def test_read_all_never_raises():
    class Broken:
        def read(self):
            raise ValueError("status.json is not JSON")

        def read_log(self, lines=200):
            raise PermissionError(13, "Permission denied", "/b/logs/horos-backup.log")

    snap, lines = source.read_all(Broken(), True, lambda: 5.0)
    assert snap.engine == "unreadable" and snap.taken == 5.0 and snap.detail == "ValueError: status.json is not JSON"
    assert lines == ("cannot read the engine log: Permission denied: /b/logs/horos-backup.log",)
    snap, lines = source.read_all(ScriptedSource([sample_snapshot()], log=["x"]), False, lambda: 5.0)
    assert snap.engine == "running" and lines is None


def test_describe_error_names_the_file():
    err = PermissionError(13, "Permission denied", "/Volumes/PACS/Backup/.tmp/status.json")
    assert source.describe_error(err) == "Permission denied: /Volumes/PACS/Backup/.tmp/status.json"
    assert source.describe_error(ValueError("bad json")) == "ValueError: bad json"


def test_scripted_source_plays_steps_then_repeats_the_last():
    a, b = sample_snapshot(), sample_snapshot(engine="idle")
    src = ScriptedSource([a, OSError("gone"), b])
    assert src.read() is a
    with pytest.raises(OSError):
        src.read()
    assert src.read() is b and src.read() is b
    src.push(a)
    assert src.read() is a


# what the widgets show ----------------------------------------------------------------------------------
def test_header_running_paused_idle_stale_unreadable():
    running = describe(sample_snapshot(), SP)
    assert running.badge == "▶ RUNNING" and running.state_class == "-ok"
    assert "since 10:35:00 (25m 00s)" in running.summary and "batch 3" in running.summary
    paused = describe(sample_snapshot(engine="paused", guard_code="INCOMING_OVER_LIMIT",
                                      guard_detail="31,204 files"), SP)
    assert paused.badge == "‖ PAUSED" and "INCOMING" in paused.summary and paused.state_class == "-warning"
    assert paused.detail == "31,204 files"
    odd_guard = describe(sample_snapshot(engine="paused", guard_code="NEW_GUARD"), SP)
    assert "NEW_GUARD" in odd_guard.summary
    finished = sample_snapshot().runs[:1]
    idle = describe(sample_snapshot(engine="idle", next_run=SAMPLE_NOW + 480, runs=finished), SP)
    assert idle.badge == "○ IDLE" and idle.state_class == "-ok"
    assert idle.summary == "last run ok 2024-05-31 11:50 · next ≈ 11:08:00 (in 8m 00s)"
    assert idle.detail.startswith("last run: 40 done, 0 failed")
    killed = describe(sample_snapshot(engine="idle"), SP)  # newest run never recorded an end
    assert "last run started 10:35:00, no end recorded" in killed.summary
    not_installed = describe(sample_snapshot(engine="idle", launchd_installed=False), SP)
    assert "no launchd agent" in not_installed.summary and not_installed.state_class == "-warning"
    stale = describe(sample_snapshot(engine="stale", detail="stopped 2m ago"), SP)
    assert stale.badge == "✖ STALE" and stale.state_class == "-stale"
    bad = describe(Snapshot(taken=0, engine="unreadable", detail="Permission denied: x"), SP)
    assert bad.badge == "? UNREADABLE" and bad.state_class == "-error" and bad.detail.endswith(": x")
    never = describe(Snapshot(taken=0, engine="never-run", detail=""), SP)
    assert never.badge == "○ NEVER RUN"
    assert describe(None, SP).state_class == "-stale"  # before the first read: not "idle" either


def test_batch_rows_order_and_text():
    rows = batch_rows(sample_snapshot())
    assert [r.key.split(":")[0] for r in rows] == ["job", "job", "queued", "queued", "done", "done"]
    first = rows[0]
    assert first.progress == "████░░░░░░  42%" and first.files == "412/980" and first.size == "215.0/512.0 MB"
    assert rows[4].progress == "failed MISSING_FILES" and rows[4].icon == "✗"
    assert rows[5].progress == "done in 48s" and rows[5].icon == "✓"
    assert batch_title(sample_snapshot()) == "Batch 3 · 2 running · 2 queued · 2 finished"
    assert batch_title(None) == "Batch · nothing running"
    assert job_fraction(Job("u", "l", 1, 4, 0, 0, 0.0)) == 0.25
    assert job_fraction(Job("u", "l", 0, 0, 0, 0, 0.0)) is None


def test_archive_strip_and_rates():
    snap = sample_snapshot()
    strip = month_strip(snap, 30)
    assert strip.startswith("months …") and len(strip) == 30
    assert month_strip(sample_snapshot(months=(("2024_01", 2, 1),)), 30) == "months ▄"
    assert month_range(snap) == "2017_01…2019_12 · 24/36 complete"
    rates = rate_history(snap)
    assert len(rates) == 30 and all(9.0 <= r <= 17.0 for r in rates)
    assert month_strip(sample_snapshot(months=()), 30) == "months: none scanned yet"
    assert counts_line(snap) == "412 / 1,250 studies · 33% · 3 failed"
    assert counts_line(sample_snapshot(eligible=None, failed=0)) == "412 studies done · not scanned yet"
    assert counts_line(sample_snapshot(eligible=0, done=0, failed=0)) == "0 / 0 studies · nothing eligible"
    # The ETA comes from the rate achieved over the last days (1,512 studies in 72 h: 21/h), running or not;
    # never from the speed inside one run (42 studies/h here), which a schedule does not keep up.
    assert remaining(snap) == "835 to go · ETA 39h 45m"
    assert remaining(sample_snapshot(engine="idle")) == "835 to go · ETA 39h 45m"
    assert remaining(sample_snapshot(achieved=(0.0, 0))) == "835 to go"  # no runs: no ETA at all
    assert remaining(sample_snapshot(done=1250)) == "archive complete"
    assert rate_text(snap).startswith("14.")  # live while running
    assert rate_text(sample_snapshot(engine="idle")) == "idle · 21.0 studies/h over 3 days "  # no stale live rate


def test_incoming_states_text_and_history():
    def snap(n, capped=False):
        return sample_snapshot(incoming_count=n, incoming_limit=25000, incoming_capped=capped)

    assert incoming_state(snap(1204)) == "-ok"
    assert incoming_state(snap(20000)) == "-warning"
    assert incoming_state(snap(25001)) == "-error"
    assert incoming_state(snap(25000, capped=True)) == "-error"
    assert incoming_state(snap(None)) == "-stale"
    assert incoming_text(snap(1204)) == "1,204 / 25,000 files (5%)"
    assert incoming_text(snap(25000, capped=True)).startswith("≥25,000")
    assert history_strip([0, 6250, 12500, 25000, 50000], 25000, 10) == "▁▂▄██"
    assert len(history_strip(list(range(100)), 25000, 10)) == 10
    assert history_strip([], 25000, 10) == ""


def test_issues_newest_first_filter_and_counts():
    issues = (IssueRow(1.0, "ZIP_FAIL", "a", "", ""), IssueRow(3.0, "NO_FILES", "b", "", ""),
              IssueRow(2.0, "ZIP_FAIL", "c", "", ""))
    assert [i.uid for i in newest_first(issues)] == ["b", "c", "a"]
    assert [i.uid for i in newest_first(issues, "ZIP_FAIL")] == ["c", "a"]
    assert code_counts(issues) == {"NO_FILES": 1, "ZIP_FAIL": 2}


def test_log_lines_append_or_redraw():
    assert new_lines([], ["a"]) == (False, ["a"])
    assert new_lines(["a", "b"], ["a", "b", "c"]) == (True, ["c"])
    assert new_lines(["a", "b", "c"], ["b", "c", "d", "e"]) == (True, ["d", "e"])  # window slid
    assert new_lines(["a", "b"], ["x", "y"]) == (False, ["x", "y"])  # rotated
    assert new_lines(["a"], ["a"]) == (True, [])


# health line ---------------------------------------------------------------------------------------------
def test_health_line_shows_ledger_warnings_beside_an_ok_health():
    from dataclasses import replace

    from horos_async.health import OK, Health
    from tui.widgets.health_line import describe_health

    snap = replace(sample_snapshot(), health=Health(OK, "OK - last success 2 h ago"))
    assert describe_health(snap).state_class == "-ok"
    warned = replace(snap, warnings=(("INDEX_SNAPSHOT_SKIPPED", SAMPLE_NOW - 3600, "hot journal"),))
    view = describe_health(warned)
    assert view.state_class == "-warning" and "warning: INDEX_SNAPSHOT_SKIPPED" in view.text
    assert view.text.startswith("last success 2 h ago")


def test_archive_panel_names_each_mirror_destination():
    from dataclasses import replace

    from horos_async.status import MirrorState
    from tui.widgets.archive_progress import mirror_line

    assert mirror_line(sample_snapshot()) == ""
    nas = MirrorState("/Volumes/NAS", 412, 410, 2_000_000_000, 1_990_000_000, 3 * 3600.0, SAMPLE_NOW - 600,
                      "ok", "", "")
    b2 = MirrorState("rclone:b2:clinic", 412, 0, 2_000_000_000, 0, 2 * 86400.0, SAMPLE_NOW - 60, "failed",
                     "Failed to copy: 401 unauthorized", "MIRROR_FAILED")
    lines = mirror_line(replace(sample_snapshot(), mirrors=(nas, b2))).split("\n")
    assert lines[0].startswith("mirror /Volumes/NAS: CATCHING UP · 410/412 ZIPs") and "behind" in lines[0]
    assert lines[1].startswith("mirror rclone:b2:clinic: FAILING · 0/412 ZIPs")
