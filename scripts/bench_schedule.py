#!/usr/bin/env python3
"""Studies per hour under the default schedule against `run --until-done` (prints figures; not a test).

Builds a demo library (300 studies by default, small images), writes a config with the product's
defaults (only the paths, an empty sentinel and the demo's timezone set), renders the LaunchAgent
exactly as `horos-backup launchd install` would, and then, on two fresh backup folders:

  scheduled  : launchd's behaviour, simulated: the agent's ProgramArguments with its
               EnvironmentVariables and Nice, started at once (RunAtLoad) and again at every
               StartInterval tick (shortened with --interval) unless the previous run is still going
               (launchd skips that tick); the clock stops when a run exits with every exportable
               study backed up (`horos-backup status --json`).
  until-done : the same command with --until-done, started once, by hand.
  probe      : a Horos stand-in (horos_async.demo.writer_probe) committing every 50 ms, alone and then
               during a scheduled run with the default sleep_between_studies (0): its commit waits.

Both run under the same nice value and with the page cache dropped first when this process may (root
on Linux). ProcessType Background and LowPriorityIO exist only on macOS and are not applied here.
--rounds alternates the two (the machine may be shared): pooled rates and each round's ratio are printed.

Usage: python scripts/bench_schedule.py [--studies 300] [--interval 20] [--images 6] [--size 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import plistlib
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def drop_caches() -> str:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "dropped"
    except OSError:
        return "warm"


class Agent:
    """The rendered LaunchAgent, run the way launchd runs it (command, environment, Nice)."""

    def __init__(self, plist: dict) -> None:
        self.argv = list(plist["ProgramArguments"])
        self.env = dict(plist["EnvironmentVariables"])
        self.env["PYTHONPATH"] = str(ROOT)  # this checkout, whatever the venv was installed from
        self.nice = int(plist.get("Nice", 0))
        self.interval = int(plist["StartInterval"])

    def start(self, extra=()) -> subprocess.Popen:
        nice = self.nice
        return subprocess.Popen(self.argv + list(extra), env=self.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                preexec_fn=(lambda: os.nice(nice)) if nice else None)

    def backed_up(self) -> int:
        """Studies the ledger calls done, through the public status command."""
        out = subprocess.run(self.argv[:1] + ["status", "--json"] + self.argv[2:], env=self.env,
                             capture_output=True, text=True, timeout=120)
        try:
            return int(json.loads(out.stdout)["done"])
        except (ValueError, KeyError):
            return 0


def scheduled(agent: Agent, interval: float, target: int) -> dict:
    """launchd's StartInterval loop until a run exits with ``target`` studies done."""
    t0 = time.monotonic()
    runs, skipped, tick = 0, 0, 0
    proc = agent.start()
    runs += 1
    while True:
        tick += 1
        next_tick = t0 + tick * interval
        while time.monotonic() < next_tick:
            if proc is not None and proc.poll() is not None:
                ended = time.monotonic()
                if proc.returncode != 0:
                    raise SystemExit(f"a scheduled run failed with exit code {proc.returncode}")
                proc = None
                done = agent.backed_up()
                if done >= target:
                    return {"seconds": ended - t0, "runs": runs, "skipped": skipped, "done": done}
            time.sleep(0.05)
        if proc is None:
            proc = agent.start()
            runs += 1
        else:
            skipped += 1  # launchd does not start a second copy while one runs


def until_done(agent: Agent, target: int) -> dict:
    t0 = time.monotonic()
    proc = agent.start(["--until-done"])
    if proc.wait() != 0:
        raise SystemExit(f"run --until-done failed with exit code {proc.returncode}")
    seconds = time.monotonic() - t0
    done = agent.backed_up()
    if done < target:
        raise SystemExit(f"run --until-done backed up {done} of {target} studies")
    return {"seconds": seconds, "runs": 1, "skipped": 0, "done": done}


