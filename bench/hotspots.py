#!/usr/bin/env python3
"""Profile the daemon with py-spy under one steady SIPp load, and list its hot spots.

    .venv/bin/pip install py-spy          # not a project dependency: install it by hand
    .venv/bin/python bench/hotspots.py registrations --rate 2000 --seconds 20
    .venv/bin/python bench/hotspots.py calls --rate 400 --seconds 20

Starts the daemon (bench/appliance_md5_first.py, as bench/run.py does), drives it with the
bench's SIPp scenario at one rate, samples it with `py-spy record` meanwhile, and prints the
functions with the most samples: "self" is time spent in the function's own code, "total"
includes what it calls; then the garbage collector's share of the daemon's CPU (timed with
gc.callbacks). Without --native, collection time shows on the Python line that allocated. The raw folded stacks are kept (--out) for flame graphs, e.g. with
`py-spy record --format speedscope` or flamegraph.pl.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench  # noqa: E402 - bench/run.py, next to this file


def py_spy() -> str:
    for candidate in (Path(sys.executable).parent / "py-spy", shutil.which("py-spy")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    sys.exit("py-spy not found: .venv/bin/pip install py-spy")


def hot_spots(folded: Path, top: int) -> str:
    """Self and inclusive sample shares per function from py-spy's raw (folded) output."""
    self_count: collections.Counter[str] = collections.Counter()
    total_count: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in folded.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [_short(f) for f in stack.split(";") if f]
        if not frames:
            continue
        self_count[frames[-1]] += n
        for f in set(frames):
            total_count[f] += n
    if not samples:
        return "no samples"
    out = [f"{samples} samples", "", f"{'self':>6}  function (file:line of the function)"]
    for name, n in self_count.most_common(top):
        out.append(f"{n / samples:6.1%}  {name}")
    out += ["", f"{'total':>6}  function"]
    for name, n in total_count.most_common(top * 2):
        out.append(f"{n / samples:6.1%}  {name}")
    return "\n".join(out)


def _short(frame: str) -> str:
    # py-spy frames look like "handle (appliance/pbx/registrar.py:27)"; drop the line number
    # of the sample so that all samples of one function add up
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path, _, _line = where.rpartition(":")
    for marker in ("site-packages/", "/lib/python3", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})" if path else name


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("load", choices=("registrations", "calls"))
    p.add_argument("--rate", type=int, default=None,
                   help="offered rate (default: 2000 registrations/s, 400 calls/s)")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--sample-rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--out", type=Path, default=None, help="keep the folded stacks here")
    p.add_argument("--native", action="store_true",
                   help="sample C frames too: shows the garbage collector (gc_collect_main) "
                        "and other time in C as such, instead of on the Python line below it")
    args = p.parse_args()
    rate = args.rate or (2000 if args.load == "registrations" else 400)
    spy = py_spy()
    s = bench.FULL
    work = Path(tempfile.mkdtemp(prefix="appliance-profile-"))
    b = bench.Bench(s, work, kamailio=False)
    users = b.reg_users + b.callee_users
    gc_report = work / "gc.json"
    os.environ["BENCH_GC_REPORT"] = str(gc_report)  # see bench/appliance_md5_first.py
    server = bench.Appliance(work, users, "profile")
    callee = None
    try:
        server.start()
        d = server.workdir
        if args.load == "calls":
            port = bench.free_udp_port()
            csv = bench.write_register_csv(d / "callees.csv", b.callee_users,
                                           b.callee_users.numbers())
            reg = bench.start_sipp("register.xml", workdir=d, name="callee-register",
                                   target_port=server.port, local_port=port, csv=csv, rate=200,
                                   calls=s.callees, timeout_s=30)
            reg.proc.wait(45)
            callee = bench.start_sipp("call_callee.xml", workdir=d, name="callee",
                                      target_port=None, local_port=port)
            scenario, csvs, hold = "call_caller.xml", b._caller_csvs(d, 1), s.call_hold_s
        else:
            scenario, csvs, hold = "register.xml", b._reg_csvs(d, 1), 0.0
        time.sleep(0.5)
        folded = args.out or (work / "folded.txt")
        # --native needs to pause the process for each sample (no --nonblocking): slower
        pause = [] if args.native else ["--nonblocking"]
        spy_proc = bench.spawn([spy, "record", "--pid", str(server.proc.pid), "--format", "raw",
                                "--rate", str(args.sample_rate), *pause,
                                "--duration", str(int(args.seconds)), "--output", str(folded),
                                *(["--native"] if args.native else [])],
                               work, "py-spy")
        time.sleep(0.5)
        step = bench.load_step(scenario=scenario, target_port=server.port, csvs=csvs, rate=rate,
                               seconds=args.seconds, hold_s=hold, workdir=d, name="load",
                               settings=s, server=server)
        try:
            spy_proc.wait(30)
        except subprocess.TimeoutExpired:
            bench.stop(spy_proc)
        o = step.outcome
        print(f"{args.load} at {rate}/s for {args.seconds:g} s: "
              f"{'pass' if step.ok else 'FAIL'} ({step.why}); {o['successful']}/{o['started']} "
              f"ok, {o['retransmissions']} retransmissions, daemon {step.server_cpu_cores} cores")
        if not folded.exists():
            err = (work / "py-spy.err").read_text(errors="replace")
            print(f"py-spy wrote nothing:\n{err}")
            return 1
        print(hot_spots(folded, args.top))
        if args.out:
            print(f"folded stacks: {args.out}")
    finally:
        if callee is not None:
            bench.stop(callee.proc)
        server.stop()
        if gc_report.exists():
            r = json.loads(gc_report.read_text())
            parts = ", ".join(f"gen{g} {v['collections']}x {v['seconds']:.2f} s, longest "
                              f"{v['longest_s'] * 1000:.0f} ms"
                              for g, v in r["generations"].items())
            share = sum(v["share_of_cpu"] or 0 for v in r["generations"].values())
            print(f"\ngarbage collector: {share:.1%} of the daemon's CPU ({parts}); "
                  f"{r['tracked_objects']:,} objects tracked at exit")
        bench.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
