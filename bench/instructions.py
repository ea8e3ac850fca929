#!/usr/bin/env python3
"""Instructions per registration and per call, on the wire, for the daemon and Kamailio
(and per registration for issue 3's yardstick, bench/throwaway_registrar.py).

    .venv/bin/python bench/instructions.py                 # both loads (about 15 minutes)
    .venv/bin/python bench/instructions.py --only calls --keep

bench/run.py measures rates and CPU seconds, and on this machine a CPU second is not the
same amount of work from one hour to the next (docs/performance.md): the same build's CPU
per call has varied fourfold. An instruction count does not drift. Here each server runs
under valgrind's callgrind, loaded by the same SIPp scenarios as bench/run.py
(bench/sipp/register.xml, call_caller.xml and call_callee.xml) at a low rate that the
instrumented servers keep up with. Everything the server's processes execute is counted:
the event loop, the socket calls' user-space part, timers, the expiry of every
transaction the load made, the collector.

Each server and load runs twice, from start to exit under callgrind, every process of
the server counted (Kamailio forks its workers), the two runs alike but for the rate:
  1. start it; (calls) register the 200 callees and start the callee SIPp;
     (registrations) register every extension once, so that the load refreshes them;
  2. the load, `rate` per second for `seconds` in the first run, twice that in the second;
  3. `settle_s` more, for the end of every transaction the load started (64*T1 = 32 s);
  4. stop: each process writes its count as it exits.
Start-up, warm-up, idle timers and the collector's idle work are the same in both runs;
the difference of the two counts, over the difference of the successful operations, is
what an operation costs. callgrind counts the instructions executed in user space (Ir);
the kernel's part, the same datagrams through the same loopback for both servers, is
not in it. (callgrind_control cannot reach a forked child, so no counts are read while
a server runs.)

It prints one table (load, appliance, Kamailio, ratio, yardstick) and writes it as JSON under
bench/results/instructions-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench  # noqa: E402 - bench/run.py, next to this file

LOADS = ("registrations", "calls")


@dataclass
class Plan:
    rate: dict[str, float]      # operations offered per second in the smaller run, by load
    seconds: float = 20.0       # of measured load
    settle_s: float = 36.0      # after the load: RFC 3261's 64*T1 = 32 s for its transactions


FULL = Plan(rate={"registrations": 50.0, "calls": 5.0})


@dataclass
class Count:
    server: str
    load: str
    operations: tuple[int, int]     # successful operations in the two runs
    instructions: tuple[int, int]   # the server's instructions in each run, start to exit

    @property
    def per_operation(self) -> float | None:
        """Instructions per operation: what the second run's extra operations cost."""
        extra = self.operations[1] - self.operations[0]
        if extra <= 0:
            return None
        return (self.instructions[1] - self.instructions[0]) / extra


_SUMMARY = re.compile(rb"^summary:\s+(\d+)", re.MULTILINE)


def dump_instructions(path: Path) -> int:
    """The instructions (Ir) a callgrind dump file counted: its `summary:` line."""
    found = _SUMMARY.search(path.read_bytes())
    if found is None:
        raise ValueError(f"{path}: no summary line")
    return int(found[1])


def callgrind_argv(outdir: Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--dump-instr=no", "--trace-children=no",
            f"--callgrind-out-file={outdir}/callgrind.%p"]


