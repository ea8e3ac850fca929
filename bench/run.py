#!/usr/bin/env python3
"""Benchmark the appliance daemon against Kamailio on loopback, with SIPp as the load.

    .venv/bin/python bench/run.py            # the full run (about 20 minutes)
    .venv/bin/python bench/run.py --quick    # a smoke run: few rates, 3 s each (2-3 minutes)
    .venv/bin/python bench/run.py --only registrations|calls|memory|startup

What it measures (see docs/performance.md for the why and the latest figures):

registrations  REGISTER, 401, REGISTER with MD5 digest credentials, 200 (bench/sipp/register.xml)
               by 2,000 extensions, offered at rising rates for a few seconds each; the figure
               is the highest rate that passes (see `passes()`); the ladder stops at the first
               rate that fails. Each server runs as 1 and as 2 processes (the appliance: the
               daemon alone, as shipped, and with one SIP worker; Kamailio: 1 and 2 UDP
               workers) and its figure is the better of the two: which count serves best
               depends on the machine. Also run: issue 3's yardstick, a throwaway
               REGISTER-and-digest responder (bench/throwaway_registrar.py); the notes give
               each run's CPU per registration at its best rate.
calls          INVITE, 407, ACK, INVITE with credentials, 100/180/200, ACK, 1 s, BYE, 200
               (bench/sipp/call_caller.xml) to 200 callee extensions registered by one SIPp
               (bench/sipp/call_callee.xml) through the server; same ladder, rule and
               process counts.
ceiling        the same two caller scenarios against SIPp playing the server
               (register_server.xml, call_server.xml): what SIPp itself can do on this machine.
memory         the daemon's VmRSS idle (factory configuration), idle with 10,000 extensions
               configured and with those 10,000 registered; for Kamailio the sum of the
               proportional set size (Pss) of its processes at the same points.
startup        seconds from Popen to the first 200 answer to an OPTIONS polled every 10 ms.

A rate passes when (1) at most 0.1% of the scenarios failed (failed = planned - successful, so
scenarios cut off by the time limit or never started count too) and the kernel dropped no more
datagrams on the server's full UDP socket than 0.1% of the scenarios (a dropped request failed
even if SIPp's retransmission got through later), (2) SIPp started them at
>= 95% of the offered rate (else SIPp or the machine, not the server, is the limit), and (3)
the server kept up: the last scenario completed at most max(0.5 s, 5% of the step) after the
load ended (plus the 1 s talk time for calls). (3) catches a server that falls behind and
only gets through thanks to SIPp's UDP retransmissions, which (1) alone would let pass.

Each section starts fresh server processes, all of its servers at once, and climbs their
ladders interleaved: each rate goes to every server still climbing before the next rate, the
others paused (SIGSTOP), so that the servers' steps at a rate come from the same minute of a
machine whose speed drifts (`interleaved_ladders`). Every process started is stopped by its
process group id, also on Ctrl-C or an error. Results: one table on stdout and
bench/results/<timestamp>.json plus bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime as dt
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SIPP_DIR = BENCH / "sipp"
RESULTS_DIR = BENCH / "results"
KAMAILIO_CFG = BENCH / "kamailio.cfg"
MD5_FIRST = BENCH / "appliance_md5_first.py"
THROWAWAY = BENCH / "throwaway_registrar.py"
LOOPBACK = "127.0.0.1"

DEB_PACKAGES = {"sipp": "sip-tester", "kamailio": "kamailio", "ss": "iproute2"}
SIPP_SOCKET_BUFFER = 4 * 1024 * 1024  # SIPp's default is 64 KB: bursts of answers get dropped

# --- settings ---------------------------------------------------------------------------------


@dataclass
class Settings:
    reg_rates: list[int]
    reg_seconds: float
    call_rates: list[int]
    call_seconds: float
    ceiling_reg_extra: list[int]      # rates tried above the ladder, for the SIPp ceiling only
    ceiling_call_extra: list[int]
    startup_samples: int
    reg_users: int = 2000
    callees: int = 200
    memory_contacts: int = 10_000
    memory_reg_rate: int = 1000       # moderate: well inside what the daemon sustains
    kamailio_workers: int = 2         # UDP worker processes (-n) for memory and start-up
    # The throughput sections run each server with each of these process counts (the
    # appliance: the daemon and sip.workers = n - 1 SIP workers; Kamailio: n UDP workers)
    # and take its best: which count serves a machine best depends on the machine (its
    # cores, what a wakeup on another core costs), for both servers alike. Up to the 2
    # cores of the machine the figures are from; memory and start-up run the daemon as
    # shipped (one process).
    processes: tuple[int, ...] = (1, 2)
    kamailio_shm_mb: int = 1024       # 128 MB runs out of transactions at 1,000 calls/s
    # Kamailio's memory manager (-x, for shared and private memory). Debian's build
    # defaults to qm, the one its authors keep for troubleshooting memory: its search for
    # a free block took 40% of Kamailio's CPU in the calls load (perf) and 2.3M of a
    # call's 2.6M instructions (bench/instructions.py). fm, "fast malloc", its stable
    # releases' usual choice, made it 304k a call and 90k a registration (tlsf 331k, 95k).
    kamailio_memory: str = "fm"
    call_hold_s: float = 1.0          # the pause between ACK and BYE in call_caller.xml
    max_fail_ratio: float = 0.001
    min_rate_ratio: float = 0.95
    max_tail_s: float = 0.5           # or 5% of the step, whichever is longer
    sipp_split_rate: int = 8000       # from this rate on, the load is shared by 2 SIPp processes
    # calls: from this rate on, 2 SIPp callers (ports steered to different processes of the
    # appliance, as phones on many addresses spread over them)
    sipp_call_split_rate: int = 1000
    settle_s: float = 1.0             # pause between two rates
    # A server resumed for its next step (the ladders are interleaved) first runs, unloaded,
    # what came due while it was stopped: the timers of its earlier steps and, as it finds
    # itself idle, the appliance's full collection (appliance/gcpolicy.py, up to ~0.5 s a
    # process). Its step starts once it has used under 1% of a core for `quiet_s` (longer
    # than the collector's one-second tick), or after `resume_max_s`; Kamailio's no
    # earlier than its `resume_min_s`, once its clock has caught up with the real time.
    quiet_s: float = 1.5
    resume_max_s: float = 10.0


FULL = Settings(
    # up to 50,000: Kamailio with fm passed 35,000 with a third of a core to spare
    reg_rates=[250, 500, 1000, 1500, 2000, 2500, 3000, 4000, 5000, 6000, 7000, 8000, 10000, 12000,
               15000, 20000, 25000, 30000, 35000, 40000, 50000],
    reg_seconds=8,
    call_rates=[50, 100, 200, 400, 600, 800, 1000, 1200, 1500, 2000, 2500, 3000, 4000, 5000,
                6000, 7000, 8000],
    call_seconds=8,
    ceiling_reg_extra=[60000],
    ceiling_call_extra=[10000],
    startup_samples=3,
)
QUICK = Settings(
    reg_rates=[500, 2000, 6000, 12000],
    reg_seconds=3,
    call_rates=[50, 200, 800],
    call_seconds=3,
    ceiling_reg_extra=[],
    ceiling_call_extra=[],
    startup_samples=1,
)

SECTIONS = ("registrations", "calls", "memory", "startup")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- processes: every child in its own session, stopped by process group -------------------

_live: dict[int, subprocess.Popen] = {}


def spawn(argv: list[str], logdir: Path, name: str, *, cwd: Path | None = None,
          stdout_to_log: bool = True) -> subprocess.Popen:
    logdir.mkdir(parents=True, exist_ok=True)
    out = open(logdir / f"{name}.out", "wb") if stdout_to_log else subprocess.DEVNULL
    err = open(logdir / f"{name}.err", "wb")
    try:
        proc = subprocess.Popen([str(a) for a in argv], cwd=str(cwd or logdir),
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True)
    finally:
        if out is not subprocess.DEVNULL:
            out.close()
        err.close()
    _live[proc.pid] = proc
    return proc


def _killpg(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def stop(proc: subprocess.Popen | None, grace: float = 5.0) -> int | None:
    """SIGTERM the process group, SIGKILL after `grace` seconds; reap the leader."""
    if proc is None:
        return None
    if proc.poll() is None:
        _killpg(proc.pid, signal.SIGTERM)
        _killpg(proc.pid, signal.SIGCONT)  # a paused server (`Server.pause`) takes it now
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)  # in case it left its process group
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            _killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
    # children the leader forked (Kamailio's workers) share its process group; the group
    # outlives the leader only while such a child is left
    _killpg(proc.pid, signal.SIGKILL)
    _live.pop(proc.pid, None)
    return proc.returncode


@atexit.register
def stop_all() -> None:
    for proc in list(_live.values()):
        stop(proc, grace=2.0)


def _on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


# --- small helpers ------------------------------------------------------------------------------


def free_udp_port(also_tcp: bool = False, span: int = 1) -> int:
    """A loopback port free for UDP (and TCP); with span > 1, the next span-1 ports too."""
    for _ in range(500):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((LOOPBACK, 0))
        port = s.getsockname()[1]
        s.close()
        if port + span > 65535 or port in _handed_out:
            continue
        ok = True
        for p in range(port, port + span):
            kinds = [socket.SOCK_DGRAM] + ([socket.SOCK_STREAM] if also_tcp else [])
            for kind in kinds:
                t = socket.socket(socket.AF_INET, kind)
                try:
                    t.bind((LOOPBACK, p))
                except OSError:
                    ok = False
                finally:
                    t.close()
        if ok and not _handed_out.intersection(range(port, port + span)):
            _handed_out.update(range(port, port + span))
            return port
    raise RuntimeError("no free loopback port")


_handed_out: set[int] = set()


def proc_stats() -> Iterator[tuple[int, list[str]]]:
    """(pid, the fields of /proc/PID/stat after the command name) for every process."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        yield int(entry), stat[stat.rfind(")") + 2:].split()


