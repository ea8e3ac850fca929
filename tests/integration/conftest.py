"""Start the real daemon on loopback for integration tests."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.peers.fixtures import baresip_factory, sipp_background  # noqa: F401
from tests.peers.ports import free_port
from tests.peers.procs import Proc, wait_until

PASSWORDS = {"100": "pw-100-secret", "101": "pw-101-secret", "102": "pw-102-secret",
             "103": "pw-103-secret"}


@dataclass
class Daemon:
    proc: Proc
    data: Path
    port: int
    tls_port: int
    passwords: dict[str, str] = field(default_factory=lambda: dict(PASSWORDS))
    host: str = "127.0.0.1"

    def log(self) -> str:
        return self.proc.stderr() + self.proc.stdout()

    def wait_log(self, text: str, timeout: float = 10.0) -> None:
        wait_until(lambda: text in self.log(), timeout, what=f"daemon log line {text!r}")

    def remote(self, transport: str = "udp") -> str:
        return f"{self.host}:{self.tls_port if transport == 'tls' else self.port}"


# Top-level sections of config.yaml a test may pass to daemon_factory / write_config.
SECTIONS = ("system", "sip", "extensions", "lines", "trunks", "routes", "dns", "media", "rooms")


def write_config(data: Path, sections: dict[str, object] | None = None, **sip: object) -> None:
    """config.yaml for a test daemon. `sip` keywords override single `sip:` keys;
    `sections` gives whole sections: `system` and `sip` are merged into the defaults,
    `extensions` entries are merged per number into the default ones (add forwarding
    or new numbers), the others (`lines`, `trunks`, `routes`, `dns`) are taken as given."""
    sections = dict(sections or {})
    exts: dict[str, dict] = {n: {"password": p, "name": f"Ext {n}"}
                             for n, p in PASSWORDS.items()}
    for n, entry in (sections.pop("extensions", None) or {}).items():
        exts[n] = {**exts.get(n, {}), **entry}
    cfg: dict[str, object] = {
        "version": 1,
        "system": {"language": "en", "name": "test", **(sections.pop("system", None) or {})},
        "sip": {"min_expires": 10, "ring_timeout": 30,
                "auth_algorithms": ["MD5", "SHA-256"],
                **(sections.pop("sip", None) or {}), **sip},
        "extensions": exts,
    }
    for key in SECTIONS:
        if key in sections:
            cfg[key] = sections.pop(key)
    if sections:
        raise TypeError(f"unknown config sections: {sorted(sections)}")
    data.mkdir(parents=True, exist_ok=True)
    (data / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


def start_daemon(data: Path, logdir: Path, *, trace: bool = True,
                 port: int | None = None, tls_port: int | None = None,
                 env: dict[str, str] | None = None) -> Daemon:
    port = port or free_port("both")
    tls_port = tls_port or free_port("tcp")
    argv = [sys.executable, "-m", "appliance", "run", "--data", str(data),
            "--bind", "127.0.0.1", "--sip-port", str(port), "--tls-port", str(tls_port)]
    if trace:
        argv.append("--sip-trace")
    proc = Proc(argv, logdir=logdir, name=f"daemon-{port}-{time.monotonic_ns()}", env=env)
    d = Daemon(proc, data, port, tls_port)
    try:
        wait_until(lambda: "listening on" in d.log() or not proc.alive(), 20,
                   what="daemon start")
        if not proc.alive():
            raise RuntimeError(f"daemon exited:\n{d.log()}")
    except BaseException:
        proc.stop()
        raise
    return d


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator:
    started: list[Daemon] = []

    def make(env: dict[str, str] | None = None, **kw: object) -> Daemon:
        """`daemon_factory(ring_timeout=2)` sets `sip:` keys; the names in SECTIONS
        pass whole sections: `daemon_factory(lines={...}, system={"language": "zh"})`."""
        sections = {k: kw.pop(k) for k in SECTIONS if k in kw}
        data = tmp_path / f"data{len(started)}"
        write_config(data, sections, **kw)
        d = start_daemon(data, tmp_path / "logs", env=env)
        started.append(d)
        exts = yaml.safe_load((data / "config.yaml").read_text())["extensions"]
        d.passwords = {n: e["password"] for n, e in exts.items()}
        return d

    def restart(d: Daemon) -> Daemon:
        """Stop with SIGTERM and start again on the same data and ports."""
        d.proc.stop()
        again = start_daemon(d.data, tmp_path / "logs", port=d.port, tls_port=d.tls_port)
        started.append(again)
        return again

    make.restart = restart  # type: ignore[attr-defined]
    yield make
    for d in started:
        d.proc.stop()


@pytest.fixture
def daemon(daemon_factory) -> Daemon:
    return daemon_factory()
