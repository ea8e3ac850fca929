"""Run SIPp (Debian's ``sip-tester`` 3.6.1) scenarios against a server on loopback.

Foreground::

    res = run_sipp(scenario("register_digest"), "127.0.0.1:5070", transport="u1",
                   keys={"user": "100", "password": "pw"})
    res.check()                    # AssertionError with the full trace on failure

Background (a callee that registers and then answers calls)::

    with start_uas("uas_callee", "127.0.0.1:5070", keys={"user": "101", ...}) as callee:
        callee.wait_registered(10)
        run_sipp(scenario("uac_call"), ...).check()
        callee.wait(10).check()

Transports: ``u1`` (UDP), ``t1`` (TCP), ``l1`` (TLS).  Debian's SIPp is built
without OpenSSL, so for ``l1`` SIPp runs over TCP into a local
:class:`~tests.peers.tlsproxy.TlsShim` that carries the bytes over TLS to the
server (certificate not verified), while the scenarios write ``TLS`` in Via
and ``;transport=tls`` in URIs.  A SIPp built with TLS is used natively.

Keys every run gets (scenarios must use these instead of [transport],
[remote_ip] and [remote_port], which would name the shim for TLS):

* ``server``        - "host:port" of the server under test
* ``domain``        - defaults to ``server``
* ``via_transport`` - UDP / TCP / TLS
* ``uri_transport`` - "" / ";transport=tcp" / ";transport=tls"

Every process is started in its own process group and killed by pid.
"""

from __future__ import annotations

import csv
import functools
import io
import itertools
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .ports import free_port, free_port_block
from .procs import Proc, wait_until
from .rawsip import SipMessage, parse_message
from .tlsproxy import TlsShim

SIPP = shutil.which("sipp") or "/usr/bin/sipp"
SCENARIO_DIR = Path(__file__).resolve().parent.parent / "sipp"
LOOPBACK = "127.0.0.1"

_TRANSPORTS = {
    "u1": ("UDP", ""),
    "t1": ("TCP", ";transport=tcp"),
    "l1": ("TLS", ";transport=tls"),
}
_counter = itertools.count(1)


def scenario(name: str) -> Path:
    """Path of a scenario in tests/sipp/ (".xml" optional)."""
    p = SCENARIO_DIR / (name if name.endswith(".xml") else name + ".xml")
    if not p.exists():
        raise FileNotFoundError(p)
    return p


@functools.lru_cache(maxsize=1)
def _sipp_v() -> str:
    try:
        out = subprocess.run([SIPP, "-v"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    m = re.search(r"SIPp v?(\S+)", out)
    return m.group(1).rstrip(".") if m else ""


def sipp_version() -> str:
    """"3.6.1" for Debian 12 (from "SIPp v3.6.1-SCTP-PCAP-RTPSTREAM.")."""
    return _sipp_v().split("-")[0]


def sipp_features() -> set[str]:
    """Build features from the version banner, e.g. {"SCTP", "PCAP", "RTPSTREAM"};
    a build with OpenSSL has "TLS"."""
    return set(_sipp_v().upper().split("-")[1:])


def sipp_available() -> bool:
    return bool(shutil.which("sipp")) and bool(sipp_version())


def sipp_has_tls() -> bool:
    """True if this SIPp was built with OpenSSL/wolfSSL (Debian 12's is not)."""
    return "TLS" in sipp_features()


# ---------------------------------------------------------------------------
# trace parsing
# ---------------------------------------------------------------------------
@dataclass
class TraceEntry:
    direction: str  # "sent" / "received"
    transport: str
    timestamp: str
    text: str

    @functools.cached_property
    def msg(self) -> SipMessage:
        return parse_message(self.text.encode())


_TRACE_HDR = re.compile(
    r"^-{20,} (?P<ts>[^\n]*)\n(?P<tp>\w+) (?:control )?message "
    r"(?P<dir>sent|received) *[\[(](?P<len>\d+)[\])]? *(?:bytes)?[^\n]*:\n\n", re.M)


def parse_trace(text: str) -> list[TraceEntry]:
    """Split a ``-trace_msg`` log into messages.  Lines are normalised to CRLF
    in ``entry.msg.raw`` only as SIPp wrote them (SIPp logs the exact bytes)."""
    out = []
    heads = list(_TRACE_HDR.finditer(text))
    for i, m in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        body = text[m.end():end]
        n = int(m.group("len"))
        if len(body.encode("utf-8", "replace")) >= n and body.isascii():
            body = body[:n]  # exactly the bytes SIPp sent/received
        elif body.endswith("\n"):
            body = body[:-1]  # SIPp writes one "\n" after each message
        if not re.match(r"[A-Z]+ \S+ SIP/2\.0|SIP/2\.0 \d{3}", body):
            continue  # "Discarded message..." and similar notes
        out.append(TraceEntry(m.group("dir"), m.group("tp"), m.group("ts").strip(), body))
    return out


def _read(p: Path | None) -> str:
    if p is None:
        return ""
    try:
        return p.read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def _parse_stats(text: str) -> dict[str, str]:
    rows = list(csv.reader(io.StringIO(text), delimiter=";"))
    rows = [r for r in rows if r]
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False))