def proc_pids_in_group(pgid: int) -> list[int]:
    return [pid for pid, fields_ in proc_stats() if int(fields_[2]) == pgid]  # 5: pgrp


def cpu_times(pids: list[int]) -> tuple[float, float]:
    """The processes' CPU seconds in user space and in the kernel (proc(5): utime,
    stime): the kernel's share is the datagrams' way through it, which a server's code
    does not change; the rest is its own."""
    tick = os.sysconf("SC_CLK_TCK")
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields_ = stat[stat.rfind(")") + 2:].split()
        user += int(fields_[11])
        system += int(fields_[12])
    return user / tick, system / tick


def cpu_seconds(pids: list[int]) -> float:
    user, system = cpu_times(pids)
    return user + system


def status_kb(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def pss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def udp_drops(port: int, pids: list[int] | None = None) -> int:
    """Datagrams the kernel dropped (full buffer) for the UDP sockets bound to this port,
    and with `pids` for every other UDP socket those processes hold (the appliance's
    workers have a port of their own for their dialogs)."""
    inodes: set[str] = set()
    for pid in pids or ():
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    drops = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError):
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if len(parts) > 12 and (int(parts[1].rsplit(":", 1)[1], 16) == port
                                            or parts[9] in inodes):
                        drops += int(parts[-1])
    return drops


