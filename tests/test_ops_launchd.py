"""The LaunchAgent: rendering, validation, and the exact launchctl command lines (fake launchctl)."""

from __future__ import annotations

import os
import plistlib
import stat
import sys
from pathlib import Path

import pytest

from horos_async import cli, config as config_mod
from horos_async.ops import launchd
from horos_async.errors import ConfigError

LABEL = "org.horos-backup.agent"


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "conf" / "horos-backup.toml"
    path.parent.mkdir()
    (tmp_path / "Horos Data").mkdir()
    path.write_text(f'horos_data = "{tmp_path / "Horos Data"}"\nbackup_dir = "{tmp_path / "Back & up"}"\n'
                    f'sentinel = ""\nstart_interval = 900\n', encoding="utf-8")
    return config_mod.load(path)


@pytest.fixture
def program(tmp_path):
    exe = tmp_path / "venv" / "bin" / "horos-backup"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    return exe


class FakeLaunchctl:
    """Records every command line; answers with canned (code, output) per subcommand."""

    def __init__(self, answers=None):
        self.calls = []
        self.answers = answers or {}

    def __call__(self, argv):
        self.calls.append(list(argv))
        return self.answers.get(argv[1], (0, ""))


def test_template_file_and_builtin_copy_are_identical():
    path = Path(__file__).resolve().parent.parent / "launchd" / launchd.TEMPLATE_NAME
    assert plistlib.loads(path.read_bytes()) == launchd.BUILTIN_TEMPLATE
    assert launchd.load_template() == launchd.BUILTIN_TEMPLATE


def test_render_fills_every_key_with_absolute_paths(cfg, program):
    data = launchd.render(cfg, program=program)
    doc = launchd.validate(data)
    assert plistlib.loads(data) == doc
    assert doc["Label"] == LABEL
    assert doc["ProgramArguments"] == [str(program), "run", "--config", str(cfg.source)]
    assert doc["StartInterval"] == 900 and "StartCalendarInterval" not in doc
    assert doc["RunAtLoad"] is True and doc["LowPriorityIO"] is True
    assert doc["ProcessType"] == "Background" and isinstance(doc["Nice"], int)
    env = doc["EnvironmentVariables"]
    assert env["HOROS_BACKUP_CONFIG"] == str(cfg.source)
    assert env["LANG"] == "en_US.UTF-8" and env["PYTHONIOENCODING"] == "utf-8"
    assert env["PATH"].startswith(str(program.parent) + ":")
    # the backup path holds '&': structural filling keeps the XML valid and the path exact
    assert doc["StandardOutPath"] == str(cfg.log_dir / "launchd.out.log")
    assert doc["StandardErrorPath"] == str(cfg.log_dir / "launchd.err.log")
    for p in (doc["ProgramArguments"][0], doc["ProgramArguments"][3], doc["StandardOutPath"]):
        assert os.path.isabs(p)
    assert b"@" not in data.replace(b"en_US.UTF-8", b"")


def test_calendar_variant_replaces_start_interval(cfg, program):
    cal = launchd.parse_calendar("13:00, 02:30,02:30")
    assert cal == [{"Hour": 2, "Minute": 30}, {"Hour": 13, "Minute": 0}]
    doc = launchd.validate(launchd.render(cfg, program=program, calendar=cal))
    assert doc["StartCalendarInterval"] == cal and "StartInterval" not in doc
    for bad in ("25:00", "7", "12:60", "aa:bb"):
        with pytest.raises(ConfigError, match="HH:MM"):
            launchd.parse_calendar(bad)
    assert launchd.calendar_outside_window(cal, "20:00-06:00") == ["13:00"]