def probe(lib, work: Path, seconds: float) -> None:
    """A Horos stand-in committing every 50 ms: its waits alone, then during a default scheduled run."""
    from horos_async import config as config_mod
    from horos_async.ops import launchd

    def writer() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "horos_async.demo.writer_probe", str(lib.database),
                                 str(seconds)], stdout=subprocess.PIPE, text=True)

    alone = json.loads(writer().communicate()[0])
    backup = work / "Backup-probe"
    cfg = config_mod.from_mapping({"horos_data": str(lib.horos_data), "backup_dir": str(backup), "sentinel": "",
                                   "timezone": lib.timezone})
    path = work / "cfg-probe.toml"
    path.write_text(config_mod.render_toml(cfg), encoding="utf-8")
    agent = Agent(plistlib.loads(launchd.render(config_mod.load(path))))
    drop_caches()
    w = writer()
    run = agent.start()
    during = json.loads(w.communicate()[0])
    still = run.poll() is None
    run.wait()
    print(f"Horos stand-in committing every 50 ms for {seconds:g} s: alone max {alone['max_ms']} ms, median "
          f"{alone['median_ms']} ms ({alone['commits']} commits); during a default scheduled run"
          f"{'' if still else ' (it ended before the probe)'}: max {during['max_ms']} ms, median "
          f"{during['median_ms']} ms ({during['commits']} commits)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/horos-bench-schedule"))
    ap.add_argument("--studies", type=int, default=300)
    ap.add_argument("--images", type=int, default=6, help="images per series")
    ap.add_argument("--size", type=int, default=256, help="CT and MR image size in pixels")
    ap.add_argument("--interval", type=float, default=20.0, help="StartInterval used here, in seconds")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    ap.add_argument("--probe", type=float, default=10.0, metavar="SECONDS",
                    help="also time a Horos stand-in's commits alone and during a run (0 = skip)")
    args = ap.parse_args()

    from horos_async import config as config_mod, demo
    from horos_async.ops import launchd

    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    t0 = time.perf_counter()
    lib = demo.build_demo(args.work / "lib", studies=args.studies, images_per_series=args.images,
                          ct_size=args.size, mr_size=args.size)
    target = sum(1 for s in lib.studies if s.due and not s.missing and s.note != "arriving")
    files = sum(len(set(s.files)) for s in lib.studies if s.due and not s.missing and s.note != "arriving")
    size = sum(os.path.getsize(f) for s in lib.studies if s.due and not s.missing and s.note != "arriving"
               for f in set(s.files))
    print(f"demo library: {target} exportable studies, {files} files, {size / 1e6:.0f} MB "
          f"(built in {time.perf_counter() - t0:.0f}s); {os.cpu_count()} CPUs; load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; Python {sys.version.split()[0]}", flush=True)

    results = {"scheduled": [], "until-done": []}
    for round_ in range(args.rounds):
        for label in ("scheduled", "until-done") if round_ % 2 == 0 else ("until-done", "scheduled"):
            backup = args.work / f"Backup-{label}-{round_}"
            cfg = config_mod.from_mapping({"horos_data": str(lib.horos_data), "backup_dir": str(backup),
                                           "sentinel": "", "timezone": lib.timezone})
            path = args.work / f"cfg-{label}-{round_}.toml"
            path.write_text(config_mod.render_toml(cfg), encoding="utf-8")
            plist = plistlib.loads(launchd.render(config_mod.load(path)))
            agent = Agent(plist)
            if not results["scheduled"] and not results["until-done"]:
                print(f"the LaunchAgent runs: {' '.join(agent.argv)}  (Nice {agent.nice}, StartInterval "
                      f"{agent.interval} s; here every {args.interval:g} s)")
                print(f"defaults: batch_size {cfg.batch_size}, concurrency {cfg.concurrency}, "
                      f"sleep_between_studies {cfg.sleep_between_studies:g}, max_run_minutes "
                      f"{cfg.max_run_minutes:g} (0 = no budget), run_window {cfg.run_window or 'none'}", flush=True)
            cache = drop_caches()
            m = scheduled(agent, args.interval, target) if label == "scheduled" else until_done(agent, target)
            m["rate"] = m["done"] * 3600.0 / m["seconds"]
            results[label].append(m)
            print(f"  {label:<10} round {round_ + 1}: {m['done']} studies in {m['seconds']:6.1f}s = "
                  f"{m['rate']:8.0f} studies/h ({m['runs']} run(s) started, {m['skipped']} tick(s) skipped "
                  f"while a run was going; cache {cache})", flush=True)

    # All rounds pooled (studies / seconds), and the median of each round's own ratio: on a shared
    # machine one round's load can differ from the next one's, never within a pair.
    sched = sum(m["done"] for m in results["scheduled"]) * 3600.0 / sum(m["seconds"] for m in results["scheduled"])
    ref = sum(m["done"] for m in results["until-done"]) * 3600.0 / sum(m["seconds"] for m in results["until-done"])
    pairs = [a["rate"] / b["rate"] for a, b in zip(results["scheduled"], results["until-done"])]
    print(f"\nscheduled (default settings, every {args.interval:g} s): {sched:,.0f} studies/h")
    print(f"run --until-done:                              {ref:,.0f} studies/h")
    print(f"ratio: {100 * sched / ref:.0f}% pooled, {100 * statistics.median(pairs):.0f}% median of the rounds' "
          f"ratios ({', '.join(f'{100 * p:.0f}%' for p in pairs)}) (goal >= 90%)")
    old = cfg.batch_size * 3600.0 / args.interval
    if args.probe:
        probe(lib, args.work, args.probe)
    print(f"(for comparison: one batch of {cfg.batch_size} per tick, the old schedule, is at most {old:,.0f} "
          f"studies/h at this interval, {cfg.batch_size * 3600.0 / agent.interval:,.0f} at "
          f"{agent.interval} s)")


if __name__ == "__main__":
    main()
