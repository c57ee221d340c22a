"""Horos must be able to commit at any moment of a run: a writer committing every 50 ms never waits
more than 250 ms (rollback journal, as current Horos). The 130,000-study figure is in scripts/bench_plan.py."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

from horos_async import demo

from helpers import assert_backup_complete, make_config, run


def test_writer_never_waits_during_a_run(tmp_path):
    lib = demo.build_demo(tmp_path / "lib", studies=10, images_per_series=6, ct_size=256, mr_size=256)
    cfg = make_config(lib, tmp_path / "Backup", batch_size=4, db_busy_seconds=10)
    writer = subprocess.Popen([sys.executable, "-m", "horos_async.demo.writer_probe", str(lib.database), "6"],
                              stdout=subprocess.PIPE)
    results = []
    t = threading.Thread(target=lambda: results.append(run(cfg, until_done=True)))
    t.start()
    out, _ = writer.communicate(timeout=60)
    t.join(timeout=300)
    figures = json.loads(out)
    assert figures["commits"] > 50
    assert figures["max_ms"] < 250, figures
    assert results and results[0].exit_code == 0
    assert_backup_complete(lib, cfg.backup_dir)