def _screen_counter(stdout: str, label: str) -> int | None:
    # final screen: "  Successful call        |        0                  |        1"
    vals = re.findall(rf"{label}\s*\|\s*(\d+)\s*\|\s*(\d+)", stdout)
    return int(vals[-1][1]) if vals else None


# ---------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------
@dataclass
class SippResult:
    cmd: list[str]
    returncode: int | None  # None: killed by the harness after the hard timeout
    stdout: str
    stderr: str
    messages: str  # -trace_msg contents
    logs: str  # <log> actions (-trace_logs)
    errors: str  # -trace_err contents (unexpected messages)
    stats: dict[str, str] = field(default_factory=dict)
    workdir: Path | None = None
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def _stat(self, name: str, screen_label: str) -> int | None:
        v = self.stats.get(name)
        if v not in (None, ""):
            try:
                return int(float(v))
            except ValueError:
                pass
        return _screen_counter(self.stdout, screen_label)

    @property
    def successful(self) -> int | None:
        return self._stat("SuccessfulCall(C)", "Successful call")

    @property
    def failed(self) -> int | None:
        return self._stat("FailedCall(C)", "Failed call")

    # -- message access ----------------------------------------------------
    @functools.cached_property
    def trace(self) -> list[TraceEntry]:
        return parse_trace(self.messages)

    def received(self, *, status: int | None = None, method: str | None = None,
                 cseq_method: str | None = None) -> list[SipMessage]:
        """Received messages filtered by response ``status``, request ``method``
        or ``cseq_method`` (the method in CSeq, for responses)."""
        return _filter([e.msg for e in self.trace if e.direction == "received"],
                       status, method, cseq_method)

    def sent(self, *, status: int | None = None, method: str | None = None,
             cseq_method: str | None = None) -> list[SipMessage]:
        return _filter([e.msg for e in self.trace if e.direction == "sent"],
                       status, method, cseq_method)

    def last_response(self, cseq_method: str | None = None) -> SipMessage | None:
        rs = [m for m in self.received(cseq_method=cseq_method) if m.is_response]
        return rs[-1] if rs else None

    def final_responses(self, cseq_method: str | None = None) -> list[SipMessage]:
        return [m for m in self.received(cseq_method=cseq_method)
                if m.is_response and (m.status or 0) >= 200]

    def log_values(self) -> dict[str, str]:
        """``<log message="NAME=VALUE"/>`` lines of the scenario as a dict."""
        out = {}
        for line in self.logs.splitlines():
            m = re.match(r"^([A-Za-z_][\w.-]*)=(.*)$", line.strip())
            if m:
                out[m.group(1)] = m.group(2)
        return out

    def describe(self, limit: int = 60000) -> str:
        parts = [
            f"SIPp command: {' '.join(self.cmd)}",
            f"return code: {self.returncode} {_RC_MEANING.get(self.returncode, '')} {self.note}".rstrip(),
            f"successful calls: {self.successful}  failed calls: {self.failed}",
        ]
        if self.workdir:
            parts.append(f"workdir: {self.workdir}")
        if self.stderr.strip():
            parts.append("---- stderr ----\n" + self.stderr.strip()[-8000:])
        if self.errors.strip():
            parts.append("---- unexpected messages (-trace_err) ----\n" + self.errors.strip()[-8000:])
        if self.logs.strip():
            parts.append("---- scenario <log> output ----\n" + self.logs.strip()[-8000:])
        msgs = self.messages.strip()
        if len(msgs) > limit:
            msgs = "...(truncated)...\n" + msgs[-limit:]
        parts.append("---- message trace ----\n" + (msgs or "(no messages)"))
        return "\n".join(parts)

    def check(self, expect_rc: int = 0) -> SippResult:
        """Assert the exit code (0 = every call succeeded); the assertion text
        contains the whole message trace."""
        if self.returncode != expect_rc:
            raise AssertionError(
                f"SIPp exit code {self.returncode}, expected {expect_rc}\n" + self.describe())
        return self

    def __str__(self) -> str:
        return self.describe()


