#!/usr/bin/env python3
"""Benchmark the daemon's media path: conference mixing and relayed G.711 calls, on loopback.

    .venv/bin/python bench/media.py            # the full ladders (about 2 minutes)
    .venv/bin/python bench/media.py --quick    # two steps each (about 40 s)
    .venv/bin/python bench/media.py --only mixer|relay

Two processes. The *box* (this process, uvloop and the daemon's GC tuning, as `appliance run`)
runs the real media code: `RtpEndpoint`s, `Relay`, `Mixer` driven by `TickDriver`. The *load*
(a separate process with its own uvloop event loop, started with multiprocessing "spawn")
plays the phones: it sends 20 ms PCMU packets to the box's RTP ports and receives what the box
sends back, on two UDP sockets, the packets of the calls spread over four phases of each 20 ms.

mixer   N participants in one room, each an `RtpEndpoint` attached to one `Mixer` (8 kHz):
        the load sends each participant a real PCMU talk loop; the box receives, jitter-buffers,
        mixes N-1 and sends every participant its mix. ~5 s per N on a rising ladder,
        stopping at the first N that fails. N passes with zero tick overruns: no tick ended
        after the next tick's deadline (`TickDriver.overruns`) and none started more than
        10 ms late (ticks more than 5 ms late are listed: uvloop's timers have 1 ms steps). CPU per participant = box process CPU / N / wall time.
relay   K concurrent calls, each two `RtpEndpoint`s (PCMU) and a `Relay` forwarding both ways:
        the load sends a 20 ms packet every 20 ms on both legs of every call (a talking
        pair) and receives both directions. ~10 s per K, stopping at the first K that fails.
        Each packet carries its send time (wall clock, in the payload); the receiving
        socket stamps arrival in the kernel (SO_TIMESTAMPNS), so the load's own scheduling
        delays cancel out. Per stream: loss (sent - distinct sequence numbers received) and
        the RFC 3550 interarrival jitter J (J += (|D| - J) / 16) averaged over the stream
        after its first second, computed twice: with D from the send times ("added" jitter:
        what the box and the loopback added) and with D from the RTP timestamps (what a
        phone would report). K passes with loss < 0.1% over all streams and a p99 over
        streams of the added jitter < 5 ms. CPU per call = box process CPU / K / wall time.

Results: one table on stdout, bench/results/media-<UTC time>.json and media-latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import json
import multiprocessing
import os
import socket
import statistics
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import host_info  # noqa: E402 - bench/run.py, next to this file

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LOOPBACK = "127.0.0.1"

PTIME = 0.02
FRAME = 160  # PCMU samples (and RTP clock ticks) per 20 ms
PHASES = 4  # the load spreads its streams over 4 x 5 ms of each 20 ms
WARMUP_PACKETS = 50  # the first second of each stream is left out of the jitter figures
DRAIN = 0.5  # seconds the load keeps receiving after it stopped sending

LATE_NOTED = 0.005  # mixer ticks that start later than this are listed
LATE_START = 0.010  # and count as overruns from here (half a tick: the mix goes out late)
MAX_LOSS = 0.001
MAX_ADDED_JITTER_MS = 5.0

MIXER_TARGET = 300
RELAY_TARGET = 500
MIXER_LADDER = (50, 100, 200, 300, 400, 500, 600, 800, 1000)
MIXER_LADDER_QUICK = (100, 300)
RELAY_LADDER = (100, 200, 300, 500, 700, 1000)
RELAY_LADDER_QUICK = (100, 500)
MIXER_SECONDS, MIXER_SECONDS_QUICK = 5.0, 4.0
RELAY_SECONDS, RELAY_SECONDS_QUICK = 10.0, 6.0

# Linux: SO_TIMESTAMPNS (the "old" 64-bit-time_t one on x86_64) is also the cmsg type.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("@qq")
_STAMPED = struct.Struct("!BBHLLd")  # RTP header + the send time as the payload's first 8 bytes
_HEADER = struct.Struct("!BBHLL")
_ARRIVAL = struct.Struct("!d")
# One received packet as the load records it: its first 20 bytes, then the arrival time.
RECORD = np.dtype([("b0", "u1"), ("pt", "u1"), ("seq", ">u2"), ("ts", ">u4"), ("ssrc", ">u4"),
                   ("sent", ">f8"), ("arrival", ">f8")])
SOCKET_BUFFER = 4 * 1024 * 1024

ASTERISK_SIZING = ("Asterisk's published sizing rule of thumb: about 100 concurrent G.711 "
                   "calls per GHz of CPU when relaying without transcoding (context only, "
                   "not measured here)")


# --- the load process --------------------------------------------------------------------------


def _udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for opt, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):  # SO_*BUFFORCE
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.bind((LOOPBACK, 0))
    sock.setblocking(False)
    return sock


class Receiver:
    """Drain a socket whenever it is readable; record (header, send time, kernel arrival)."""

    def __init__(self, sock: socket.socket, record: bool) -> None:
        self.sock = sock
        self.record = record
        self.buf = bytearray()
        self.packets = 0

    def __call__(self) -> None:
        recvmsg = self.sock.recvmsg
        buf = self.buf
        n = 0
        for _ in range(4096):  # then let the sender's timers run
            try:
                data, anc, _flags, _addr = recvmsg(20, 64)
            except BlockingIOError:
                break
            n += 1
            if self.record and len(data) == 20:
                if anc:
                    sec, nsec = _TIMESPEC.unpack_from(anc[0][2])
                    arrival = sec + nsec * 1e-9
                else:
                    arrival = time.time()
                buf += data
                buf += _ARRIVAL.pack(arrival)
        self.packets += n


async def _transmit(streams: list[tuple[socket.socket, tuple[str, int], int, list[bytes]]],
                    seconds: float, stamped: bool) -> dict[str, Any]:
    """Send one packet per stream every 20 ms for `seconds`, streams spread over PHASES."""
    phases = [streams[p::PHASES] for p in range(PHASES)]
    sent = [0] * len(streams)
    index = {id(s): i for i, s in enumerate(streams)}
    phase_index = [[index[id(s)] for s in ph] for ph in phases]
    ticks = round(seconds / PTIME)
    t0 = time.monotonic() + 0.05
    max_late = 0.0
    errors = 0
    for k in range(ticks):
        seq, ts = k & 0xFFFF, (k * FRAME) & 0xFFFFFFFF
        for p in range(PHASES):
            due = t0 + k * PTIME + p * PTIME / PHASES
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            max_late = max(max_late, time.monotonic() - due)
            for (sock, addr, ssrc, frames), i in zip(phases[p], phase_index[p], strict=True):
                payload = frames[k % len(frames)]
                if stamped:
                    data = _STAMPED.pack(0x80, 0, seq, ts, ssrc, time.time()) + payload
                else:
                    data = _HEADER.pack(0x80, 0, seq, ts, ssrc) + payload
                try:
                    sock.sendto(data, addr)
                    sent[i] += 1
                except (BlockingIOError, ConnectionRefusedError):
                    errors += 1
    return {"sent": sent, "ticks": ticks, "send_errors": errors,
            "sender_max_late_ms": round(max_late * 1000, 2)}


def _jitter_mean(d: np.ndarray) -> float:
    """Mean over the stream (after the warm-up) of the RFC 3550 estimate J += (|D| - J) / 16."""
    j = 0.0
    total = 0.0
    n = 0
    for i, x in enumerate(np.abs(d).tolist()):
        j += (x - j) / 16.0
        if i >= WARMUP_PACKETS:
            total += j
            n += 1
    return total / n if n else j


def _analyse(records: bytes, sent: dict[int, int]) -> dict[str, Any]:
    """Loss and jitter per stream (by SSRC), summarised over the streams."""
    rec = np.frombuffer(records, RECORD)
    order = np.argsort(rec["ssrc"], kind="stable")  # stable: each stream stays in arrival order
    rec = rec[order]
    ssrcs, starts, counts = np.unique(rec["ssrc"], return_index=True, return_counts=True)
    received = {}
    added, rfc, delay_p99 = [], [], []
    for ssrc, start, count in zip(ssrcs.tolist(), starts.tolist(), counts.tolist(), strict=True):
        s = rec[start:start + count]
        received[ssrc] = int(np.unique(s["seq"]).size)
        transit = s["arrival"] - s["sent"]
        added.append(_jitter_mean(np.diff(transit)) * 1000)
        rfc.append(_jitter_mean(np.diff(s["arrival"] - s["ts"] / 8000.0)) * 1000)
        delay_p99.append(float(np.percentile(transit, 99)) * 1000)
    total_sent = sum(sent.values())
    lost = sum(max(0, n - received.get(ssrc, 0)) for ssrc, n in sent.items())
    transit_all = (rec["arrival"] - rec["sent"]) * 1000 if rec.size else np.zeros(1)

    def pct(values: list[float], q: float) -> float:
        return round(float(np.percentile(values, q)), 3) if values else float("nan")

    return {
        "streams": len(sent),
        "streams_heard": len(received),
        "packets_sent": total_sent,
        "packets_received": int(rec.size),
        "packets_lost": lost,
        "loss_percent": round(100.0 * lost / total_sent, 4) if total_sent else 0.0,
        "added_jitter_ms_mean": round(statistics.fmean(added), 3) if added else float("nan"),
        "added_jitter_ms_p99": pct(added, 99),
        "added_jitter_ms_max": round(max(added), 3) if added else float("nan"),
        "rfc3550_jitter_ms_mean": round(statistics.fmean(rfc), 3) if rfc else float("nan"),
        "rfc3550_jitter_ms_p99": pct(rfc, 99),
        "one_way_delay_ms_p50": round(float(np.percentile(transit_all, 50)), 3),
        "one_way_delay_ms_p99": round(float(np.percentile(transit_all, 99)), 3),
        "one_way_delay_ms_max": round(float(transit_all.max()), 3),
        "stream_delay_p99_ms_worst": round(max(delay_p99), 3) if delay_p99 else float("nan"),
    }


async def _load_main(conn: Any) -> None:
    loop = asyncio.get_running_loop()
    a, b = _udp_socket(), _udp_socket()
    conn.send((a.getsockname(), b.getsockname()))
    while True:
        cmd = await loop.run_in_executor(None, conn.recv)
        if cmd["op"] == "quit":
            break
        c0 = time.process_time()
        w0 = time.monotonic()
        record = cmd["op"] == "relay"
        rx = [Receiver(a, record), Receiver(b, record)]
        for sock, r in zip((a, b), rx, strict=True):
            loop.add_reader(sock.fileno(), r)
        streams = []
        if cmd["op"] == "relay":
            filler = [bytes(FRAME - 8)]  # 8 bytes of send time + 152 = 160 bytes of "PCMU"
            for i, (a_port, b_port) in enumerate(cmd["calls"]):
                streams.append((a, (LOOPBACK, a_port), 2 * i + 1, filler))  # caller -> box A
                streams.append((b, (LOOPBACK, b_port), 2 * i + 2, filler))  # callee -> box B
        else:
            frames = cmd["frames"]
            for i, port in enumerate(cmd["ports"]):
                streams.append((a, (LOOPBACK, port), i + 1, frames[i % len(frames)]))
        tx = await _transmit(streams, cmd["seconds"], stamped=record)
        await asyncio.sleep(DRAIN)
        for sock in (a, b):
            loop.remove_reader(sock.fileno())
        for r in rx:
            r()  # whatever is still queued
        wall = time.monotonic() - w0
        cpu = time.process_time() - c0
        result: dict[str, Any] = {
            "load_cpu_percent": round(100.0 * cpu / wall, 1),
            "sender_max_late_ms": tx["sender_max_late_ms"],
            "send_errors": tx["send_errors"],
            "received": sum(r.packets for r in rx),
        }
        if record:
            sent = {s[2]: n for s, n in zip(streams, tx["sent"], strict=True)}
            result.update(_analyse(bytes(rx[0].buf + rx[1].buf), sent))
        else:
            result["packets_sent"] = sum(tx["sent"])
        conn.send(result)
    a.close()
    b.close()


def pin(cpu: int) -> list[int] | None:
    """Keep this process on one CPU (box and load on their own), if there are two."""
    if (os.cpu_count() or 1) < 2 or not hasattr(os, "sched_setaffinity"):
        return None
    os.sched_setaffinity(0, {cpu})
    return sorted(os.sched_getaffinity(0))


def load_process(conn: Any) -> None:
    """Entry point of the load process (multiprocessing, spawn)."""
    pin(0)
    run(_load_main(conn))


def run(coro: Any) -> Any:
    """Run `coro` on uvloop when installed (as the daemon does), else on asyncio's loop."""
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


