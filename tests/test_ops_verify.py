"""verify: damaged, truncated and missing ZIPs are reported, quarantined, requeued and re-exported."""

from __future__ import annotations

import asyncio
import csv
import errno
import json
import sqlite3
import time
import zipfile
from pathlib import Path

import pytest

from horos_async import cli, config as config_mod, demo
from horos_async.backup import zipcheck
from horos_async.ops import verify
from horos_async.errors import LockHeld
from horos_async.guards import RunLock

from helpers import assert_backup_complete, make_config, run, zips


@pytest.fixture
def backed_up(tmp_path):
    lib = demo.build_demo(tmp_path / "lib", studies=1)
    cfg = make_config(lib, tmp_path / "Backup")
    run(cfg, until_done=True)
    return lib, cfg


def do_verify(cfg, **kw):
    lines = []
    kw.setdefault("progress", lines.append)
    result = asyncio.run(verify.Verifier(cfg, **kw).run())
    result.lines = lines
    return result


def ledger(cfg, sql, *params):
    con = sqlite3.connect(cfg.ledger_path)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def rel(cfg, path: Path) -> str:
    return path.relative_to(cfg.backup_dir).as_posix()


def flip_member_byte(path: Path) -> None:
    """Flip one byte in the middle of the largest member's stored data; the file size does not change."""
    with zipfile.ZipFile(path) as zf:
        info = max(zf.infolist(), key=lambda i: i.compress_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
        at = info.header_offset + 30 + name_len + extra_len + info.compress_size // 2
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_bad_zips_are_reported_quarantined_requeued_and_reexported(backed_up):
    lib, cfg = backed_up
    all_zips = zips(cfg.backup_dir)
    truncated, flipped, deleted = all_zips[1], all_zips[4], all_zips[7]
    size = flipped.stat().st_size
    flipped_uid = json.loads(zipfile.ZipFile(flipped).comment)["uid"]
    truncated.write_bytes(truncated.read_bytes()[:-200])
    flip_member_byte(flipped)
    assert flipped.stat().st_size == size
    deleted.unlink()

    quick = do_verify(cfg)  # sizes and central directories: the flipped byte goes unseen
    assert (quick.invalid, quick.missing, quick.finished) == (1, 1, True)
    assert not flipped.parent.joinpath(".quarantine").exists()
    deep = do_verify(cfg, deep=True)
    assert (deep.invalid, deep.missing) == (1, 0), deep.problems
    assert "ZIP_INVALID" in deep.problems[0] and flipped_uid in deep.problems[0]

    bad = {rel(cfg, p) for p in (truncated, flipped, deleted)}
    rows = ledger(cfg, "SELECT zip_path, status FROM zips WHERE status != 'ok'")
    assert dict(rows) == {rel(cfg, truncated): "bad", rel(cfg, flipped): "bad", rel(cfg, deleted): "missing"}
    states = ledger(cfg, "SELECT s.state, s.code FROM studies s JOIN zips z ON z.key = s.key "
                         "WHERE z.status != 'ok'")
    assert sorted(states) == [("pending", "ZIP_INVALID"), ("pending", "ZIP_INVALID"), ("pending", "ZIP_MISSING")]
    issues = ledger(cfg, "SELECT code, zip_path FROM issues WHERE code IN ('ZIP_INVALID', 'ZIP_MISSING')")
    assert {z for _, z in issues} == bad
    with open(cfg.issues_csv, encoding="utf-8-sig", newline="") as f:
        text = f.read()
    # issues.csv names the month folder only: a ZIP's name carries the patient's (log_patient_names = false)
    assert {r["zip"] for r in csv.DictReader(text.splitlines()) if r["code"].startswith("ZIP_")} == \
        {b.split("/")[0] for b in bad}
    assert not [p.name for p in (truncated, flipped, deleted) if p.stem.split("_")[0] in text]
    quarantined = sorted(p.name for p in (cfg.backup_dir / ".quarantine").rglob("*.zip"))
    assert quarantined == sorted([truncated.name, flipped.name])
    assert not truncated.exists() and not flipped.exists()  # nobody restores from them

    result = run(cfg, until_done=True)
    assert result.done == 3
    assert_backup_complete(lib, cfg.backup_dir)
    again = do_verify(cfg, deep=True)
    assert again.bad == 0 and again.checked == len(zips(cfg.backup_dir))


def test_good_zips_get_verified_at(backed_up):
    lib, cfg = backed_up
    t0 = time.time()
    result = do_verify(cfg, deep=True)
    assert result.bad == 0 and result.checked == result.total == len(zips(cfg.backup_dir))
    stamps = [r[0] for r in ledger(cfg, "SELECT verified_at FROM zips WHERE status='ok'")]
    assert stamps and all(s >= t0 for s in stamps)
    assert result.bytes_read > 0


def test_a_pass_resumes_where_it_stopped(backed_up):
    lib, cfg = backed_up
    total = len(zips(cfg.backup_dir))
    first = do_verify(cfg, deep=True, max_zips=5)
    assert (first.checked, first.finished) == (5, False) and "max-zips" in first.stopped
    state = json.loads(cfg.verify_state_path.read_text())
    assert state["checked"] == 5 and state["cursor"] and state["deep"] is True and not state["finished"]
    second = do_verify(cfg, deep=True)
    assert (second.skipped, second.checked, second.finished) == (5, total - 5, True)
    assert any("resuming" in line for line in second.lines)
    third = do_verify(cfg, deep=True, max_zips=2)  # the finished pass is not resumed: a new one starts
    assert (third.skipped, third.checked) == (0, 2)
    fourth = do_verify(cfg, deep=True, restart=True, max_zips=3)
    assert (fourth.skipped, fourth.checked) == (0, 3)
    other = do_verify(cfg, deep=False, max_zips=1)  # another mode does not reuse the deep pass
    assert other.skipped == 0


def test_scope_month_and_since(backed_up):
    lib, cfg = backed_up
    months = {}
    for p in zips(cfg.backup_dir):
        months[p.parent.name] = months.get(p.parent.name, 0) + 1
    month, count = sorted(months.items())[0]
    assert do_verify(cfg, month=month).total == count
    assert do_verify(cfg, since="2999-01-01").total == 0
    assert do_verify(cfg, since="2000-01-01").total == len(zips(cfg.backup_dir))
    with pytest.raises(Exception, match="YYYY_MM"):
        verify.Verifier(cfg, month="2024-03")
    with pytest.raises(Exception, match="YYYY-MM-DD"):
        verify.Verifier(cfg, since="03/2024")


def test_refuses_while_a_run_holds_the_lock(backed_up):
    lib, cfg = backed_up
    with RunLock(cfg.lock_path):
        with pytest.raises(LockHeld, match="a backup run is in progress.*try again later"):
            do_verify(cfg)


def test_rate_limit_sleeps_to_honour_it():
    now, slept = [0.0], []
    throttle = verify.Throttle(5e6, clock=lambda: now[0], sleep=slept.append)
    throttle.add(10e6)
    assert slept == [pytest.approx(2.0)]
    now[0] = 10.0
    throttle.add(1e6)  # far behind the allowed rate: no sleep
    assert len(slept) == 1
    verify.Throttle(None, sleep=slept.append).add(1e12)
    assert len(slept) == 1


def test_rate_limited_deep_verify_takes_its_time(backed_up):
    lib, cfg = backed_up
    slept = []
    result = asyncio.run(verify.Verifier(cfg, deep=True, max_mb_per_s=0.5, sleep=slept.append).run())
    assert result.bad == 0 and sum(slept) > 0.5 * result.bytes_read / 0.5e6


def test_cli_exit_codes(backed_up, capsys):
    lib, cfg = backed_up
    cfg.source.write_text(config_mod.render_toml(cfg), encoding="utf-8")
    assert cli.main(["verify", "--deep", "--config", str(cfg.source)]) == 0
    assert "pass is complete" in capsys.readouterr().out
    zips(cfg.backup_dir)[0].unlink()
    assert cli.main(["verify", "--config", str(cfg.source), "--progress-every", "1"]) == 9
    captured = capsys.readouterr()
    assert "ZIP_MISSING" in captured.err and "1 missing" in captured.out
    cfg.ledger_path.unlink()
    assert cli.main(["verify", "--config", str(cfg.source)]) == 8


def test_month_marker_withdrawn_when_verify_finds_a_bad_or_missing_zip(backed_up):
    _, cfg = backed_up
    by_month = {}
    for p in zips(cfg.backup_dir):
        by_month.setdefault(p.parent, []).append(p)
    marked = [m for m in by_month if (m / ".month_done").exists()]
    assert len(marked) >= 2
    damaged, emptied = marked[0], marked[1]
    z = by_month[damaged][0]
    z.write_bytes(z.read_bytes()[: z.stat().st_size // 2])
    for p in by_month[emptied]:
        p.unlink()
    result = do_verify(cfg)
    assert result.invalid == 1 and result.missing == len(by_month[emptied])
    assert not (damaged / ".month_done").exists()
    assert not (emptied / ".month_done").exists()
    assert all((m / ".month_done").exists() for m in marked[2:])
    run(cfg, until_done=True)  # the studies are exported again and the months are whole again
    assert (damaged / ".month_done").exists() and (emptied / ".month_done").exists()


class OneReadError:
    """A real file whose reads fail with EIO once they pass ``at`` (a transient fault at the I/O boundary)."""

    def __init__(self, f, at: int) -> None:
        self.f, self.at = f, at

    def read(self, n: int = -1) -> bytes:
        if self.at is not None and self.f.tell() + (n if n >= 0 else 1 << 62) > self.at:
            self.at = None
            raise OSError(errno.EIO, "Input/output error")
        return self.f.read(n)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()


def read_errors_on(monkeypatch, target: Path, times: int, at: int) -> list:
    """The next ``times`` openings of ``target`` by zipcheck fail with EIO past byte ``at``; returns the openings."""
    opened = []

    def flaky_open(path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        if Path(path) != target:
            return f
        opened.append(path)
        return OneReadError(f, at) if len(opened) <= times else f

    monkeypatch.setattr(zipcheck, "open", flaky_open, raising=False)
    return opened


@pytest.mark.parametrize("deep", [True, False])
def test_one_transient_read_error_does_not_quarantine_a_good_zip(backed_up, monkeypatch, deep):
    lib, cfg = backed_up
    target = max(zips(cfg.backup_dir), key=lambda p: p.stat().st_size)
    # deep: inside the members' data; quick: the first read (the end records)
    opened = read_errors_on(monkeypatch, target, 1, target.stat().st_size // 2 if deep else 0)
    result = do_verify(cfg, deep=deep)
    assert len(opened) == 2  # read once, failed, read again
    assert (result.good, result.invalid, result.missing) == (result.total, 0, 0), result.problems
    assert target.exists() and not (cfg.backup_dir / ".quarantine").exists()
    assert not ledger(cfg, "SELECT zip_path FROM zips WHERE status != 'ok'")
    assert not ledger(cfg, "SELECT code FROM issues WHERE code LIKE 'ZIP_%'")
    assert any("read again" in line for line in result.lines)  # the admin hears of the shaky read


def test_a_zip_unreadable_twice_is_quarantined(backed_up, monkeypatch):
    lib, cfg = backed_up
    target = max(zips(cfg.backup_dir), key=lambda p: p.stat().st_size)
    opened = read_errors_on(monkeypatch, target, 2, target.stat().st_size // 2)
    result = do_verify(cfg, deep=True)
    assert len(opened) == 2
    assert result.invalid == 1 and "unreadable" in result.problems[0]
    assert not target.exists()
    assert [p.name for p in (cfg.backup_dir / ".quarantine").rglob("*.zip")] == [target.name]
    monkeypatch.undo()
    assert run(cfg, until_done=True).done == 1
    assert_backup_complete(lib, cfg.backup_dir)
