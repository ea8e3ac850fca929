"""`appliance run`: wire configuration, SIP endpoint and PBX into one asyncio loop."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import ssl
import sys
import time
from pathlib import Path

from . import NATIVE, gcpolicy, loglines, systemd
from .bus import Bus, ExtensionUnregistered
from .loglines import LogLines
from .pbx.core import Pbx
from .pbx.location import Location
from .sip.endpoint import Endpoint
from .sip.transaction import Timers
from .store.atomic import atomic_write
from .store.certs import ensure_certificate
from .store.config import Config, ConfigError, ConfigStore
from .workers import WorkerPool

log = logging.getLogger("appliance")

SHUTDOWN_GRACE = 3.0  # seconds to wait for BYE answers on SIGTERM


def setup_logging(level: str, sip_trace: bool, prefix: str = "") -> None:
    """`prefix`: what marks a SIP worker's lines ("worker 1 ")."""
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    handler = LogLines(sys.stderr, prefix)
    root.addHandler(handler)
    loglines.install(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # The format uses none of these: skip collecting them for every record (the logging
    # HOWTO's "Optimization" section). A call logs three lines; finding the caller's
    # frame was a third of their cost at 1,000 calls/s.
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    trace = logging.getLogger("appliance.sip.trace")
    trace.setLevel(logging.INFO if sip_trace else logging.WARNING)


def server_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # TLS 1.3 is negotiated when offered
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def sip_timers(cfg: Config) -> Timers:
    """T1, T2, T4 (RFC 3261 §17) from `sip.t1_ms` etc."""
    s = cfg.sip
    return Timers(s.t1_ms / 1000, s.t2_ms / 1000, s.t4_ms / 1000)


def nonce_secret(data: Path) -> bytes:
    """The digest nonce key persists so that nonces stay valid across a restart."""
    path = data / "nonce.key"
    try:
        secret = path.read_bytes()
        if len(secret) >= 32:
            return secret
    except OSError:
        pass
    secret = os.urandom(32)
    atomic_write(path, secret)
    return secret


def main(args: argparse.Namespace) -> int:
    setup_logging(getattr(args, "log_level", "info"), getattr(args, "sip_trace", False))
    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    store = ConfigStore(data)
    cfg, created = store.ensure()  # ConfigError propagates to the CLI (exit 1)
    if created:
        print("First start: created", store.path, "with these extensions:", flush=True)
        for number, ext in cfg.extensions.items():
            print(f"  extension {number}  password {ext.password}", flush=True)
    try:
        import uvloop  # type: ignore[import-not-found]
        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(Daemon(args, store, cfg).serve())
    except OSError as e:
        log.error("cannot start: %s", e)
        return 1
    return 0


class Daemon:
    def __init__(self, args: argparse.Namespace, store: ConfigStore, cfg: Config) -> None:
        self.args = args
        self.store = store
        self.cfg = cfg
        self.data = Path(args.data)
        self.stop = asyncio.Event()
        self.workers: WorkerPool | None = None  # SIP workers (sip.workers)

    def _listen_spec(self) -> tuple[str, int, int, int]:
        a, s = self.args, self.cfg.sip
        bind = a.bind or s.bind
        udp = a.sip_port if a.sip_port is not None else s.udp_port
        tcp = a.sip_port if a.sip_port is not None else s.tcp_port
        tls = a.tls_port if a.tls_port is not None else s.tls_port
        return bind, udp, tcp, tls

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        s = self.cfg.sip
        endpoint = Endpoint(sip_timers(self.cfg),
                            trace=bool(getattr(self.args, "sip_trace", False)))
        bind, udp, tcp, tls = self._listen_spec()
        cert, key = await loop.run_in_executor(None, ensure_certificate, self.data)
        n_workers = s.workers
        ports = await endpoint.start(bind, udp, tcp, tls, server_ssl_context(cert, key),
                                     udp_group=1 + n_workers if n_workers else 0)
        bus = Bus()
        location = Location(self.data / "registrations.json")
        restored = location.load(time.time())
        pbx = Pbx(endpoint, self.cfg, location, bus, nonce_secret(self.data), self.store)
        endpoint.tu = pbx
        self.pbx = pbx
        if self.cfg.rooms:
            _ = pbx.conferences  # rooms configured: load media and the prompts now
        pbx.start_lines()
        if n_workers:
            calls = endpoint.transports.steered  # else the kernel's hash would split calls
            self.workers = WorkerPool(n_workers, self._worker_argv(bind, ports["udp"]),
                                      location, bus, endpoint.transports.on_message, calls,
                                      digest=pbx.digest)
            if calls:
                endpoint.transports.on_message = self.workers.dispatch
            await self.workers.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        log.info("listening on %s: udp %d, tcp %d, tls %d; %d extensions, %d registrations "
                 "restored; ready in %.2f s (message path: %s)", bind, ports["udp"],
                 ports["tcp"], ports["tls"], len(self.cfg.extensions), restored,
                 time.monotonic() - started, NATIVE)
        gcpolicy.start()
        systemd.notify("READY=1\nSTATUS=serving")
        tasks = [loop.create_task(self._housekeeping(pbx, location, bus))]
        interval = systemd.watchdog_interval()
        if interval:
            tasks.append(loop.create_task(self._watchdog(interval / 2)))
        await self.stop.wait()

        log.info("shutting down")
        systemd.notify("STOPPING=1")
        if self.workers is not None:
            await self.workers.stop()  # they end their calls and go first
        pbx.stop_lines()
        ended = pbx.hang_up_all() + pbx.stop_media()
        if ended:
            log.info("ending %d call(s)", ended)
            deadline = loop.time() + SHUTDOWN_GRACE
            while loop.time() < deadline and pbx.outstanding_byes():
                await asyncio.sleep(0.05)
        pbx.close_media()
        for t in tasks:
            t.cancel()
        with contextlib.suppress(OSError):
            await loop.run_in_executor(None, location.save)
        await endpoint.close()

    def _worker_argv(self, bind: str, port: int) -> list[str]:
        argv = [sys.executable, "-m", "appliance.workers", "--data", str(self.data),
                "--bind", bind, "--port", str(port),
                "--log-level", getattr(self.args, "log_level", "info")]
        if getattr(self.args, "sip_trace", False):
            argv.append("--sip-trace")
        return argv

    async def _watchdog(self, every: float) -> None:
        while True:
            systemd.notify("WATCHDOG=1")
            await asyncio.sleep(every)

    async def _housekeeping(self, pbx: Pbx, location: Location, bus: Bus) -> None:
        """Once a second: config edits, registration expiry and persistence."""
        loop = asyncio.get_running_loop()
        collections = gcpolicy.FullCollections()
        while True:
            await asyncio.sleep(1.0)
            collections.tick(pbx.endpoint.received, len(pbx.endpoint.layer))
            try:
                new = self.store.poll()
            except ConfigError as e:
                log.error("config.yaml changed but is invalid, keeping the running one: %s", e)
                new = None
            if new is not None:
                log.info("config.yaml reloaded: %d extensions", len(new.extensions))
                if new.sip.workers != self.cfg.sip.workers:
                    log.warning("sip.workers changed: takes effect when the daemon restarts")
                self.cfg = new
                pbx.config = new
                if self.workers is not None:
                    self.workers.reload()
            for aor, b in location.expire(time.time()):
                bus.publish(ExtensionUnregistered(aor, b.contact, "expired"))
            if location.needs_save():
                snapshot = location.snapshot()
                try:
                    await loop.run_in_executor(None, location.save, snapshot)
                except OSError as e:
                    log.error("cannot save registrations: %s", e)
            pbx.endpoint.transports.close_idle()