_RC_MEANING = {
    0: "(all calls successful)", 1: "(at least one call failed)",
    97: "(exit on internal command)", 99: "(normal exit without calls processed)",
    255: "(fatal error, e.g. -timeout reached with -timeout_error)",
    254: "(fatal error binding a socket)", None: "(killed by the test harness)",
}


def _filter(msgs: list[SipMessage], status, method, cseq_method) -> list[SipMessage]:
    out = []
    for m in msgs:
        if status is not None and m.status != status:
            continue
        if method is not None and m.method != method:
            continue
        if cseq_method is not None and m.cseq_method != cseq_method:
            continue
        out.append(m)
    return out


# ---------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------
def _split_remote(remote: str) -> tuple[str, int]:
    """"host:port", "[v6]:port" or a bare host (port 5060)."""
    if remote.startswith("["):
        host, _, rest = remote[1:].partition("]")
        return host, int(rest.lstrip(":") or 5060)
    if remote.count(":") == 1:
        host, port = remote.split(":")
        return host, int(port)
    return remote, 5060


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# Values for the knobs the scenarios in tests/sipp use; identities (user,
# password, callee, ...) have no default and must be given by the test.
DEFAULT_KEYS = {
    "expires": "3600",
    "hold_ms": "500",
    "ring_ms": "300",
    "answer_ms": "100",
    "calls": "1",
    "unregister": "yes",
    "unreg_mode": "contact",
}