def test_refuses_to_install_without_a_config_file(tmp_path, program):
    cfg = config_mod.Config(horos_data=tmp_path, backup_dir=tmp_path / "b")
    with pytest.raises(ConfigError, match="needs a config file"):
        launchd.render(cfg, program=program)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("RunAtLoad"), "RunAtLoad missing"),
    (lambda d: d.__setitem__("StartInterval", 30), ">= 60"),
    (lambda d: d.__setitem__("StartCalendarInterval", [{"Hour": 1, "Minute": 0}]), "exactly one"),
    (lambda d: d["ProgramArguments"].__setitem__(0, "horos-backup"), "not an absolute path"),
    (lambda d: d["EnvironmentVariables"].__setitem__("HOROS_BACKUP_CONFIG", "/other.toml"), "different files"),
    (lambda d: d.__setitem__("StandardOutPath", "@LOG_DIR@/x.log"), "absolute path"),
])
def test_validate_rejects_broken_plists(cfg, program, mutate, message):
    doc = plistlib.loads(launchd.render(cfg, program=program))
    mutate(doc)
    with pytest.raises(launchd.LaunchdError, match=message):
        launchd.validate(plistlib.dumps(doc))
    with pytest.raises(launchd.LaunchdError, match="not a valid plist"):
        launchd.validate(b"<plist><dict><key>Label</key>")


def test_install_writes_the_plist_and_bootstraps(cfg, program, tmp_path):
    fake = FakeLaunchctl()
    home = tmp_path / "home"
    path = launchd.install(cfg, home=home, program=program, runner=fake, uid=501, out=lambda s: None)
    assert path == home / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    launchd.validate(path.read_bytes())
    assert stat.S_IMODE(path.stat().st_mode) & 0o022 == 0  # launchd refuses group/other-writable agents
    assert fake.calls == [
        ["launchctl", "bootout", f"gui/501/{LABEL}"],
        ["launchctl", "enable", f"gui/501/{LABEL}"],
        ["launchctl", "bootstrap", "gui/501", str(path)],
    ]
    assert not list(path.parent.glob(".*partial")), "temp file left behind"
    # reinstalling replaces the plist atomically (a new interval lands in the file)
    launchd.install(cfg.with_overrides(start_interval=1200), home=home, program=program, runner=fake, uid=501,
                    out=lambda s: None)
    assert plistlib.loads(path.read_bytes())["StartInterval"] == 1200


@pytest.mark.parametrize("answer", [
    (64, "Unrecognized subcommand: bootstrap"),
    (125, "Bootstrap failed: 125: Domain does not support specified action"),
])
def test_install_falls_back_to_load_w(cfg, program, tmp_path, answer):
    fake = FakeLaunchctl({"bootstrap": answer})
    path = launchd.install(cfg, home=tmp_path, program=program, runner=fake, uid=501, out=lambda s: None)
    assert fake.calls[-3:] == [
        ["launchctl", "bootstrap", "gui/501", str(path)],
        ["launchctl", "unload", "-w", str(path)],
        ["launchctl", "load", "-w", str(path)],
    ]


def test_install_reports_other_bootstrap_errors(cfg, program, tmp_path):
    fake = FakeLaunchctl({"bootstrap": (5, "Bootstrap failed: 5: Input/output error")})
    with pytest.raises(launchd.LaunchdError, match="Input/output error"):
        launchd.install(cfg, home=tmp_path, program=program, runner=fake, uid=501, out=lambda s: None)
    assert ["launchctl", "load", "-w"] not in [c[:3] for c in fake.calls]


def test_uninstall_boots_out_then_removes(cfg, program, tmp_path):
    path = launchd.install(cfg, home=tmp_path, program=program, runner=FakeLaunchctl(), uid=501, out=lambda s: None)
    fake = FakeLaunchctl()
    assert launchd.uninstall(home=tmp_path, runner=fake, uid=501, out=lambda s: None) is True
    assert fake.calls == [["launchctl", "bootout", f"gui/501/{LABEL}"]]
    assert not path.exists()
    # not loaded and not installed: nothing to do, no error
    fake = FakeLaunchctl({"bootout": (113, "Could not find specified service")})
    assert launchd.uninstall(home=tmp_path, runner=fake, uid=501, out=lambda s: None) is False


def test_uninstall_falls_back_to_unload_w(cfg, program, tmp_path):
    path = launchd.install(cfg, home=tmp_path, program=program, runner=FakeLaunchctl(), uid=501, out=lambda s: None)
    fake = FakeLaunchctl({"bootout": (64, "Unrecognized subcommand: bootout")})
    launchd.uninstall(home=tmp_path, runner=fake, uid=501, out=lambda s: None)
    assert fake.calls == [["launchctl", "bootout", f"gui/501/{LABEL}"], ["launchctl", "unload", "-w", str(path)]]
    assert not path.exists()


