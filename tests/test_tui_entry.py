"""The ``horos-tui`` command: flags, config errors, the missing-extra hint, and a real terminal session."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tui import app as tui_app

ROOT = Path(__file__).resolve().parents[1]


def run_py(code: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          **kwargs)


def test_missing_textual_prints_the_install_command():
    done = run_py("import sys; sys.modules['textual'] = None\n"
                  "from tui.app import entry\n"
                  "entry([])")
    assert done.returncode == 2
    assert done.stderr.strip() == "horos-tui needs the optional 'tui' extra: pip install 'horos-backup[tui]'"


def test_importing_the_entry_point_does_not_import_textual():
    done = run_py("import sys, tui.app, tui.launcher, tui.source, tui.formatting, tui.scripted\n"
                  "print('textual' in sys.modules)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_bad_config_is_reported_with_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        tui_app.entry(["--config", str(tmp_path / "nope.toml")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("horos-tui: config file") and "nope.toml does not exist" in err


def test_bad_flags(tmp_path, capsys):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(f'backup_dir = "{tmp_path / "backup"}"\nhoros_data = "{tmp_path / "horos"}"\n')
    with pytest.raises(SystemExit) as exc:
        tui_app.entry(["--config", str(cfg), "--refresh", "0.01"])
    assert exc.value.code == 2 and "too fast" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        tui_app.entry(["--config", str(cfg), "--theme", "no-such-theme"])
    assert exc.value.code == 2 and "unknown theme 'no-such-theme'" in capsys.readouterr().err


def test_entry_turns_animations_off_and_runs_the_app(tmp_path, monkeypatch):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(f'backup_dir = "{tmp_path / "backup"}"\nhoros_data = "{tmp_path / "horos"}"\n')
    monkeypatch.delenv("TEXTUAL_ANIMATIONS", raising=False)
    seen = {}

    class FakeApp:
        return_code = 0

        def run(self, mouse=True):
            seen.update(mouse=mouse, animations=os.environ.get("TEXTUAL_ANIMATIONS"))

    def fake_make_app(config, **kwargs):
        seen.update(config=config, **kwargs)
        return FakeApp()

    monkeypatch.setattr(tui_app, "make_app", fake_make_app)
    with pytest.raises(SystemExit) as exc:
        tui_app.entry(["--config", str(cfg), "--refresh", "2", "--no-mouse"])
    assert exc.value.code == 0
    assert seen["config"].backup_dir == tmp_path / "backup" and seen["config"].source == cfg.resolve()
    assert seen["refresh"] == 2.0 and seen["mouse"] is False and seen["animations"] == "none"


@pytest.mark.skipif(not sys.platform.startswith(("linux", "darwin")), reason="needs a pseudo-terminal")
def test_a_real_terminal_session_shows_the_state_and_quits_on_q(tmp_path):
    """Like an SSH session: a pty of 80x24, no run ever made, then ``q``; the backup folder stays untouched."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    backup = tmp_path / "backup"
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(f'backup_dir = "{backup}"\nhoros_data = "{tmp_path / "horos"}"\nsentinel = ""\n')
    pid, fd = pty.fork()
    if pid == 0:  # child: become horos-tui
        os.environ.update(TERM="xterm-256color", HOROS_BACKUP_CONFIG="")
        os.chdir(ROOT)
        os.execv(sys.executable, [sys.executable, "-c", "from tui.app import entry; entry()", "--config", str(cfg)])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    screen = b""
    deadline = time.monotonic() + 30
    quit_sent = False
    status = None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        if not quit_sent and b"NEVER RUN" in screen:
            os.write(fd, b"q")
            quit_sent = True
        done_pid, status = os.waitpid(pid, os.WNOHANG)
        if done_pid:
            break
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail(f"horos-tui did not show the state and quit; it printed: {screen[-2000:]!r}")
    if status is None or not os.WIFEXITED(status):
        _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert quit_sent, screen[-2000:]
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert not backup.exists()  # read-only: it created nothing, not even the backup folder