def udp_receive_buffers(port: int) -> list[int]:
    """The receive buffers the kernel granted the UDP sockets bound to this port on
    127.0.0.1, in bytes (`ss -m`'s rb: twice what the process asked for, as far as
    net.core.rmem_max allows); [] without `ss` or such a socket."""
    try:
        out = subprocess.run(["ss", "-H", "-u", "-a", "-n", "-m", f"src {LOOPBACK}:{port}"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted(int(rb) for rb in re.findall(r"\brb(\d+)", out))


def process_cpu_table() -> dict[int, tuple[int, float]]:
    """pid -> (process group, CPU seconds used so far) for every process on the machine."""
    tick = os.sysconf("SC_CLK_TCK")
    return {pid: (int(f[2]), (int(f[11]) + int(f[12])) / tick) for pid, f in proc_stats()}


def other_cpu_seconds(before: dict[int, tuple[int, float]], after: dict[int, tuple[int, float]],
                      ours: set[int]) -> float:
    """CPU used between two tables by processes outside the given process groups (and this
    one): other work on the machine that competes with the benchmark."""
    me = os.getpid()
    total = 0.0
    for pid, (pgid, cpu) in after.items():
        if pid == me or pgid in ours:
            continue
        total += cpu - before.get(pid, (pgid, 0.0))[1]
    return max(total, 0.0)


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def options_request(port: int, local_port: int) -> bytes:
    branch = "z9hG4bK" + secrets.token_hex(8)
    return (
        f"OPTIONS sip:{LOOPBACK}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {LOOPBACK}:{local_port};branch={branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:bench@{LOOPBACK}>;tag={secrets.token_hex(4)}\r\n"
        f"To: <sip:{LOOPBACK}:{port}>\r\n"
        f"Call-ID: {secrets.token_hex(8)}@bench\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def wait_options_200(port: int, proc: subprocess.Popen, t0: float, timeout: float = 30.0,
                     every: float = 0.010) -> float:
    """Poll with OPTIONS every `every` s; seconds from t0 (monotonic) to the first 200."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    local = sock.getsockname()[1]
    try:
        while time.monotonic() - t0 < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode} before answering")
            with contextlib.suppress(OSError):
                sock.sendto(options_request(port, local), (LOOPBACK, port))
            deadline = time.monotonic() + every
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                try:
                    data = sock.recv(65535)
                except (TimeoutError, OSError):
                    break
                if data.startswith(b"SIP/2.0 200"):
                    return time.monotonic() - t0
        raise RuntimeError(f"no 200 to OPTIONS on port {port} within {timeout:.0f} s")
    finally:
        sock.close()


# --- users: the same extensions and passwords for both servers ----------------------------------


@dataclass
class Users:
    passwords: dict[str, str]

    @classmethod
    def numbered(cls, first: int, count: int) -> Users:
        # letters and digits only, and never "0x..." (SIPp takes that as a hex-encoded password)
        return cls({str(n): "p" + secrets.token_hex(8) for n in range(first, first + count)})

    def __add__(self, other: Users) -> Users:
        return Users({**self.passwords, **other.passwords})

    def numbers(self) -> list[str]:
        return list(self.passwords)


def write_register_csv(path: Path, users: Users, numbers: list[str]) -> Path:
    with open(path, "w") as f:
        f.write("SEQUENTIAL\n")
        for n in numbers:
            pw = users.passwords[n]
            f.write(f"{n};{pw};[authentication username={n} password={pw}]\n")
    return path


def write_caller_csv(path: Path, users: Users, callers: list[str], callees: list[str]) -> Path:
    with open(path, "w") as f:
        f.write("SEQUENTIAL\n")
        for i, n in enumerate(callers):
            pw = users.passwords[n]
            f.write(f"{n};[authentication username={n} password={pw}];"
                    f"{callees[i % len(callees)]}\n")
    return path


def split(items: list[str], parts: int) -> list[list[str]]:
    return [items[i::parts] for i in range(parts)]


# --- servers ------------------------------------------------------------------------------------


class Server:
    name = "server"
    label = "server"
    # a resumed server is loaded no earlier than this after its SIGCONT (see Kamailio's)
    resume_min_s = 0.0

    def __init__(self, workdir: Path, users: Users, tag: str) -> None:
        self.workdir = workdir / f"{self.name}-{tag}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.users = users
        self.tag = tag
        self.port = free_udp_port(also_tcp=True)
        self.proc: subprocess.Popen | None = None
        self.started_in: float | None = None
        self.receive_buffer: int | None = None   # bytes, the smallest of its SIP sockets'

    @property
    def processes(self) -> int:
        """How many processes serve SIP (the ladders' process count)."""
        return 1

    def argv(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        pass

    def start(self, timeout: float = 30.0, every: float = 0.010) -> float:
        """Start and wait for the first 200 to OPTIONS (polled every `every` s, for up to
        `timeout` s); returns the seconds that took."""
        self.prepare()
        t0 = time.monotonic()
        self.proc = spawn(self.argv(), self.workdir, "server")
        try:
            self.started_in = wait_options_200(self.port, self.proc, t0, timeout, every)
        except BaseException:
            self.stop()
            raise
        return self.started_in

    def stop(self) -> None:
        stop(self.proc, grace=8.0)

    def measure_receive_buffer(self) -> None:
        """What the kernel granted its SIP port: a server with the smaller buffer drops
        a burst the other queues, and a drop fails a step."""
        self.receive_buffer = min(udp_receive_buffers(self.port), default=None)

    def pause(self) -> None:
        """Stop every process of the server (SIGSTOP to its group) while another
        server's step runs: what it still has to do (its earlier steps' timers) then
        does not run beside that step, as load on the same two cores."""
        if self.proc is not None and self.proc.poll() is None:
            _killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            _killpg(self.proc.pid, signal.SIGCONT)

    def pids(self) -> list[int]:
        if self.proc is None or self.proc.poll() is not None:
            return []
        return proc_pids_in_group(self.proc.pid)

    def cpu(self) -> float:
        return cpu_seconds(self.pids())

    def cpu_times(self) -> tuple[float, float]:
        return cpu_times(self.pids())

    def memory_kb(self) -> int:
        raise NotImplementedError

    def stderr_tail(self, lines: int = 20) -> str:
        try:
            text = (self.workdir / "server.err").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Appliance(Server):
    name = "appliance"
    label = "appliance"

    def __init__(self, workdir: Path, users: Users | None, tag: str, *,
                 md5_first: bool = True, workers: int = 0) -> None:
        super().__init__(workdir, users or Users({}), tag)
        self.md5_first = md5_first
        self.workers = workers
        if workers:
            self.label = f"appliance ({workers + 1} processes)"
        self.data = self.workdir / "data"
        self.tls_port = free_udp_port(also_tcp=True)
        self.write_config = users is not None

    @property
    def processes(self) -> int:
        return self.workers + 1  # the daemon and its SIP workers

    def prepare(self) -> None:
        if not self.write_config or (self.data / "config.yaml").exists():
            return
        self.data.mkdir(parents=True, exist_ok=True, mode=0o700)
        lines = ["# written by bench/run.py", "version: 1", "system:", "  language: en",
                 "  name: bench", "sip:", "  min_expires: 60", "  max_expires: 7200",
                 "  default_expires: 3600", "  ring_timeout: 60", f"  workers: {self.workers}",
                 # Signalling against a signalling-only proxy: the box's RTP relay (on by
                 # default for extension calls) is measured by bench/media.py instead.
                 "media:", "  relay_extension_calls: false", "extensions:"]
        for n, pw in self.users.passwords.items():
            lines += [f"  '{n}':", f"    password: '{pw}'", "    name: ''"]
        (self.data / "config.yaml").write_text("\n".join(lines) + "\n")
        os.chmod(self.data / "config.yaml", 0o600)

    def argv(self) -> list[str]:
        if self.md5_first:
            head = [sys.executable, str(MD5_FIRST)]
        else:
            head = [str(Path(sys.executable).parent / "appliance")]
        return head + ["run", "--data", str(self.data), "--bind", LOOPBACK,
                       "--sip-port", str(self.port), "--tls-port", str(self.tls_port)]

    def start(self, timeout: float = 30.0, every: float = 0.010) -> float:
        """The daemon answers OPTIONS before its workers have joined the port: wait for
        them too (start-up is measured on the factory configuration, without workers),
        so that the load finds every process serving."""
        took = super().start(timeout, every)
        deadline = time.monotonic() + 20.0
        while self.workers and time.monotonic() < deadline:
            err = (self.workdir / "server.err").read_text(errors="replace")
            if all(f"worker {i} appliance.workers: serving" in err
                   for i in range(1, self.workers + 1)):
                break
            time.sleep(0.05)
        else:
            if self.workers:
                raise RuntimeError(f"{self.label}: workers not serving; see {self.workdir}")
        return took

    def memory_kb(self) -> int:
        """VmRSS of the daemon, plus its SIP workers' if it has any."""
        assert self.proc is not None
        return sum(status_kb(p, "VmRSS") or 0 for p in self.pids() or [self.proc.pid])

    def registrations_saved(self) -> int | None:
        try:
            raw = json.loads((self.data / "registrations.json").read_bytes())
        except (OSError, ValueError):
            return None
        return sum(len(v) for v in raw.get("bindings", {}).values())


class Kamailio(Server):
    name = "kamailio"
    label = "Kamailio"
    # Kamailio keeps time in ticks of its SIGALRM timer (src/core/timer.c), which a
    # stopped process does not take; every 5 s of ticks (TIMER_RESYNC_TICKS) it compares
    # them with the real time and jumps them ahead (adjust_ticks). So after a pause its
    # clock lags by the pause until that resync, up to 5 s after the resume, quietly;
    # then every timer of what is in flight fires at once: a BYE it forwarded a moment
    # before gets 408 Request Timeout. Its step starts after that resync.
    resume_min_s = 5.5

    def __init__(self, workdir: Path, users: Users, tag: str, settings: Settings,
                 workers: int | None = None) -> None:
        super().__init__(workdir, users, tag)
        self.settings = settings
        self.workers = workers or settings.kamailio_workers
        self.db = self.workdir / "db"

    @property
    def processes(self) -> int:
        return self.workers  # its UDP workers (-n)

    def prepare(self) -> None:
        self.db.mkdir(parents=True, exist_ok=True)
        (self.db / "version").write_text(
            "id(int,auto) table_name(string) table_version(int) \n0:htable:2\n")
        rows = ["id(int,auto) key_name(string) key_type(int) value_type(int) "
                "key_value(string) expires(int) "]
        for i, (n, pw) in enumerate(self.users.passwords.items(), 1):
            if ":" in pw or "\\" in pw:
                raise ValueError("db_text values must not contain ':' or '\\'")
            rows.append(f"{i}:{n}:0:0:{pw}:0")
        (self.db / "htable").write_text("\n".join(rows) + "\n")

    def argv(self) -> list[str]:
        s = self.settings
        return ["kamailio", "-f", str(KAMAILIO_CFG), "-DD", "-E", "-T", "-S",
                "-l", f"udp:{LOOPBACK}:{self.port}", "-n", str(self.workers),
                "-Y", str(self.workdir), "-P", str(self.workdir / "kamailio.pid"),
                "-m", str(s.kamailio_shm_mb), "-M", "8", "-x", s.kamailio_memory,
                "-w", str(self.workdir),
                "-A", f'DBURL="text://{self.db}"']

    def memory_kb(self) -> int:
        return sum(pss_kb(p) or 0 for p in self.pids())


# --- SIPp -----------------------------------------------------------------------------------------


class Throwaway(Server):
    """Issue 3's yardstick (bench/throwaway_registrar.py): REGISTER, digest, nothing else;
    one process. Measured for its CPU per registration, not compared for a target."""
    name = "throwaway"
    label = "throwaway"

    def prepare(self) -> None:
        (self.workdir / "passwords.json").write_text(json.dumps(self.users.passwords))

    def argv(self) -> list[str]:
        return [sys.executable, str(THROWAWAY), str(self.port),
                str(self.workdir / "passwords.json")]

    def memory_kb(self) -> int:
        assert self.proc is not None
        return status_kb(self.proc.pid, "VmRSS") or 0


def sipp_version() -> str:
    try:
        out = subprocess.run(["sipp", "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    m = re.search(r"SIPp v?(\S+)", out.stdout + out.stderr)
    return m.group(1).rstrip(".") if m else "unknown"


def kamailio_version() -> str:
    try:
        out = subprocess.run(["kamailio", "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    m = re.search(r"version: kamailio (\S+)", out.stdout + out.stderr)
    return m.group(1) if m else "unknown"


@dataclass
class SippRun:
    proc: subprocess.Popen
    stat_file: Path
    calls: int
    rate: float


def start_sipp(scenario: str, *, workdir: Path, name: str, target_port: int | None,
               local_port: int, csv: Path | None = None, rate: float | None = None,
               calls: int | None = None, limit: int = 18000,
               timeout_s: float | None = None) -> SippRun:
    stat = workdir / f"{name}.csv"
    argv: list[str] = ["sipp"]
    if target_port is not None:
        argv.append(f"{LOOPBACK}:{target_port}")
    argv += ["-sf", str(SIPP_DIR / scenario), "-i", LOOPBACK, "-p", str(local_port),
             "-mp", str(free_udp_port(span=4)), "-cp", str(free_udp_port()),
             "-nostdin", "-trace_stat", "-stf", str(stat), "-fd", "1",
             "-trace_err", "-error_file", str(workdir / f"{name}.errors.log"),
             "-max_log_size", "20000000", "-buff_size", str(SIPP_SOCKET_BUFFER),
             "-l", str(limit)]
    if target_port is not None:
        argv += ["-default_behaviors", "all,-bye"]
    if csv is not None:
        argv += ["-inf", str(csv)]
    if rate is not None:
        argv += ["-r", f"{rate:g}"]
    if calls is not None:
        argv += ["-m", str(calls)]
    if timeout_s is not None:
        argv += ["-timeout", str(int(timeout_s))]
    proc = spawn(argv, workdir, name, stdout_to_log=False)
    return SippRun(proc, stat, calls or 0, rate or 0.0)


def read_sipp_stats(path: Path) -> list[dict[str, str]]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    if not lines:
        return []
    header = lines[0].rstrip(";").split(";")
    rows = []
    for line in lines[1:]:
        values = line.rstrip(";").split(";")
        if len(values) >= len(header) - 1:
            rows.append(dict(zip(header, values, strict=False)))
    return rows


def _epoch(value: str) -> float:
    # "2026-11-26\t03:18:00.400634\t1795663080.400634": the last part is the epoch time
    return float(value.replace("\t", " ").split()[-1])


@dataclass
class Outcome:
    started: int = 0
    successful: int = 0
    failed: int = 0
    retransmissions: int = 0
    create_rate: float = 0.0
    done_rate: float = 0.0
    elapsed_s: float = 0.0
    tail_s: float = 0.0        # last completion - end of the load (less the talk time)
    sipp_exit: list[int | None] = field(default_factory=list)

    def add(self, other: Outcome) -> None:
        self.started += other.started
        self.successful += other.successful
        self.failed += other.failed
        self.retransmissions += other.retransmissions
        self.create_rate += other.create_rate
        self.done_rate += other.done_rate
        self.elapsed_s = max(self.elapsed_s, other.elapsed_s)
        self.tail_s = max(self.tail_s, other.tail_s)
        self.sipp_exit += other.sipp_exit


def outcome_of(run: SippRun, hold_s: float, seconds: float = 0.0) -> Outcome:
    rows = read_sipp_stats(run.stat_file)
    out = Outcome(sipp_exit=[run.proc.returncode])
    if not rows:
        out.started = run.calls
        out.failed = run.calls
        return out
    last = rows[-1]
    started = int(last.get("OutgoingCall(C)", 0))
    successful = int(last.get("SuccessfulCall(C)", 0))
    out.started = max(started, run.calls)  # scenarios SIPp never got to start count as failed
    out.successful = successful
    out.failed = max(out.started - successful, 0)
    out.retransmissions = int(last.get("Retransmissions(C)", 0) or 0)
    t0 = _epoch(rows[0]["CurrentTime"])
    t_end = _epoch(last["CurrentTime"])
    out.elapsed_s = t_end - t0
    # creation rate: the last periodic row while SIPp was still starting new scenarios
    during = [r for r in rows if 0 < int(r.get("OutgoingCall(C)", 0)) < run.calls]
    if during:
        r = during[-1]
        span = _epoch(r["CurrentTime"]) - t0
        out.create_rate = int(r["OutgoingCall(C)"]) / span if span > 0 else 0.0
    else:  # all started before the first periodic row
        full = [r for r in rows if int(r.get("OutgoingCall(C)", 0)) >= run.calls]
        span = (_epoch(full[0]["CurrentTime"]) - t0) if full else 0.0
        out.create_rate = started / span if span > 0 else 0.0
    busy = out.elapsed_s - hold_s
    out.done_rate = successful / busy if busy > 0 else 0.0
    load_end = max(seconds, started / out.create_rate if out.create_rate else seconds)
    out.tail_s = round(max(0.0, out.elapsed_s - load_end - hold_s), 3)
    return out


def passes(rate: int, out: Outcome, settings: Settings, seconds: float,
           drops: int | None = None) -> tuple[bool, str]:
    if out.started == 0:
        return False, "nothing started"
    ratio = out.failed / out.started
    if ratio > settings.max_fail_ratio:
        return False, f"{ratio:.2%} failed"
    if drops and drops / out.started > settings.max_fail_ratio:
        # a request the server's full socket dropped failed; SIPp's retransmission hides it
        return False, f"the server's socket dropped {drops} datagrams"
    if out.create_rate < settings.min_rate_ratio * rate:
        return False, f"SIPp started only {out.create_rate:.0f}/s"
    allowed = max(settings.max_tail_s, (1 - settings.min_rate_ratio) * seconds)
    if out.tail_s > allowed:
        return False, (f"fell behind: last completion {out.tail_s:.2f} s after the load "
                       f"ended (allowed {allowed:.2f} s)")
    return True, "ok"


@dataclass
class Step:
    rate: int
    ok: bool
    why: str
    outcome: dict
    sipp_processes: int
    server_cpu_cores: float | None
    sipp_cpu_cores: float | None
    server_udp_drops: int | None = None   # datagrams dropped on the server's full socket
    other_cpu_cores: float | None = None  # every other process on the machine (interference)
    server_kernel_cores: float | None = None  # of server_cpu_cores, in the kernel (stime)


def load_step(*, scenario: str, target_port: int | None, csvs: list[Path], rate: int,
              seconds: float, hold_s: float, workdir: Path, name: str, settings: Settings,
              server: Server | None) -> Step:
    n = len(csvs)
    total = int(round(rate * seconds))
    drain = hold_s + 20.0
    # open scenarios allowed per SIPp: far above what a server that keeps up needs, and
    # below the open-files limit SIPp checks it against
    limit = min(18000, int(rate * (hold_s + 5)) + 500)
    times0 = server.cpu_times() if server else None
    server_pids = server.pids() if server else None
    drops0 = udp_drops(target_port, server_pids) if target_port else 0
    kids0 = children_cpu()
    table0 = process_cpu_table()
    t0 = time.monotonic()
    runs = []
    try:
        ports = sipp_ports(n, max(settings.processes))
        for i, (csv, port) in enumerate(zip(csvs, ports, strict=True)):
            runs.append(start_sipp(scenario, workdir=workdir, name=f"{name}-{rate}-{i}",
                                   target_port=target_port, local_port=port,
                                   csv=csv, rate=rate / n, calls=total // n,
                                   limit=limit // n, timeout_s=seconds + drain))
        deadline = t0 + seconds + drain + 15
        for r in runs:
            try:
                r.proc.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    finally:
        for r in runs:
            stop(r.proc, grace=3.0)
    wall = time.monotonic() - t0
    times1 = server.cpu_times() if server else None
    table1 = process_cpu_table()
    ours = {r.proc.pid for r in runs} | {p.pid for p in _live.values()}
    if server and server.proc:
        ours.add(server.proc.pid)
    drops = udp_drops(target_port, server_pids) - drops0 if target_port else None
    total_out = Outcome()
    for r in runs:
        total_out.add(outcome_of(r, hold_s, seconds))
    ok, why = passes(rate, total_out, settings, seconds, drops)
    busy = max(wall, 1e-6)
    server_cores = kernel_cores = None
    if times0 is not None and times1 is not None:
        server_cores = round((sum(times1) - sum(times0)) / busy, 2)
        kernel_cores = round((times1[1] - times0[1]) / busy, 3)
    return Step(rate, ok, why, asdict(total_out), n, server_cores,
                round((children_cpu() - kids0) / busy, 2), drops,
                round(other_cpu_seconds(table0, table1, ours) / busy, 2), kernel_cores)


def sipp_ports(n: int, processes: int) -> list[int]:
    """The local ports of n load-generating SIPp processes, the same in every step of the
    run: phones keep their address, so a registration in a later step refreshes the
    binding of an earlier one instead of adding a contact (with new ports per step every
    extension gathered one binding per step, and every 200 listed them all). The ports
    are such that the appliance's SO_REUSEPORT steering (appliance/sip/reuseport.py:
    source address + port, mod the number of processes) gives them to different
    processes, as phones on many addresses spread over them; Kamailio's workers share
    one socket and do not care."""
    from appliance.sip.reuseport import socket_for
    ports = _sipp_ports.setdefault(processes, [])
    while len(ports) < n:
        port = free_udp_port()
        if socket_for(LOOPBACK, port, processes) == len(ports) % processes:
            ports.append(port)
    return ports[:n]


_sipp_ports: dict[int, list[int]] = {}


def _log_step(label: str, step: Step, extra: str = "") -> None:
    o = step.outcome
    log(f"  {label:>9} {step.rate:>6}/s: {'pass' if step.ok else 'FAIL'} ({step.why}); "
        f"{o['successful']}/{o['started']} ok, started {o['create_rate']:.0f}/s, "
        f"tail {o['tail_s']:.2f} s, {o['retransmissions']} retransmissions, "
        f"server {step.server_cpu_cores if step.server_cpu_cores is not None else '-'} "
        f"cores{_kernel_text(step.server_kernel_cores)}, SIPp {step.sipp_cpu_cores} cores, {step.server_udp_drops} dropped, "
        f"other processes {step.other_cpu_cores} cores{extra}")


def _kernel_text(cores: float | None) -> str:
    return f" ({cores} in the kernel)" if cores is not None else ""


def ladder(rates: list[int], run_one: Callable[[int], Step], label: str,
           settle_s: float = 1.0) -> tuple[int | None, list[Step]]:
    """Run rising rates until one fails; returns the highest passing rate and all steps."""
    best = None
    steps: list[Step] = []
    for i, rate in enumerate(rates):
        if i:
            time.sleep(settle_s)  # let the previous step's stragglers and timers go by
        step = run_one(rate)
        steps.append(step)
        _log_step(label, step)
        if not step.ok:
            break
        best = rate
    return best, steps


@dataclass
class Climb:
    """One server's ladder, climbed a step at a time between the other servers' steps."""
    server: Server
    run_one: Callable[[int], Step]
    best: int | None = None
    steps: list[Step] = field(default_factory=list)
    catch_up_s: list[float] = field(default_factory=list)  # CPU seconds run in each resume
    climbing: bool = True


def interleaved_ladders(climbs: list[Climb], rates: list[int], settings: Settings) -> None:
    """Every server's ladder at once, one rate at a time: each rate is offered to each
    server still climbing, one after the other (in turn forwards and backwards), before
    the next rate. This machine's speed drifts by half within minutes
    (docs/performance.md); ladders run one after another compared each server's top
    steps taken minutes apart, interleaved ones take them within a minute. The servers
    not being loaded are paused (SIGSTOP), so that what they still have to do does not
    run beside another server's step; a server resumed for its step first runs,
    unloaded, what came due while it was stopped, until it is quiet and its clock has
    caught up (`Server.resume_min_s`; that CPU is logged as "caught up", not counted
    in a step). A server whose step fails is stopped: its ladder is over."""
    for c in climbs:
        c.server.pause()
    try:
        for i, rate in enumerate(rates):
            # every other rate in the reverse order: a machine that speeds up or slows
            # down through a round favours neither the first server nor the last
            for c in [c for c in (climbs if i % 2 == 0 else climbs[::-1]) if c.climbing]:
                c.catch_up_s.append(round(_resume_until_quiet(c.server, settings), 3))
                step = c.run_one(rate)
                c.server.pause()
                c.steps.append(step)
                _log_step(c.server.label, step, f"; caught up {c.catch_up_s[-1]:.2f} s CPU")
                if step.ok:
                    c.best = rate
                else:
                    c.climbing = False
                    c.server.stop()
            if not any(c.climbing for c in climbs):
                break
    finally:
        for c in climbs:
            c.server.resume()


def _resume_until_quiet(server: Server, settings: Settings, poll_s: float = 0.25) -> float:
    """Resume a paused server and wait until it has used under 1% of a core for
    `settings.quiet_s`, and at least `server.resume_min_s` (at most `settings.resume_max_s`
    or that minimum); the CPU seconds it used."""
    server.resume()
    t0 = time.monotonic()
    cpu0 = server.cpu()
    samples = [(t0, cpu0)]
    while True:
        now, cpu = time.monotonic(), server.cpu()
        samples.append((now, cpu))
        while len(samples) > 1 and samples[1][0] <= now - settings.quiet_s:
            samples.pop(0)   # samples[0]: the latest one at least quiet_s old
        start_t, start_cpu = samples[0]
        waited = now - t0
        if (waited >= server.resume_min_s and now - start_t >= settings.quiet_s
                and cpu - start_cpu <= 0.01 * (now - start_t)):
            return cpu - cpu0
        if waited >= max(settings.resume_max_s, server.resume_min_s):
            return cpu - cpu0
        time.sleep(poll_s)


def climbed(c: Climb, rates: list[int]) -> dict[str, Any]:
    return {"figure": c.best, "top_of_ladder": c.best == rates[-1],
            "processes": c.server.processes, "steps": [asdict(s) for s in c.steps],
            "caught_up_cpu_s": c.catch_up_s,
            "udp_receive_buffer_bytes": c.server.receive_buffer}


def log_receive_buffers(servers: list[Server]) -> None:
    log("  UDP receive buffers granted (ss -m): " + ", ".join(
        f"{s.label} {_mb_text(s.receive_buffer)}" for s in servers))


def _mb_text(n: int | None) -> str:
    return "unknown" if n is None else f"{_mb(n // 1024)} MB"


# --- the sections ---------------------------------------------------------------------------------


def _processes(n: int) -> str:
    return f"{n} process" if n == 1 else f"{n} processes"


def best_counts(res: dict[str, Any]) -> dict[str, Any]:
    """Each server's figure at its best process count: "appliance" and "kamailio" entries
    naming the run they come from (`appliance_2p`, ...). The highest figure wins; a tie goes
    to fewer processes."""
    out: dict[str, Any] = {}
    for server in ("appliance", "kamailio"):
        runs = [(v.get("figure") or 0, -v["processes"], k) for k, v in res.items()
                if k.startswith(server + "_") and isinstance(v, dict) and "steps" in v]
        if not runs:
            continue
        figure, minus_n, key = max(runs)
        out[server] = {"figure": figure or None, "processes": -minus_n, "from": key,
                       "top_of_ladder": bool(res[key].get("top_of_ladder"))}
    return out


class Bench:
    def __init__(self, settings: Settings, workdir: Path, kamailio: bool) -> None:
        self.s = settings
        self.workdir = workdir
        self.with_kamailio = kamailio
        self.results: dict[str, Any] = {}
        self.reg_users = Users.numbered(10000, settings.reg_users)
        self.callee_users = Users.numbered(20000, settings.callees)
        self.mem_users = Users.numbered(30000, settings.memory_contacts)

    def servers(self, users: Users, tag: str) -> list[Server]:
        """The daemon as shipped (one process) and Kamailio: memory and start-up."""
        out: list[Server] = [Appliance(self.workdir, users, tag)]
        if self.with_kamailio:
            out.append(Kamailio(self.workdir, users, tag, self.s))
        return out

    def load_servers(self, users: Users, what: str) -> list[Server]:
        """Each server at each process count (`Settings.processes`), the appliance's first;
        for registrations also issue 3's yardstick, before Kamailio."""
        out: list[Server] = []
        for n in self.s.processes:
            a = Appliance(self.workdir, users, f"{what}-{n}p", workers=n - 1)
            a.name, a.label = f"appliance_{n}p", f"appliance, {_processes(n)}"
            out.append(a)
        if what == "registrations":
            out.append(Throwaway(self.workdir, users, what))
        if self.with_kamailio:
            for n in self.s.processes:
                k = Kamailio(self.workdir, users, f"{what}-{n}p", self.s, workers=n)
                k.name, k.label = f"kamailio_{n}p", f"Kamailio, {_processes(n)}"
                out.append(k)
        return out

    def _sipp_split(self, rate: int, what: str = "registrations") -> int:
        """How many SIPp processes offer `rate`."""
        split = self.s.sipp_call_split_rate if what == "calls" else self.s.sipp_split_rate
        return 2 if rate >= split else 1

    def _reg_csvs(self, d: Path, parts: int) -> list[Path]:
        numbers = self.reg_users.numbers()
        return [write_register_csv(d / f"register-{parts}-{i}.csv", self.reg_users, chunk)
                for i, chunk in enumerate(split(numbers, parts))]

    # registrations --------------------------------------------------------------------------
    def registrations(self) -> None:
        res: dict[str, Any] = {}
        servers = self.load_servers(self.reg_users, "registrations")
        log("registrations: " + ", ".join(s.label for s in servers) + ", interleaved")
        climbs: list[Climb] = []
        try:
            for server in servers:
                server.start()
                server.measure_receive_buffer()
                climbs.append(Climb(server, lambda rate, server=server: load_step(
                    scenario="register.xml", target_port=server.port,
                    csvs=self._reg_csvs(server.workdir, self._sipp_split(rate)), rate=rate,
                    seconds=self.s.reg_seconds, hold_s=0.0, workdir=server.workdir,
                    name="register", settings=self.s, server=server)))
            log_receive_buffers(servers)
            interleaved_ladders(climbs, self.s.reg_rates, self.s)
        finally:
            for server in servers:
                server.stop()
        for c in climbs:
            res[c.server.name] = climbed(c, self.s.reg_rates)
        res.update(best_counts(res))
        res["sipp_ceiling"] = self._ceiling(
            "registrations", "register_server.xml", "register.xml",
            [f for f in (v.get("figure") for v in res.values()) if f], self.s.reg_rates,
            self.s.ceiling_reg_extra, self.s.reg_seconds, 0.0, self._reg_csvs)
        self.results["registrations"] = res

    def _ceiling(self, what: str, server_scenario: str, client_scenario: str,
                 figures: list[int], rates: list[int], extra: list[int], seconds: float,
                 hold_s: float, make_csvs) -> dict[str, Any]:
        """The same client scenario against SIPp playing the server, from the best figure up."""
        start = max(figures) if figures else rates[0]
        ladder_rates = [r for r in rates + extra if r >= start]
        d = self.workdir / f"ceiling-{what}"
        d.mkdir(parents=True, exist_ok=True)
        log(f"{what}: SIPp ceiling (SIPp against SIPp), from {start}/s")
        port = free_udp_port()
        uas = start_sipp(server_scenario, workdir=d, name="sipp-server", target_port=None,
                         local_port=port)
        try:
            time.sleep(0.5)
            if uas.proc.poll() is not None:
                raise RuntimeError(f"SIPp server exited: see {d}/sipp-server.err")
            best, steps = ladder(ladder_rates, lambda rate: load_step(
                scenario=client_scenario, target_port=port,
                csvs=make_csvs(d, self._sipp_split(rate, what)), rate=rate, seconds=seconds,
                hold_s=hold_s, workdir=d, name="client", settings=self.s, server=None),
                "SIPp", self.s.settle_s)
        finally:
            stop(uas.proc)
        return {"figure": best, "all_passed": bool(steps) and all(s.ok for s in steps),
                "tried_from": start, "steps": [asdict(s) for s in steps]}

    # calls ---------------------------------------------------------------------------------------
    def _caller_csvs(self, d: Path, parts: int) -> list[Path]:
        users = self.reg_users + self.callee_users
        callers = self.reg_users.numbers()
        callees = self.callee_users.numbers()
        return [write_caller_csv(d / f"callers-{parts}-{i}.csv", users, chunk, callees)
                for i, chunk in enumerate(split(callers, parts))]

    def start_callees(self, server: Server, rate: int = 200, timeout_s: float = 30.0
                      ) -> SippRun:
        """Register every callee extension (at `rate`, within `timeout_s`) from the port
        the callee SIPp then answers on, and start that SIPp."""
        d = server.workdir
        port = free_udp_port()
        csv = write_register_csv(d / "callees.csv", self.callee_users,
                                 self.callee_users.numbers())
        reg = start_sipp("register.xml", workdir=d, name="callee-register",
                         target_port=server.port, local_port=port, csv=csv,
                         rate=rate, calls=self.s.callees, timeout_s=timeout_s)
        reg.proc.wait(timeout_s + 15)
        o = outcome_of(reg, 0.0)
        if o.successful != self.s.callees:
            raise RuntimeError(f"{server.label}: only {o.successful} of "
                               f"{self.s.callees} callees registered; see {d}")
        callee = start_sipp("call_callee.xml", workdir=d, name="callee",
                            target_port=None, local_port=port)
        time.sleep(0.5)
        if callee.proc.poll() is not None:
            stop(callee.proc)
            raise RuntimeError(f"callee SIPp exited: see {d}/callee.err")
        return callee

    def calls(self) -> None:
        res: dict[str, Any] = {}
        users = self.reg_users + self.callee_users
        servers = self.load_servers(users, "calls")
        log("calls: " + ", ".join(s.label for s in servers) + ", interleaved")
        callees: list[SippRun] = []
        climbs: list[Climb] = []
        try:
            for server in servers:
                d = server.workdir
                server.start()
                server.measure_receive_buffer()
                callees.append(self.start_callees(server))
                climbs.append(Climb(server, lambda rate, server=server, d=d: load_step(
                    scenario="call_caller.xml", target_port=server.port,
                    csvs=self._caller_csvs(d, self._sipp_split(rate, "calls")),
                    rate=rate, seconds=self.s.call_seconds, hold_s=self.s.call_hold_s, workdir=d,
                    name="caller", settings=self.s, server=server)))
            log_receive_buffers(servers)
            interleaved_ladders(climbs, self.s.call_rates, self.s)
        finally:
            for callee in callees:
                stop(callee.proc)
            for server in servers:
                server.stop()
        for c in climbs:
            res[c.server.name] = climbed(c, self.s.call_rates)
        res.update(best_counts(res))
        res["sipp_ceiling"] = self._ceiling(
            "calls", "call_server.xml", "call_caller.xml",
            [f for f in (v.get("figure") for v in res.values()) if f], self.s.call_rates,
            self.s.ceiling_call_extra, self.s.call_seconds, self.s.call_hold_s,
            self._caller_csvs)
        self.results["calls"] = res

    # memory ---------------------------------------------------------------------------------------
    def memory(self) -> None:
        """RSS idle (factory config), idle with 10,000 extensions configured, and with those
        10,000 registered: right after (+3 s) and settled, once the REGISTER transactions
        have ended (the daemon keeps them 32 s, Timer J = 64*T1, after the answer)."""
        res: dict[str, Any] = {}
        idle_wait = 2.0
        settle_s = 40.0
        # idle, factory configuration (the daemon writes it on first start) / 3 users
        factory = Appliance(self.workdir, None, "memory-factory", md5_first=False)
        factory.start()
        try:
            time.sleep(idle_wait)
            res["appliance_idle_factory_kb"] = factory.memory_kb()
        finally:
            factory.stop()
        if self.with_kamailio:
            k = Kamailio(self.workdir, Users.numbered(100, 3), "memory-factory", self.s)
            k.start()
            try:
                time.sleep(idle_wait)
                res["kamailio_idle_factory_kb"] = k.memory_kb()
            finally:
                k.stop()
        # 10,000 extensions configured: idle, then all registered. The servers run one after
        # the other but stay up, so that the daemon settles while Kamailio is measured.
        n = self.s.memory_contacts
        running: list[tuple[Server, float]] = []
        try:
            for server in self.servers(self.mem_users, "memory"):
                log(f"memory: {server.label}, {n} extensions")
                d = server.workdir
                server.start()
                running.append((server, 0.0))
                time.sleep(idle_wait)
                res[f"{server.name}_idle_configured_kb"] = server.memory_kb()
                csv = write_register_csv(d / "register.csv", self.mem_users,
                                         self.mem_users.numbers())
                rate = self.s.memory_reg_rate
                reg = start_sipp("register.xml", workdir=d, name="register",
                                 target_port=server.port, local_port=free_udp_port(), csv=csv,
                                 rate=rate, calls=n, timeout_s=n / rate + 40)
                try:
                    reg.proc.wait(n / rate + 60)
                finally:
                    stop(reg.proc)
                running[-1] = (server, time.monotonic())
                o = outcome_of(reg, 0.0)
                res[f"{server.name}_registered"] = o.successful
                time.sleep(idle_wait + 1.0)  # the daemon saves registrations.json once a second
                res[f"{server.name}_contacts_now_kb"] = server.memory_kb()
                if isinstance(server, Appliance):
                    res["appliance_saved_bindings"] = server.registrations_saved()
                log(f"  {server.label}: {o.successful}/{n} registered, "
                    f"{res[f'{server.name}_contacts_now_kb'] / 1024:.1f} MB right after")
            first_done = min(t for _, t in running)
            time.sleep(max(0.0, first_done + settle_s - time.monotonic()))
            for server, done in running:
                res[f"{server.name}_contacts_kb"] = server.memory_kb()
                res[f"{server.name}_settled_after_s"] = round(time.monotonic() - done, 1)
                log(f"  {server.label}: {res[f'{server.name}_contacts_kb'] / 1024:.1f} MB "
                    f"{res[f'{server.name}_settled_after_s']:.0f} s after registering")
        finally:
            for server, _ in running:
                server.stop()
        res["kamailio_measure"] = ("sum of Pss over its processes "
                                   f"({self.s.kamailio_workers} UDP workers + helpers)")
        res["appliance_measure"] = "VmRSS of the daemon, plus its SIP workers if any"
        self.results["memory"] = res

    # startup ---------------------------------------------------------------------------------------
    def startup(self) -> None:
        res: dict[str, Any] = {}
        # the appliance as shipped (`appliance run`), on a fresh data folder: first start
        # writes config.yaml, the TLS certificate and the nonce key; then restarts
        app = Appliance(self.workdir, None, "startup", md5_first=False)
        try:
            res["appliance_first_start_s"] = round(app.start(), 3)
        finally:
            app.stop()
        samples = []
        for _ in range(self.s.startup_samples):
            try:
                samples.append(app.start())
            finally:
                app.stop()
        res["appliance_restart_s"] = round(statistics.median(samples), 3)
        res["appliance_restart_samples"] = [round(x, 3) for x in samples]
        big = Appliance(self.workdir, self.mem_users, "startup-10k", md5_first=False)
        samples = []
        for _ in range(self.s.startup_samples):
            try:
                samples.append(big.start())
            finally:
                big.stop()
        res["appliance_10k_s"] = round(statistics.median(samples), 3)
        if self.with_kamailio:
            for tag, users in (("startup", Users.numbered(100, 3)),
                               ("startup-10k", self.mem_users)):
                k = Kamailio(self.workdir, users, tag, self.s)
                samples = []
                for _ in range(self.s.startup_samples):
                    try:
                        samples.append(k.start())
                    finally:
                        k.stop()
                key = "kamailio_start_s" if tag == "startup" else "kamailio_10k_s"
                res[key] = round(statistics.median(samples), 3)
        log("startup: " + ", ".join(f"{k}={v}" for k, v in res.items()
                                      if not k.endswith("samples")))
        self.results["startup"] = res


# --- reporting --------------------------------------------------------------------------------------


def machine_info(wakeups: dict[str, Any] | None = None) -> dict[str, Any]:
    """The host (see host_info) plus the SIP load tool's and the reference's versions."""
    return {**host_info(), "sipp": sipp_version(), "kamailio": kamailio_version(),
            "udp_ping_pong": wakeups}


def ping_pong(round_trips: int = 20_000) -> dict[str, Any]:
    """What a process waking another costs on this machine: two processes bounce one
    400-byte datagram over loopback, each blocked in recv between turns, free to run on
    any core and then both on the first; µs per round trip (wall) and CPU per side. Every
    SIP message a server answers is such a wakeup at low rates, so this says how far
    CPU figures compare between machines before the servers' own work (the CPU per
    operation of both servers differed ~4x between two machines of issue 3's passes)."""
    out: dict[str, Any] = {}
    for where, cpus in (("any_core", None), ("one_core", {min(os.sched_getaffinity(0))})):
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        a.bind((LOOPBACK, 0))
        b.bind((LOOPBACK, 0))
        a.settimeout(10.0)  # a lost datagram ends the measurement (and the echo) with an error
        b.settimeout(10.0)
        mask = os.sched_getaffinity(0)
        pid = os.fork()
        if pid == 0:  # the echo
            try:
                if cpus:
                    os.sched_setaffinity(0, cpus)
                for _ in range(round_trips):
                    data, addr = b.recvfrom(2048)
                    b.sendto(data, addr)
            finally:
                os._exit(0)
        try:
            if cpus:
                os.sched_setaffinity(0, cpus)
            to, msg = b.getsockname(), b"x" * 400
            t0, r0 = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF)
            for _ in range(round_trips):
                a.sendto(msg, to)
                a.recv(2048)
            wall = time.monotonic() - t0
            r1 = resource.getrusage(resource.RUSAGE_SELF)
        finally:
            os.sched_setaffinity(0, mask)
            os.waitpid(pid, 0)
            a.close()
            b.close()
        cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
        out[where] = {"round_trip_us": round(wall / round_trips * 1e6, 1),
                      "cpu_per_side_us": round(cpu / round_trips * 1e6, 1)}
    return out


def host_info() -> dict[str, Any]:
    """CPU, memory, OS, Python, event loop and the daemon's version and source hash."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    debian = None
    with contextlib.suppress(OSError):
        debian = Path("/etc/debian_version").read_text().strip()
    try:
        from importlib.metadata import version
        appliance_version = version("appliance")
    except Exception:
        appliance_version = "unknown"
    try:
        import uvloop  # type: ignore[import-not-found]
        loop = f"uvloop {uvloop.__version__}"
    except ImportError:
        loop = "asyncio (uvloop not installed)"
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1) if mem_kb else None,
        "kernel": platform.release(),
        "os": f"Debian {debian}" if debian else platform.platform(),
        "python": platform.python_version(),
        "event_loop": loop,
        "appliance_version": appliance_version,
        "appliance_commit": git_head(),
        "appliance_tree_sha256": tree_fingerprint(),
        "appliance_message_path": message_path(),
    }


def message_path() -> str:
    """"compiled" when the daemon runs the mypyc-compiled modules (`make native`)."""
    out = subprocess.run([sys.executable, "-c", "import appliance; print(appliance.NATIVE)"],
                         cwd=ROOT, capture_output=True, text=True, timeout=30)
    return out.stdout.strip() or f"unknown ({out.stderr.strip()[-200:]})"


def tree_fingerprint() -> str:
    """A hash of the daemon's source files as they are on disk (commit + uncommitted edits)."""
    import hashlib
    h = hashlib.sha256()
    for path in sorted((ROOT / "appliance").rglob("*.py")):
        h.update(str(path.relative_to(ROOT)).encode() + b"\0")
        with contextlib.suppress(OSError):
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


def git_head() -> str | None:
    """The checked-out commit, read from .git without running git."""
    git = ROOT / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:12]
        ref = head[5:]
        if (git / ref).exists():
            return (git / ref).read_text().strip()[:12]
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0][:12]
    except OSError:
        return None
    return None


def _mb(kb: int | None) -> float | None:
    return round(kb / 1024, 1) if kb else None


def build_table(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def row(figure: str, app: Any, kam: Any, target: str, target_ok: bool | None, *,
            higher_better: bool = False, app_at_least: bool = False,
            kam_at_least: bool = False) -> None:
        ratio = None
        if isinstance(app, int | float) and isinstance(kam, int | float) and kam:
            ratio = round(app / kam, 2)
        bound = None  # a figure at the top of its ladder is a lower bound
        if ratio is not None and app_at_least != kam_at_least:
            bound = "at most" if kam_at_least else "at least"
        if app_at_least and kam_at_least:  # both passed every rate: no ratio to tell
            ratio, target_ok = None, None
        rows.append({"figure": figure, "appliance": app, "kamailio": kam, "ratio": ratio,
                     "ratio_bound": bound, "appliance_at_least": app_at_least,
                     "kamailio_at_least": kam_at_least, "target": target,
                     "target_met": target_ok, "higher_is_better": higher_better})

    for key, title in (("registrations", "registrations/s"), ("calls", "calls/s")):
        r = results.get(key)
        if not r or "error" in r and "appliance" not in r:
            continue
        a, k = r.get("appliance", {}), r.get("kamailio", {})
        app, kam = a.get("figure"), k.get("figure")
        met = None
        if isinstance(kam, int):
            met = (app or 0) >= kam
        counts = ", ".join(f"{who} {_processes(x['processes'])}"
                           for who, x in (("appliance", a), ("Kamailio", k)) if x)
        row(f"{title} (<=0.1% failed, kept up), best process count ({counts})", app, kam,
            ">= 1.0x Kamailio", met, higher_better=True,
            app_at_least=bool(a.get("top_of_ladder")), kam_at_least=bool(k.get("top_of_ladder")))
        for n in sorted({v["processes"] for key, v in r.items()
                         if key.startswith(("appliance_", "kamailio_")) and "steps" in v}):
            an, kn = r.get(f"appliance_{n}p", {}), r.get(f"kamailio_{n}p", {})
            row(f"{title}, {_processes(n)} each", an.get("figure"), kn.get("figure"), "", None,
                higher_better=True, app_at_least=bool(an.get("top_of_ladder")),
                kam_at_least=bool(kn.get("top_of_ladder")))
    m = results.get("memory")
    if m and "appliance_idle_factory_kb" in m:
        idle = _mb(m.get("appliance_idle_factory_kb"))
        row("RSS idle, factory config (MB)", idle, _mb(m.get("kamailio_idle_factory_kb")),
            "<= 60 MB", idle is not None and idle <= 60)
        row("RSS idle, 10,000 extensions configured (MB)",
            _mb(m.get("appliance_idle_configured_kb")),
            _mb(m.get("kamailio_idle_configured_kb")), "", None)
        n = f"{m.get('appliance_registered', 0):,}"
        row(f"RSS, {n} contacts, right after registering (MB)",
            _mb(m.get("appliance_contacts_now_kb")), _mb(m.get("kamailio_contacts_now_kb")),
            "", None)
        full = _mb(m.get("appliance_contacts_kb"))
        row(f"RSS, {n} contacts, settled (MB)", full, _mb(m.get("kamailio_contacts_kb")),
            "<= 150 MB", full is not None and full <= 150)
    s = results.get("startup")
    if s and "appliance_restart_s" in s:
        first = s.get("appliance_first_start_s")
        row("start-up, first start (s)", first, None, "< 1.5 s",
            first is not None and first < 1.5)
        again = s.get("appliance_restart_s")
        row("start-up, restart (s)", again, s.get("kamailio_start_s"), "< 1.5 s",
            again is not None and again < 1.5)
        row("start-up, 10,000 extensions (s)", s.get("appliance_10k_s"),
            s.get("kamailio_10k_s"), "", None)
    return rows


def cpu_per_operation(results: dict[str, Any]) -> list[str]:
    """Notes: each server's CPU per registration and per call at its highest passing rate
    (its processes' CPU over the step / the offered rate), and how much of it was in the
    kernel: where two servers differ, the rest (their own code) is what differs."""
    notes = []
    for key, what in (("registrations", "registration"), ("calls", "call")):
        parts = []
        runs = results.get(key, {})
        for name in [k for k in runs if k.startswith("appliance_")] + ["throwaway"] + \
                [k for k in runs if k.startswith("kamailio_")]:
            label = {"throwaway": "throwaway registrar (issue 3's yardstick)"}.get(
                name, name.replace("_", " ").replace("kamailio", "Kamailio"))
            r = runs.get(name)
            fig = r.get("figure") if isinstance(r, dict) else None
            step = next((s for s in r.get("steps", []) if s["rate"] == fig), None) if fig \
                else None
            if step and step.get("server_cpu_cores"):
                us = step["server_cpu_cores"] / fig * 1e6
                kernel = step.get("server_kernel_cores")
                within = f" ({kernel / fig * 1e6:.0f} in the kernel)" if kernel is not None \
                    else ""
                parts.append(f"{label} {us:.0f} us{within} at {fig:,}/s")
        if parts:
            notes.append(f"CPU per {what}: " + ", ".join(parts))
    return notes


def receive_buffer_notes(results: dict[str, Any]) -> list[str]:
    """The UDP receive buffers the servers had, and a warning where they differed."""
    notes = []
    for key in ("registrations", "calls"):
        got = {name: r["udp_receive_buffer_bytes"]
               for name, r in results.get(key, {}).items()
               if isinstance(r, dict) and "udp_receive_buffer_bytes" in r}
        if not got:
            continue
        notes.append(f"UDP receive buffer, {key}: " + ", ".join(
            f"{name.replace('_', ' ')} {_mb_text(n)}" for name, n in got.items()))
        if len(set(got.values())) > 1:
            notes.append(f"WARNING: the servers' UDP receive buffers differed ({key}): "
                         "the one with less drops a burst the others queue")
    return notes


def other_load(results: dict[str, Any]) -> float:
    """The most CPU that other processes on the machine used during a load step."""
    worst = 0.0
    for section in ("registrations", "calls"):
        for who in results.get(section, {}).values():
            for step in who.get("steps", []) if isinstance(who, dict) else []:
                worst = max(worst, step.get("other_cpu_cores") or 0.0)
    return round(worst, 2)


def render(rows: list[dict[str, Any]], results: dict[str, Any]) -> str:
    def fmt(v: Any, at_least: bool = False) -> str:
        if v is None:
            return "n/a"
        text = f"{v:g}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)
        return (">= " if at_least else "") + text

    def ratio(r: dict[str, Any]) -> str:
        if r["ratio"] is None:
            return "n/a"
        prefix = {"at most": "<= ", "at least": ">= "}.get(r["ratio_bound"] or "", "")
        return f"{prefix}{r['ratio']:.2f}x"

    head = ("figure", "appliance", "Kamailio", "ratio", "target", "met")
    body = [(r["figure"], fmt(r["appliance"], r["appliance_at_least"]),
             fmt(r["kamailio"], r["kamailio_at_least"]), ratio(r), r["target"] or "-",
             {True: "yes", False: "NO", None: "-"}[r["target_met"]]) for r in rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    lines = [line(head), "  ".join("-" * w for w in widths), *(line(b) for b in body)]
    notes = ["ratio = appliance / Kamailio (throughput: higher is better; memory and time: "
             "lower is better); '>=': the top rate tried passed"]
    for key in ("registrations", "calls"):
        c = results.get(key, {}).get("sipp_ceiling")
        if c:
            fig = c.get("figure")
            if fig is None:
                text = f"below {c.get('tried_from'):,}/s"
            else:
                text = f">= {fig:,}/s" if c.get("all_passed") else f"{fig:,}/s"
            notes.append(f"SIPp ceiling, {key} (SIPp against SIPp, same scenario): {text}")
    notes += cpu_per_operation(results)
    notes += receive_buffer_notes(results)
    m = results.get("memory", {})
    if "kamailio_measure" in m:
        notes.append(f"memory: appliance = {m['appliance_measure']}; Kamailio = "
                     f"{m['kamailio_measure']}")
    other = other_load(results)
    if other > 0.25:
        notes.append(f"WARNING: other processes used up to {other} cores during a load step: "
                     "the throughput figures may be low; rerun on an idle machine")
    for key, r in results.items():
        if isinstance(r, dict) and "error" in r:
            notes.append(f"{key}: FAILED: {r['error']}")
    return "\n".join(lines + [""] + notes)


# --- main ----------------------------------------------------------------------------------------------


def ensure_tools(need_kamailio: bool) -> bool:
    """Install sip-tester / kamailio with apt when missing (as root). Returns Kamailio's presence."""
    missing = [pkg for tool, pkg in DEB_PACKAGES.items()
               if shutil.which(tool) is None and (tool != "kamailio" or need_kamailio)]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        log(f"installing Debian packages: {' '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=False, env=env)
        if "kamailio" in missing and shutil.which("systemctl"):
            # the package enables a system-wide Kamailio on port 5060: the bench starts its own
            subprocess.run(["systemctl", "disable", "--now", "kamailio.service"], check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if shutil.which("sipp") is None:
        sys.exit("bench: SIPp not found; install the Debian package sip-tester (as root)")
    if need_kamailio and shutil.which("kamailio") is None:
        log("Kamailio not found (Debian package kamailio): running without the reference")
        return False
    return need_kamailio


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short smoke run: few rates, 3 s each")
    p.add_argument("--only", action="append", metavar="|".join(SECTIONS),
                   help="run only this section (repeat it, or separate with commas)")
    p.add_argument("--no-kamailio", action="store_true", help="skip the Kamailio reference")
    p.add_argument("--keep", action="store_true",
                   help="keep the work folder (logs, SIPp statistics) after the run")
    p.add_argument("--results", type=Path, default=RESULTS_DIR, help="where to write JSON")
    args = p.parse_args(argv)

    sections = [x for item in args.only or [] for x in item.split(",") if x] or list(SECTIONS)
    for x in sections:
        if x not in SECTIONS:
            p.error(f"--only: {x!r} is not one of {', '.join(SECTIONS)}")
    try:
        import appliance  # noqa: F401 - the daemon must be importable by this interpreter
    except ImportError:
        p.error("run it with the project's interpreter: .venv/bin/python bench/run.py")
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with it ignored
    settings = QUICK if args.quick else FULL
    with_kamailio = ensure_tools(not args.no_kamailio)
    workdir = Path(tempfile.mkdtemp(prefix="appliance-bench-"))
    started = dt.datetime.now(dt.UTC)
    load = os.getloadavg()
    log(f"bench: {'quick' if args.quick else 'full'} run of {', '.join(sections)}; "
        f"work folder {workdir}; load average {load[0]:.2f} (run it on an idle machine)")
    wakeups = ping_pong()
    log("UDP ping-pong between two processes: " + "; ".join(
        f"{where.replace('_', ' ')} {v['round_trip_us']} us per round trip, "
        f"{v['cpu_per_side_us']} us CPU per side" for where, v in wakeups.items()))
    bench = Bench(settings, workdir, with_kamailio)
    failed: list[str] = []
    try:
        for section in SECTIONS:
            if section not in sections:
                continue
            try:
                getattr(bench, section)()
            except Exception as e:  # noqa: BLE001 - report it, go on with the next section
                log(f"{section}: FAILED: {type(e).__name__}: {e}")
                bench.results.setdefault(section, {})["error"] = str(e)
                failed.append(section)
    except KeyboardInterrupt:
        log("interrupted: stopping every process started")
        stop_all()
        return 130
    finally:
        stop_all()
        if not args.keep and not _keep_workdir_for(failed):
            shutil.rmtree(workdir, ignore_errors=True)
    seconds = (dt.datetime.now(dt.UTC) - started).total_seconds()
    rows = build_table(bench.results)
    report = {
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": round(seconds, 1),
        "load_average_at_start": [round(x, 2) for x in load],
        "mode": "quick" if args.quick else "full",
        "sections": sections,
        "machine": machine_info(wakeups),
        "settings": asdict(settings),
        "notes": {
            "kamailio": f"load tests: {' and '.join(map(str, settings.processes))} UDP worker "
                        "processes (-n), its figure the better; memory and start-up: "
                        f"{settings.kamailio_workers}; {settings.kamailio_shm_mb} MB shared "
                        f"memory; memory manager {settings.kamailio_memory} (-x); "
                        "bench/kamailio.cfg",
            "appliance": "load tests: the daemon as "
                         f"{' and '.join(map(str, settings.processes))} processes (sip.workers "
                         "= processes - 1; the factory setting is one process), its figure the "
                         "better, run through bench/appliance_md5_first.py (MD5 challenge "
                         "listed first for SIPp 3.6; same work per message); start-up and "
                         "factory idle RSS use `appliance run` as shipped",
            "throwaway": "bench/throwaway_registrar.py, one process: issue 3's yardstick "
                         "(asyncio + uvloop, REGISTER and digest only), run through the "
                         "registrations ladder for its CPU per registration",
            "load": "SIPp on the same 2 cores as the server under test; from "
                    f"{settings.sipp_split_rate} registrations/s and from "
                    f"{settings.sipp_call_split_rate} calls/s two SIPp processes share the "
                    "load",
        },
        "other_load_max_cores": other_load(bench.results),
        "table": rows,
        "results": bench.results,
    }
    print(render(rows, bench.results))
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(report, indent=2) + "\n"
    (args.results / f"{stamp}.json").write_text(text)
    (args.results / "latest.json").write_text(text)
    log(f"wrote {args.results / f'{stamp}.json'} and latest.json ({seconds:.0f} s)")
    if workdir.exists():
        log(f"work folder kept: {workdir}")
    return 1 if failed else 0


def _keep_workdir_for(failed: list[str]) -> bool:
    """A section that broke leaves its logs for a look."""
    return bool(failed)


if __name__ == "__main__":
    sys.exit(main())