class SippProcess:
    """A SIPp instance running in the background.  Use as a context manager
    (stops it on exit) or call :meth:`wait` / :meth:`stop`."""

    def __init__(self, scenario_path: Path | str | None, remote: str, *,
                 transport: str = "u1", local_port: int | None = None,
                 service: str | None = None, inf_csv: Path | str | Sequence[Path | str] | None = None,
                 keys: Mapping[str, object] | None = None, extra_args: Iterable[str] = (),
                 max_calls: int | None = 1, rate: float | None = None, timeout: float = 30,
                 trace: bool = True, ooc_scenario: Path | str | None = None,
                 builtin: str | None = None, workdir: Path | str | None = None,
                 name: str | None = None, local_ip: str = LOOPBACK,
                 auth_uri: str | None = None) -> None:
        if transport not in _TRANSPORTS:
            raise ValueError(f"transport must be u1, t1 or l1, not {transport!r}")
        if not sipp_available():
            raise RuntimeError("sipp is not installed (Debian package sip-tester)")
        self.transport = transport
        self.remote = remote
        self.timeout = timeout
        self.local_ip = local_ip
        self.local_port = local_port or free_port("both", local_ip)
        # without a workdir the files go to a temporary directory that is
        # removed again when the run succeeded (kept for a failed run)
        self._own_dir = workdir is None
        base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="sipp-"))
        self._base = base
        stem = name or (Path(scenario_path).stem if scenario_path else builtin or "sipp")
        self.workdir = base / f"{stem}-{next(_counter)}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.files = {k: self.workdir / f"{stem}.{k}" for k in
                      ("messages", "logs", "errors", "stats", "screen")}
        self.shim: TlsShim | None = None

        host, port = _split_remote(remote)
        via_tp, uri_tp = _TRANSPORTS[transport]
        sipp_tp = transport
        connect_to = f"{host}:{port}"
        if transport == "l1" and not sipp_has_tls():
            self.shim = TlsShim((host, port)).start()
            connect_to = self.shim.address
            sipp_tp = "t1"
        all_keys: dict[str, str] = dict(DEFAULT_KEYS)
        all_keys.update({
            "server": _hostport(host, port),
            "domain": _hostport(host, port),
            "via_transport": via_tp,
            "uri_transport": uri_tp,
        })
        for k, v in (keys or {}).items():
            all_keys[k] = str(v)
        # SIPp puts "sip:" + remote ip:port (the shim, for TLS) in the digest
        # uri; make it the Request-URI of our scenarios instead.
        if auth_uri is None:
            auth_uri = (f"{all_keys['callee']}@{all_keys['domain']}" if "callee" in all_keys
                        else all_keys["domain"])

        media = free_port_block(4, "udp", local_ip)
        cmd = [SIPP, connect_to]
        if builtin:
            cmd += ["-sn", builtin]
        if scenario_path:
            cmd += ["-sf", str(scenario_path)]
        if ooc_scenario:
            cmd += ["-oocsf", str(ooc_scenario)]
        # [authentication] in the scenarios takes its credentials from -au/-ap
        # (keys nested inside [authentication ...] are not expanded by SIPp 3.6)
        if "user" in all_keys or "auth_user" in all_keys:
            cmd += ["-au", all_keys.get("auth_user", all_keys.get("user", ""))]
        if "password" in all_keys:
            cmd += ["-ap", all_keys["password"]]
        cmd += [
            "-auth_uri", auth_uri,
            "-t", sipp_tp,
            "-i", local_ip, "-bind_local",
            "-p", str(self.local_port),
            "-mi", local_ip, "-mp", str(media),
            "-ci", local_ip, "-cp", str(free_port("udp", local_ip)),
            "-nostdin",
            "-timeout", f"{timeout:g}s", "-timeout_error",
            "-trace_stat", "-stf", str(self.files["stats"]),
            "-trace_screen", "-screen_file", str(self.files["screen"]),
            "-trace_logs", "-log_file", str(self.files["logs"]),
            "-trace_err", "-error_file", str(self.files["errors"]),
        ]
        if trace:
            cmd += ["-trace_msg", "-message_file", str(self.files["messages"])]
        if transport == "l1" and sipp_has_tls():
            from .certs import make_self_signed
            crt, key = make_self_signed(self.workdir, "sipp")
            cmd += ["-tls_cert", str(crt), "-tls_key", str(key)]
        if max_calls is not None:
            cmd += ["-m", str(max_calls)]
        if rate is not None:
            cmd += ["-r", f"{rate:g}"]
        if service is not None:
            cmd += ["-s", service]
        if inf_csv is not None:
            infs = [inf_csv] if isinstance(inf_csv, (str, Path)) else list(inf_csv)
            for f in infs:
                cmd += ["-inf", str(f)]
        for k, v in all_keys.items():
            cmd += ["-key", k, v]
        cmd += [str(a) for a in extra_args]
        self.cmd = cmd
        self.keys = all_keys
        self._result: SippResult | None = None
        try:
            self.proc = Proc(cmd, logdir=self.workdir, name=stem, cwd=self.workdir,
                             env={"TERM": "dumb", "COLUMNS": "200", "LINES": "60"})
        except BaseException:
            if self.shim:
                self.shim.stop()
            raise
        self.pid = self.proc.pid
        self._started = time.monotonic()

    # -- inspection while running -------------------------------------------
    def messages(self) -> str:
        """Current contents of the message trace."""
        return _read(self.files["messages"])

    def trace(self) -> list[TraceEntry]:
        return parse_trace(self.messages())

    def alive(self) -> bool:
        return self.proc.alive()

    def wait_for(self, pattern: str, timeout: float = 10.0, *, direction: str | None = None) -> TraceEntry:
        """Wait until a traced message matches regex ``pattern`` (searched in
        the whole message text; ``direction`` "sent"/"received" to restrict).
        Raises AssertionError with the trace (and SIPp's state) on timeout."""
        rx = re.compile(pattern, re.M)

        def found():
            for e in self.trace():
                if (direction is None or e.direction == direction) and rx.search(e.text):
                    return e
            if not self.alive():
                return "dead"
            return None

        try:
            r = wait_until(found, timeout, what=pattern)
        except TimeoutError:
            raise AssertionError(f"no SIPp message matching {pattern!r} within {timeout}s\n"
                                 + self.snapshot().describe()) from None
        if r == "dead":
            # one last look: the file may have been completed at exit
            for e in self.trace():
                if (direction is None or e.direction == direction) and rx.search(e.text):
                    return e
            raise AssertionError(f"SIPp exited before a message matching {pattern!r}\n"
                                 + self.wait(1).describe())
        return r

    def wait_registered(self, timeout: float = 10.0) -> SipMessage:
        """Wait for a 200 response to REGISTER (scenarios that register first)."""
        return self.wait_for(r"\ASIP/2\.0 200 .*(?s:.*)^CSeq:\s*\d+\s+REGISTER",
                             timeout, direction="received").msg

    def snapshot(self) -> SippResult:
        return self._collect(self.proc.returncode, note="(still running)" if self.alive() else "")

    # -- ending -------------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> SippResult:
        """Wait for SIPp to end by itself (default: its -timeout plus 10 s);
        if it does not, kill it and return a result with returncode None."""
        if self._result is not None:
            return self._result
        if timeout is None:
            timeout = max(1.0, self.timeout + 10 - (time.monotonic() - self._started))
        rc = self.proc.wait(timeout)
        note = ""
        if rc is None:
            self.proc.stop(grace=2)
            rc, note = None, f"(did not exit within {timeout:g}s; killed)"
        return self._finish(rc, note)

    def stop(self, grace: float = 5.0) -> SippResult:
        """Ask SIPp to finish (SIGUSR1: soft quit, ongoing calls end), then
        SIGTERM/SIGKILL the process group.  Returns the result."""
        if self._result is not None:
            return self._result
        note = ""
        rc = self.proc.returncode
        if rc is None:
            self.proc.signal(signal.SIGUSR1)
            rc = self.proc.wait(grace)
            if rc is None:
                self.proc.stop(grace=2)
                rc, note = None, "(stopped by the test harness)"
        else:
            self.proc.stop()
        return self._finish(rc, note)

    def _finish(self, rc: int | None, note: str) -> SippResult:
        self.proc.stop()  # reap, close files, kill stragglers in the group
        if self.shim:
            self.shim.stop()
        self._result = self._collect(rc, note)
        if self._own_dir and rc == 0:
            shutil.rmtree(self._base, ignore_errors=True)
            self._result.workdir = None
        return self._result

    def _collect(self, rc: int | None, note: str = "") -> SippResult:
        stdout = self.proc.stdout()
        screen = _read(self.files["screen"])
        return SippResult(
            cmd=self.cmd, returncode=rc, stdout=screen or stdout, stderr=self.proc.stderr(),
            messages=self.messages(), logs=_read(self.files["logs"]),
            errors=_read(self.files["errors"]), stats=_parse_stats(_read(self.files["stats"])),
            workdir=self.workdir, note=note)

    def __enter__(self) -> SippProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop(grace=2)