# --- the box (this process) --------------------------------------------------------------------


class Load:
    """The load process and the pipe to it."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=load_process, args=(child,), name="media-load",
                                daemon=True)
        self.proc.start()
        child.close()
        self.addr_a, self.addr_b = self.conn.recv()

    async def run(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self.conn.send(cmd)
        return await asyncio.get_running_loop().run_in_executor(None, self.conn.recv)

    def close(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self.conn.send({"op": "quit"})
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


def pcmu() -> Any:
    from appliance.media import Codec
    return Codec(0, "PCMU", 8000)


def talk_loops() -> list[list[bytes]]:
    """Eight distinct one-second PCMU loops (tones at -20 dBFS), as mixer_benchmark uses."""
    from appliance.media.codecs import create_encoder
    from appliance.media.tones import tone
    loops = []
    for k in range(8):
        enc = create_encoder(pcmu(), 8000)
        sig = tone(300 + 70 * k, 1.0, 8000, level=-20.0)
        loops.append([p for i in range(0, sig.size, FRAME) for p in enc.encode(sig[i:i + FRAME])])
    return loops


def cpu_table() -> dict[int, float]:
    """pid -> CPU seconds used so far, for every process on the machine."""
    tick = os.sysconf("SC_CLK_TCK")
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()
            table[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    return table


class Interference:
    """CPU that processes other than the box and the load used during a step, in cores."""

    def __init__(self, load: Load) -> None:
        self.ours = {os.getpid(), load.proc.pid}
        self.before = cpu_table()
        self.t0 = time.monotonic()

    def cores(self) -> float:
        after = cpu_table()
        other = sum(cpu - self.before.get(pid, 0.0) for pid, cpu in after.items()
                    if pid not in self.ours)
        return round(max(other, 0.0) / (time.monotonic() - self.t0), 2)


class LoopLag:
    """How late a 5 ms sleep on the box's event loop wakes up: the delay any packet can see."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            t = time.monotonic()
            await asyncio.sleep(0.005)
            self.lags.append(time.monotonic() - t - 0.005)

    def stop(self) -> dict[str, float]:
        self._task.cancel()
        lags = self.lags or [0.0]
        return {"box_loop_lag_ms_p99": round(float(np.percentile(lags, 99)) * 1000, 2),
                "box_loop_lag_ms_max": round(max(lags) * 1000, 2)}


