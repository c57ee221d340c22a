"""The live status file and the read-only snapshot: running, idle, stale, never-run."""

from __future__ import annotations

import json
import os
import threading
import time

from horos_async import status

from helpers import make_config, run


def test_snapshot_follows_a_real_run(demo_lib_factory, tmp_path):
    lib = demo_lib_factory(studies=4, images_per_series=12, ct_size=512, mr_size=256)
    cfg = make_config(lib, tmp_path / "Backup", sleep_between_studies=0.2, concurrency=1)
    assert status.read_snapshot(cfg).engine == "never-run"
    t = threading.Thread(target=run, args=(cfg,), kwargs={"until_done": True})
    t.start()
    seen = []
    while t.is_alive():
        snap = status.read_snapshot(cfg)
        seen.append(snap)
        time.sleep(0.1)
    t.join()
    running = [s for s in seen if s.engine == "running"]
    assert running, [s.engine for s in seen]
    assert any(s.jobs for s in running)
    assert any(s.eligible for s in running)
    done_counts = [len(s.finished) for s in running]
    assert max(done_counts) > 0
    final = status.read_snapshot(cfg)
    assert final.engine == "idle" and final.done > 0 and final.pending == final.eligible - final.done
    assert final.incoming_count == 0 and final.runs[0].outcome == "ok"


def test_dead_engine_is_stale_not_idle(tmp_path, demo_lib):
    cfg = make_config(demo_lib, tmp_path / "Backup")
    cfg.state_dir.mkdir(parents=True)
    dead = 2 ** 22 + 12345  # above pid_max defaults: no such process
    (cfg.state_dir / "status.json").write_text(json.dumps(
        {"version": 1, "pid": dead, "host": os.uname().nodename, "state": "running",
         "heartbeat": time.time() - 120, "started": time.time() - 200}), encoding="utf-8")
    snap = status.read_snapshot(cfg)
    assert snap.engine == "stale" and "gone" in snap.detail


def test_unreadable_state_is_reported(tmp_path, demo_lib):
    cfg = make_config(demo_lib, tmp_path / "Backup")
    cfg.state_dir.mkdir(parents=True)
    (cfg.state_dir / "status.json").write_text("{not json", encoding="utf-8")
    assert status.read_snapshot(cfg).engine == "unreadable"
