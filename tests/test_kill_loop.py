"""Crash safety: SIGKILL the real CLI at random moments, then let it finish; SIGTERM stops cleanly.

The invariant (docs/design/durability.md): every due study in exactly one valid, complete ZIP, nothing recorded
done that is not, no temp files left. After every kill, every ZIP under a final name must verify.
The default run kills a handful of times; HOROS_SLOW=1 kills 200 times.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

from horos_async.backup import zipcheck
from horos_async import config as config_mod, demo
from horos_async.errors import EXIT_INTERRUPTED

from helpers import assert_backup_complete, exportable, key_of, make_config, zips, zips_by_key

KILLS = 200 if os.environ.get("HOROS_SLOW") else 8


def write_config(lib, tmp_path, **over):
    cfg = make_config(lib, tmp_path / "Backup", concurrency=2, batch_size=3, **over)
    path = tmp_path / "cfg.toml"
    path.write_text(config_mod.render_toml(cfg), encoding="utf-8")
    return cfg, path


def start(path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.Popen([sys.executable, "-m", "horos_async", "run", "--config", str(path), "--until-done"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def done_keys(backup):
    p = backup / "export_state.sqlite"
    if not p.exists():
        return set()
    con = sqlite3.connect(p)
    try:
        return {r[0] for r in con.execute("SELECT key FROM studies WHERE state='done'")}
    finally:
        con.close()


def test_sigkill_at_random_moments_then_rerun(tmp_path):
    lib = demo.build_demo(tmp_path / "lib", studies=8, images_per_series=6, ct_size=256, mr_size=256)
    cfg, path = write_config(lib, tmp_path, sleep_between_studies=0.05)
    backup = cfg.backup_dir
    rng = random.Random(7)
    killed_mid_run = 0
    for i in range(KILLS):
        proc = start(path)
        time.sleep(rng.uniform(0.2, 1.6))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed_mid_run += 1
        elif proc.wait() == 0:
            # the backup completed between kills: start over so later kills land mid-work again
            shutil.rmtree(backup)
            continue
        proc.wait()
        # whatever instant the kill hit: every ZIP under a final name is valid ...
        for z in zips(backup):
            zipcheck.verify_zip(z, None, deep=True)
        # ... and everything the ledger calls done is really on disk
        on_disk = set(zips_by_key(backup))
        assert done_keys(backup) <= on_disk
    assert killed_mid_run >= KILLS // 2, "the kills should land while the engine is working"
    proc = start(path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    assert_backup_complete(lib, backup)
    assert done_keys(backup) == {key_of(s) for s in exportable(lib)}


def test_sigterm_stops_cleanly_and_resumes(tmp_path):
    lib = demo.build_demo(tmp_path / "lib", studies=8, images_per_series=8, ct_size=256, mr_size=256)
    cfg, path = write_config(lib, tmp_path, sleep_between_studies=0.3)
    proc = start(path)
    deadline = time.time() + 30
    while time.time() < deadline and not zips(cfg.backup_dir):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED, err.decode()
    assert not list(cfg.backup_dir.rglob("*.partial"))
    assert len(zips(cfg.backup_dir)) < len(exportable(lib))
    proc = start(path)
    proc.communicate(timeout=300)
    assert proc.returncode == 0
    assert_backup_complete(lib, cfg.backup_dir)


def test_sigterm_ends_the_pause_between_studies_at_once(tmp_path):
    """launchd sends SIGTERM and waits ExitTimeOut (60 s): a long throttle must not hold the exit."""
    lib = demo.build_demo(tmp_path / "lib", studies=1)
    cfg, path = write_config(lib, tmp_path, sleep_between_studies=600)
    proc = start(path)
    deadline = time.time() + 30
    while time.time() < deadline and not (cfg.backup_dir / ".tmp" / "status.json").exists():
        time.sleep(0.05)
    time.sleep(0.5)  # inside the first pause now
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED, err.decode()
    assert time.time() - t0 < 10
    assert not list(cfg.backup_dir.rglob("*.partial"))