async def mixer_step(load: Load, allocator: Any, n: int, seconds: float,
                     loops: list[list[bytes]]) -> dict[str, Any]:
    from appliance.media import Mixer, RtpEndpoint, TickDriver
    mixer = Mixer(8000)
    endpoints = []
    try:
        for _ in range(n):
            ep = await RtpEndpoint.open(LOOPBACK, allocator)
            ep.configure(pcmu())
            ep.set_remote(*load.addr_a)
            mixer.attach(ep)
            endpoints.append(ep)
        late: list[tuple[int, float]] = []  # (tick, ms late) of the ticks that started late

        def on_tick(deadline: float) -> None:
            lateness = time.monotonic() - deadline
            if lateness > LATE_NOTED:
                late.append((driver.ticks - t0[0], round(lateness * 1000, 1)))
            mixer.tick(deadline)

        driver = TickDriver(on_tick)
        request = asyncio.ensure_future(load.run(
            {"op": "mixer", "ports": [ep.rtp_port for ep in endpoints], "frames": loops,
             "seconds": seconds}))
        await asyncio.sleep(0.5)  # the jitter buffers fill, the room starts mixing
        others = Interference(load)
        w0, c0 = time.monotonic(), time.process_time()
        t0 = (driver.ticks, driver.cpu)
        driver.start()
        await asyncio.sleep(seconds - 1.0)
        driver.stop()
        wall, cpu = time.monotonic() - w0, time.process_time() - c0
        other_cores = others.cores()
        ticks = driver.ticks - t0[0]
        result = await request
    finally:
        for ep in endpoints:
            ep.close()
    received = sum(p.frames_in for p in mixer.participants.values())
    late_starts = sum(1 for _, ms in late if ms > LATE_START * 1000)
    passed = driver.overruns == 0 and late_starts == 0 and driver.skipped == 0
    return {
        "participants": n,
        "seconds": round(wall, 2),
        "ticks": ticks,
        "overruns": driver.overruns,
        "late_starts": late_starts,
        "late_ticks_over_5ms": late[:20],
        "skipped": driver.skipped,
        "max_lateness_ms": round(driver.max_lateness * 1000, 2),
        "tick_cpu_ms_mean": round(driver.cpu / max(1, ticks) * 1000, 3),
        "tick_cpu_ms_max": round(driver.cpu_max * 1000, 3),
        "box_cpu_percent": round(100.0 * cpu / wall, 1),
        "cpu_us_per_participant_tick": round(cpu / max(1, ticks) / n * 1e6, 2),
        "cpu_percent_per_participant": round(100.0 * cpu / wall / n, 4),
        "frames_mixed_in": received,
        "frames_expected_in": n * ticks,
        "mixes_sent": mixer.stats.sent,
        "mixes_received_by_load": result["received"],
        "other_cpu_cores": other_cores,
        "load": result,
        "passed": passed,
    }