def run_once(server: bench.Server, load: str, rate: float, plan: Plan, b: bench.Bench
             ) -> tuple[int, int]:
    """One run of `server` under callgrind: start, (calls) the callees, the warm-up
    (registrations: every extension once), the load at `rate`, `settle_s`, stop. Returns
    the successful operations and the instructions of all its processes, start to exit."""
    outdir = server.workdir / "callgrind"
    outdir.mkdir(parents=True, exist_ok=True)
    argv = server.argv
    server.argv = lambda: callgrind_argv(outdir) + argv()  # type: ignore[method-assign]
    d = server.workdir
    callee = None
    try:
        # under callgrind the first OPTIONS takes tens of seconds to be answered
        server.start(timeout=600.0, every=0.5)
        if load == "calls":
            callee = b.start_callees(server, rate=50, timeout_s=120)
            step = bench.load_step(
                scenario="call_caller.xml", target_port=server.port, csvs=b._caller_csvs(d, 1),
                rate=int(rate), seconds=plan.seconds, hold_s=b.s.call_hold_s, workdir=d,
                name="measured", settings=b.s, server=server)
        else:
            csvs = b._reg_csvs(d, 1)
            warm = bench.load_step(
                scenario="register.xml", target_port=server.port, csvs=csvs,
                rate=100, seconds=b.s.reg_users / 100, hold_s=0.0, workdir=d, name="warm",
                settings=b.s, server=server)
            if not warm.ok:
                raise RuntimeError(f"{server.label}: warm-up under callgrind: {warm.why}")
            step = bench.load_step(
                scenario="register.xml", target_port=server.port, csvs=csvs,
                rate=int(rate), seconds=plan.seconds, hold_s=0.0, workdir=d, name="measured",
                settings=b.s, server=server)
        if not step.ok:
            raise RuntimeError(f"{server.label}, {load} at {rate:g}/s under callgrind: "
                               f"{step.why}; see {d}")
        time.sleep(plan.settle_s)
    finally:
        if callee is not None:
            bench.stop(callee.proc)
        # each process writes its counts as it exits: let every one of them finish
        pids = server.pids()
        if server.proc is not None:
            bench._killpg(server.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 300
        while any(Path(f"/proc/{p}").exists() for p in pids) and time.monotonic() < deadline:
            if server.proc is not None:
                server.proc.poll()  # reap the leader
            time.sleep(0.2)
        server.stop()
    files = sorted(outdir.glob("callgrind.*"))
    if len(files) < len(pids):
        raise RuntimeError(f"{server.label}: {len(pids)} processes, {len(files)} dumps")
    return int(step.outcome["successful"]), sum(dump_instructions(f) for f in files)


def measure(name: str, make: Callable[[str], bench.Server], load: str, plan: Plan,
            b: bench.Bench) -> Count:
    """Two runs, at the plan's rate and at twice it, alike in everything else (start-up,
    warm-up, the load's length, the settling, idle timers): the difference is the extra
    operations' instructions."""
    rate = plan.rate[load]
    runs = [run_once(make(f"{load}-{k}x"), load, k * rate, plan, b) for k in (1, 2)]
    return Count(name, load, (runs[0][0], runs[1][0]), (runs[0][1], runs[1][1]))


def render(counts: list[Count]) -> str:
    by = {(c.load, c.server): c.per_operation for c in counts}

    def k(n: float | None) -> str:
        return f"{n / 1000:,.0f}k" if n else "n/a"
    lines = ["| instructions per | appliance | Kamailio | ratio (appliance / Kamailio) | "
             "yardstick |", "| --- | ---: | ---: | ---: | ---: |"]
    for load in LOADS:
        a, m, y = (by.get((load, s)) for s in ("appliance", "kamailio", "throwaway"))
        if a is None and m is None and y is None:
            continue
        ratio = f"{a / m:.2f}" if a and m else "n/a"
        lines.append(f"| {load[:-1]} | {k(a)} | {k(m)} | {ratio} | {k(y)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=LOADS, action="append")
    p.add_argument("--server", choices=("appliance", "kamailio", "throwaway"),
                   action="append", help="only this server (repeatable; default: all three, "
                   "the yardstick, bench/throwaway_registrar.py, for registrations only)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (callgrind files)")
    p.add_argument("--results", type=Path, default=bench.RESULTS_DIR)
    p.add_argument("--seconds", type=float, default=FULL.seconds, help="of measured load")
    p.add_argument("--settle", type=float, default=FULL.settle_s,
                   help="seconds after each load (below 32 leaves its transactions out)")
    args = p.parse_args(argv)
    if shutil.which("valgrind") is None:
        sys.exit("valgrind not found: apt-get install valgrind")
    servers = args.server or ["appliance", "kamailio", "throwaway"]
    with_kamailio = bench.ensure_tools("kamailio" in servers)
    plan = Plan(rate=dict(FULL.rate), seconds=args.seconds, settle_s=args.settle)
    settings = bench.Settings(reg_rates=[], reg_seconds=0, call_rates=[], call_seconds=0,
                              ceiling_reg_extra=[], ceiling_call_extra=[], startup_samples=0)
    workdir = Path(tempfile.mkdtemp(prefix="appliance-instructions-"))
    started = dt.datetime.now(dt.UTC)
    b = bench.Bench(settings, workdir, with_kamailio)
    counts: list[Count] = []
    try:
        for load in args.only or LOADS:
            users = b.reg_users + b.callee_users if load == "calls" else b.reg_users
            makers: dict[str, Callable[[str], bench.Server]] = {}
            if "appliance" in servers:
                makers["appliance"] = lambda tag, users=users: bench.Appliance(workdir, users,
                                                                               tag)
            if "throwaway" in servers and load == "registrations":
                makers["throwaway"] = lambda tag, users=users: bench.Throwaway(workdir, users,
                                                                               tag)
            if with_kamailio:
                makers["kamailio"] = lambda tag, users=users: bench.Kamailio(
                    workdir, users, tag, settings, workers=1)
            for name, make in makers.items():
                bench.log(f"instructions: {name}, {load} at {plan.rate[load]:g} and "
                          f"{2 * plan.rate[load]:g}/s under callgrind")
                c = measure(name, make, load, plan, b)
                counts.append(c)
                bench.log(f"  {c.operations[0]:,} and {c.operations[1]:,} {load}: "
                          f"{c.instructions[0]:,} and {c.instructions[1]:,} instructions: "
                          f"{(c.per_operation or 0) / 1000:,.0f}k per operation")
    finally:
        bench.stop_all()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    table = render(counts)
    print(table)
    report = {"started_at": started.isoformat(timespec="seconds"), "plan": asdict(plan),
              "machine": bench.host_info(), "tree": bench.tree_fingerprint(),
              "git_head": bench.git_head(), "table": table,
              "counts": [dict(asdict(c), per_operation=c.per_operation) for c in counts]}
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"instructions-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    bench.log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