def test_uninstall_keeps_the_plist_when_bootout_fails(cfg, program, tmp_path):
    path = launchd.install(cfg, home=tmp_path, program=program, runner=FakeLaunchctl(), uid=501, out=lambda s: None)
    fake = FakeLaunchctl({"bootout": (1, "Boot-out failed: 1: Operation not permitted")})
    with pytest.raises(launchd.LaunchdError, match="not permitted"):
        launchd.uninstall(home=tmp_path, runner=fake, uid=501, out=lambda s: None)
    assert path.exists()


def test_real_runner_calls_a_launchctl_found_on_path(tmp_path, monkeypatch, cfg, program):
    """The subprocess runner, against a fake launchctl script that records its arguments."""
    log = tmp_path / "calls.txt"
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    script = bin_dir / "launchctl"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\n'
                      'if [ "$1" = bootstrap ]; then echo "Unrecognized subcommand: bootstrap" >&2; exit 64; fi\n')
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    runner = launchd.launchctl_runner(macos=True)
    path = launchd.install(cfg, home=tmp_path / "h", program=program, runner=runner, uid=42, out=lambda s: None)
    assert log.read_text().splitlines() == [
        f"bootout gui/42/{LABEL}", f"enable gui/42/{LABEL}", f"bootstrap gui/42 {path}",
        f"unload -w {path}", f"load -w {path}"]


@pytest.mark.skipif(sys.platform == "darwin", reason="on macOS the CLI would run the real launchctl")
def test_cli_install_on_linux_prints_the_commands(cfg, program, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(launchd, "program_path", lambda: program)
    home = tmp_path / "home"
    code = cli.main(["launchd", "install", "--config", str(cfg.source), "--home", str(home), "--calendar", "03:15"])
    out = capsys.readouterr().out
    assert code == 0
    assert f"launchctl bootstrap gui/{os.getuid()} {home}/Library/LaunchAgents/{LABEL}.plist" in out
    doc = plistlib.loads((home / "Library" / "LaunchAgents" / f"{LABEL}.plist").read_bytes())
    assert doc["StartCalendarInterval"] == [{"Hour": 3, "Minute": 15}]
    assert cli.main(["launchd", "print", "--home", str(home)]) == 0
    assert "StartCalendarInterval" in capsys.readouterr().out
    assert cli.main(["launchd", "uninstall", "--home", str(home)]) == 0
    assert not (home / "Library" / "LaunchAgents" / f"{LABEL}.plist").exists()
    # overrides that launchd would silently lose are refused
    assert cli.main(["launchd", "install", "--config", str(cfg.source), "--backup-dir", str(tmp_path)]) == 2


def test_print_and_dry_run_put_only_the_plist_on_stdout(cfg, program, tmp_path, capsys, monkeypatch):
    """Hardening 19: 'launchd print > agent.plist' must give a valid plist; the notes go to stderr."""
    monkeypatch.setattr(launchd, "program_path", lambda: program)
    home = tmp_path / "home"
    assert cli.main(["launchd", "print", "--config", str(cfg.source), "--home", str(home)]) == 0
    captured = capsys.readouterr()
    doc = plistlib.loads(captured.out.encode("utf-8"))  # raises on anything before the XML
    assert doc["Label"] == LABEL and "not installed" in captured.err
    assert cli.main(["launchd", "install", "--config", str(cfg.source), "--home", str(home), "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert plistlib.loads(captured.out.encode("utf-8"))["Label"] == LABEL
    assert "launchctl bootstrap" in captured.err and not (home / "Library").exists()
    plist = home / "Library" / "LaunchAgents" / f"{LABEL}.plist"
    plist.parent.mkdir(parents=True)
    plist.write_bytes(launchd.render(cfg, program=program))
    assert cli.main(["launchd", "print", "--home", str(home)]) == 0
    captured = capsys.readouterr()
    assert plistlib.loads(captured.out.encode("utf-8"))["Label"] == LABEL and str(plist) in captured.err