async def relay_step(load: Load, allocator: Any, k: int, seconds: float) -> dict[str, Any]:
    from appliance.media import Relay, RtpEndpoint
    relays = []
    endpoints = []
    try:
        for _ in range(k):
            a = await RtpEndpoint.open(LOOPBACK, allocator)
            endpoints.append(a)
            b = await RtpEndpoint.open(LOOPBACK, allocator)
            endpoints.append(b)
            a.configure(pcmu())
            b.configure(pcmu())
            a.set_remote(*load.addr_a)
            b.set_remote(*load.addr_b)
            relay = Relay(a, b)
            relay.start()
            relays.append(relay)
        calls = [(r.a.rtp_port, r.b.rtp_port) for r in relays]
        others = Interference(load)
        lag = LoopLag()
        w0, c0 = time.monotonic(), time.process_time()
        result = await load.run({"op": "relay", "calls": calls, "seconds": seconds})
        lags = lag.stop()
        other_cores = others.cores()
        # The load's analysis ran after its receive window: count the box's CPU up to then.
        wall, cpu = time.monotonic() - w0, time.process_time() - c0
        busy = seconds + DRAIN
        forwarded = sum(r.ab.stats.forwarded + r.ba.stats.forwarded for r in relays)
    finally:
        for r in relays:
            r.stop()
        for ep in endpoints:
            ep.close()
    passed = (result["loss_percent"] < 100 * MAX_LOSS
              and result["added_jitter_ms_p99"] < MAX_ADDED_JITTER_MS
              and result["streams_heard"] == result["streams"])
    return {
        "calls": k,
        "seconds": seconds,
        "box_cpu_percent": round(100.0 * cpu / min(wall, busy), 1),
        "cpu_percent_per_call": round(100.0 * cpu / min(wall, busy) / k, 4),
        "forwarded": forwarded,
        **lags,
        "other_cpu_cores": other_cores,
        **result,
        "passed": passed,
    }