def start_sipp(scenario_path: Path | str | None, remote: str, **kw) -> SippProcess:
    """Start SIPp in the background; same arguments as :func:`run_sipp`."""
    return SippProcess(scenario_path, remote, **kw)


def run_sipp(scenario_path: Path | str | None, remote: str, *, transport: str = "u1",
             local_port: int | None = None, service: str | None = None,
             inf_csv: Path | str | Sequence[Path | str] | None = None,
             extra_args: Iterable[str] = (), max_calls: int | None = 1,
             rate: float | None = None, timeout: float = 30, trace: bool = True,
             keys: Mapping[str, object] | None = None, ooc_scenario: Path | str | None = None,
             builtin: str | None = None, workdir: Path | str | None = None,
             auth_uri: str | None = None) -> SippResult:
    """Run SIPp to completion and return a :class:`SippResult` (never raises
    for a failed scenario: call ``.check()``).  ``timeout`` is SIPp's global
    ``-timeout`` (it then exits with an error); the harness kills it 10 s later
    if it is still alive."""
    for attempt in range(3):
        p = SippProcess(scenario_path, remote, transport=transport, local_port=local_port,
                        service=service, inf_csv=inf_csv, keys=keys, extra_args=extra_args,
                        max_calls=max_calls, rate=rate, timeout=timeout, trace=trace,
                        ooc_scenario=ooc_scenario, builtin=builtin, workdir=workdir,
                        auth_uri=auth_uri)
        try:
            res = p.wait()
        finally:
            p.stop(grace=1)
        # a port we picked was taken in the meantime: pick again
        if (res.returncode in (254, 255) and "Unable to bind" in res.stderr
                and local_port is None and attempt < 2):
            continue
        return res
    return res  # pragma: no cover


# ---------------------------------------------------------------------------
# UAS roles: register, then act as callee (out-of-call scenario)
# ---------------------------------------------------------------------------
UAS_ROLES = ("uas_callee", "uas_busy", "uas_ring_forever")


def start_uas(role: str, remote: str, *, keys: Mapping[str, object] | None = None,
              calls: int = 1, **kw) -> SippProcess:
    """Start a background SIPp that REGISTERs (digest) with ``register_wait.xml``
    and answers incoming calls with the out-of-call scenario ``role``
    (uas_callee / uas_busy / uas_ring_forever or any file in tests/sipp).

    It keeps the registration until ``calls`` incoming calls have completed
    their role scenario, then unregisters and exits 0.  Keys needed: user,
    password (plus whatever the role uses)."""
    k = {"calls": calls, "unregister": "yes"}
    k.update(keys or {})
    kw.setdefault("max_calls", 1)
    return SippProcess(scenario("register_wait"), remote, keys=k,
                       ooc_scenario=scenario(role), name=role, **kw)


__all__ = [
    "run_sipp", "start_sipp", "start_uas", "scenario", "SippResult", "SippProcess",
    "TraceEntry", "parse_trace", "sipp_version", "sipp_features", "sipp_has_tls",
    "sipp_available",
    "SCENARIO_DIR", "UAS_ROLES",
]