async def ladder(name: str, steps: tuple[int, ...], run: Callable[[int], Any]) -> list[dict]:
    results = []
    for n in steps:
        gc.collect()
        r = await run(n)
        results.append(r)
        log(f"{name} {n}: " + ", ".join(f"{k}={v}" for k, v in r.items() if k != "load"
                                        and not isinstance(v, dict)))
        if not r["passed"]:
            break
    return results


def best(results: list[dict], key: str) -> tuple[int | None, bool]:
    """The highest passing step, and whether it is only a lower bound (the last step passed)."""
    passing = [r[key] for r in results if r["passed"]]
    return (max(passing) if passing else None), bool(results) and results[-1]["passed"]


async def box_main(args: argparse.Namespace) -> dict[str, Any]:
    from appliance.media import PortAllocator
    allocator = PortAllocator(range(16000, 32000))  # below the ephemeral range
    load = Load()
    out: dict[str, Any] = {}
    try:
        if "mixer" in args.only:
            loops = talk_loops()
            seconds = MIXER_SECONDS_QUICK if args.quick else MIXER_SECONDS
            out["mixer"] = await ladder(
                "mixer", MIXER_LADDER_QUICK if args.quick else MIXER_LADDER,
                lambda n: mixer_step(load, allocator, n, seconds, loops))
        if "relay" in args.only:
            seconds = RELAY_SECONDS_QUICK if args.quick else RELAY_SECONDS
            out["relay"] = await ladder(
                "relay", RELAY_LADDER_QUICK if args.quick else RELAY_LADDER,
                lambda k: relay_step(load, allocator, k, seconds))
    finally:
        load.close()
    return out


# --- reporting ---------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def machine_info() -> dict[str, Any]:
    return host_info()  # the same host description as bench/run.py's results


def summary(out: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    if "mixer" in out:
        n, bound = best(out["mixer"], "participants")
        r = next((x for x in out["mixer"] if x["participants"] == n), None)
        rows.append({"figure": "conference participants, one room, one core, 0 overruns",
                     "measured": None if n is None else f"{'>= ' if bound else ''}{n}",
                     "value": n, "lower_bound": bound, "target": MIXER_TARGET,
                     "met": n is not None and n >= MIXER_TARGET})
        if r:
            rows.append({"figure": f"  CPU per participant (at {n})",
                         "measured": f"{r['cpu_us_per_participant_tick']} us/tick, "
                                     f"{r['cpu_percent_per_participant']:.3f}% core",
                         "value": r["cpu_percent_per_participant"], "target": None, "met": None})
    if "relay" in out:
        k, bound = best(out["relay"], "calls")
        r = next((x for x in out["relay"] if x["calls"] == k), None)
        rows.append({"figure": "relayed G.711 calls (loss<0.1%, added jitter p99<5 ms)",
                     "measured": None if k is None else f"{'>= ' if bound else ''}{k}",
                     "value": k, "lower_bound": bound, "target": RELAY_TARGET,
                     "met": k is not None and k >= RELAY_TARGET})
        if r:
            rows.append({"figure": f"  CPU per call (at {k})",
                         "measured": f"{r['cpu_percent_per_call']:.3f}% core",
                         "value": r["cpu_percent_per_call"], "target": None, "met": None})
            rows.append({"figure": f"  loss / added jitter mean, p99 (at {k})",
                         "measured": f"{r['loss_percent']}% / {r['added_jitter_ms_mean']}, "
                                     f"{r['added_jitter_ms_p99']} ms",
                         "value": None, "target": None, "met": None})
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    header = ("figure", "measured", "target", "met?")
    table = [header] + [(r["figure"], str(r["measured"] or "-"),
                         "" if r["target"] is None else str(r["target"]),
                         "" if r["met"] is None else ("yes" if r["met"] else "NO"))
                        for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    for j, row in enumerate(table):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if j == 0:
            print("  ".join("-" * w for w in widths))
    print(f"\n{ASTERISK_SIZING}.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="two steps per ladder, shorter")
    parser.add_argument("--only", default="mixer,relay", help="mixer, relay or both")
    args = parser.parse_args()
    args.only = set(args.only.split(","))

    from appliance import gcpolicy  # the daemon's GC settings: part of its media path
    gcpolicy.start()
    box_cpus = pin(1)
    started = dt.datetime.now(dt.UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    t0 = time.monotonic()
    out = run(box_main(args))
    rows = summary(out)
    doc = {
        "run": stamp,
        "mode": "quick" if args.quick else "full",
        "duration_s": round(time.monotonic() - t0, 1),
        "machine": machine_info(),
        "box_cpus": box_cpus,  # the load process runs on CPU 0
        "criteria": {"mixer_late_start_ms": LATE_START * 1000, "relay_max_loss": MAX_LOSS,
                     "relay_max_added_jitter_p99_ms": MAX_ADDED_JITTER_MS},
        "summary": rows,
        "context": ASTERISK_SIZING,
        **out,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=2)
    (RESULTS / f"media-{stamp}.json").write_text(text)
    (RESULTS / "media-latest.json").write_text(text)
    print_table(rows)
    worst = max((step.get("other_cpu_cores") or 0.0 for steps in out.values() for step in steps),
                default=0.0)
    if worst > 0.25:
        print(f"\nWARNING: other processes used up to {worst} cores during a step: "
              "the figures are low. Rerun on an otherwise idle machine.")
    print(f"\nrun {stamp} ({doc['mode']}, {doc['duration_s']} s): "
          f"bench/results/media-{stamp}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
