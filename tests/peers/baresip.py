"""baresip (Debian 12: baresip-core 1.0.0) as a real SIP phone on loopback.

    with Baresip(tmp_path / "alice", aor="sip:100@127.0.0.1", password="pw",
                 transport="udp", server_port=5070) as alice:
        alice.wait_registered(10)
        alice.dial("sip:101@127.0.0.1:5070")
        alice.wait_event("CALL_ESTABLISHED", 10)
        alice.hangup()
        alice.wait_event("CALL_CLOSED", 10)

Control is the ``ctrl_tcp`` module: JSON in netstrings on a loopback TCP
port, commands answered by token and every UA event pushed as
``{"event": true, "type": "CALL_ESTABLISHED", "class": "call",
"accountaor": ..., "direction": ..., "peeruri": ..., "id": ..., "param": ...}``.
Event types of 1.0.0 include REGISTERING, REGISTER_OK, REGISTER_FAIL,
UNREGISTERING, CALL_INCOMING, CALL_RINGING, CALL_PROGRESS, CALL_ESTABLISHED,
CALL_CLOSED (param: the reason, e.g. "486 Busy Here" or "Connection reset by
peer"), CALL_ANSWERED, CALL_TRANSFER, EXIT.

No sound card is touched: audio comes from ``ausine`` (a 440 Hz tone) or
``aufile`` (a WAV file), and goes to ``aubridge`` (a virtual device nobody
reads); ``record_wav`` adds the ``sndfile`` filter, which writes what was
received (decoded) as a WAV file.  baresip's own SIP trace (-s) is in its
stdout, which :meth:`Baresip.describe` returns for assertion messages.

Facts of baresip 1.0.0 this relies on: the TLS listener is the SIP port + 1;
``net_interface`` must be an address (127.0.0.1), not "lo"; ``ausine`` only
runs at 48 kHz stereo (a resampler feeds the 8 kHz codec); the TLS client
does not verify the server certificate (there is no sip_verify_server key
in this version), so a self-signed daemon certificate is accepted.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
import struct
import threading
import time
import wave
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .ports import free_port, free_port_block
from .procs import Proc, wait_until

BARESIP = shutil.which("baresip") or "/usr/bin/baresip"
MODULE_PATH = Path("/usr/lib/baresip/modules")
LOOPBACK = "127.0.0.1"


def baresip_available() -> bool:
    return Path(BARESIP).exists() and MODULE_PATH.is_dir()


def available_modules() -> set[str]:
    return {p.stem for p in MODULE_PATH.glob("*.so")} if MODULE_PATH.is_dir() else set()


def make_tone_wav(path: Path | str, freq: float = 1000.0, seconds: float = 1.0,
                  rate: int = 8000, amplitude: float = 0.5) -> Path:
    """Write a 16-bit mono PCM sine tone (a good ``audio_in_wav``)."""
    path = Path(path)
    n = int(seconds * rate)
    frames = b"".join(
        struct.pack("<h", int(amplitude * 32767 * math.sin(2 * math.pi * freq * i / rate)))
        for i in range(n))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return path


def wav_rms(path: Path | str) -> float:
    """RMS level (0..1) of a 16-bit PCM WAV, to check audio got through."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError("only 16-bit PCM")
        data = w.readframes(w.getnframes())
    n = len(data) // 2
    if n == 0:
        return 0.0
    samples = struct.unpack(f"<{n}h", data[: n * 2])
    return math.sqrt(sum(s * s for s in samples) / n) / 32768.0


@dataclass
class BaresipEvent:
    index: int
    time: float
    data: dict

    @property
    def type(self) -> str:
        return str(self.data.get("type", ""))

    @property
    def param(self) -> str:
        return str(self.data.get("param", ""))

    def __getitem__(self, k: str):
        return self.data.get(k)

    def text(self) -> str:
        return f"{self.type} {json.dumps(self.data, sort_keys=True)}"


class BaresipError(AssertionError):
    pass


class Baresip:
    """One baresip user agent with one account, driven over ctrl_tcp."""

    def __init__(self, tmpdir: Path | str, aor: str = "sip:100@127.0.0.1", *,
                 password: str | None = None, transport: str = "udp",
                 server_port: int | None = None, server_host: str | None = None,
                 audio_in_wav: Path | str | None = None, record_wav: Path | str | None = None,
                 auto_answer: bool = False, register: bool = True, regint: int = 600,
                 auth_user: str | None = None, display_name: str | None = None,
                 use_outbound: bool = False, account_params: str = "",
                 extra_config: Mapping[str, str] | None = None, sip_trace: bool = True,
                 audio_codecs: str = "PCMU,PCMA",
                 name: str | None = None, start: bool = True, start_timeout: float = 10.0) -> None:
        if transport not in ("udp", "tcp", "tls"):
            raise ValueError(f"transport must be udp, tcp or tls, not {transport!r}")
        if not baresip_available():
            raise RuntimeError("baresip is not installed (Debian package baresip-core)")
        m = re.match(r"^sips?:(?:(?P<user>[^@;>]+)@)?(?P<host>\[[^\]]+\]|[^:;>]+)(?::(?P<port>\d+))?", aor)
        if not m:
            raise ValueError(f"bad aor {aor!r}")
        self.user = m.group("user") or "anonymous"
        self.domain = m.group("host")
        self.transport = transport
        self.server_host = server_host or self.domain.strip("[]")
        self.server_port = server_port or (int(m.group("port")) if m.group("port") else None)
        self.password = password
        self.name = name or f"baresip-{self.user}"
        self.dir = Path(tmpdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sip_port = free_port_block(2, "both")  # baresip: TLS listens on SIP port + 1
        self.ctrl_port = free_port("tcp")
        self.record_wav = Path(record_wav) if record_wav else None
        self.record_dir = self.dir / "recordings"
        self.auto_answer = auto_answer

        # -- account ---------------------------------------------------------
        tparam = f";transport={transport}"
        if use_outbound or self.server_port is None:
            uri = f"sip:{self.user}@{self.domain}"
        else:
            uri = f"sip:{self.user}@{self.domain}:{self.server_port}"
        params = []
        if use_outbound and self.server_port:
            params.append(f'outbound="sip:{self.server_host}:{self.server_port}{tparam}"')
        if password is not None:
            params.append(f"auth_pass={password}")
        if auth_user:
            params.append(f"auth_user={auth_user}")
        params.append(f"regint={regint if register and self.server_port else 0}")
        params.append(f"answermode={'auto' if auto_answer else 'manual'}")
        params.append(f"audio_codecs={audio_codecs}")
        self.audio_codecs = audio_codecs
        dn = f'"{display_name}" ' if display_name else ""
        self.account_line = (f"{dn}<{uri}{tparam}>;" + ";".join(params) + account_params)
        self.aor_uri = uri

        # -- audio -----------------------------------------------------------
        if audio_in_wav:
            with wave.open(str(audio_in_wav), "rb") as w:
                srate, chans = w.getframerate(), w.getnchannels()
            source = f"aufile,{Path(audio_in_wav).resolve()}"
        else:
            srate, chans = 48000, 2  # ausine only runs at 48 kHz stereo
            source = "ausine,440"

        self._source, self._srate, self._chans = source, srate, chans
        self._extra_config = dict(extra_config or {})
        self._write_config()

        self.argv = [BARESIP, "-f", str(self.dir)] + (["-s"] if sip_trace else [])
        self.proc: Proc | None = None
        self._sock: socket.socket | None = None
        self._events: list[BaresipEvent] = []
        self._responses: dict[str, dict] = {}
        self._consumed: set[int] = set()
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        self._token = 0
        self._closed = False
        if start:
            self.start(start_timeout)

    def _write_config(self) -> None:
        source, srate, chans, extra_config = (self._source, self._srate, self._chans,
                                              self._extra_config)
        cfg = {
            "poll_method": "epoll",
            "sip_listen": f"{LOOPBACK}:{self.sip_port}",
            "call_local_timeout": "120",
            "call_max_calls": "4",
            "audio_player": "aubridge,nowhere",
            "audio_source": source,
            "audio_alert": "aubridge,nowhere",
            "audio_level": "no",
            "ausrc_srate": str(srate),
            "ausrc_channels": str(chans),
            "ausrc_format": "s16",
            "auplay_format": "s16",
            "auenc_format": "s16",
            "audec_format": "s16",
            "audio_buffer": "20-160",
            "rtp_tos": "0",
            "rtcp_mux": "no",
            "jitter_buffer_delay": "5-10",
            "rtp_stats": "no",
            "net_interface": LOOPBACK,
            # never ask a resolver off this machine
            "dns_server": f"{LOOPBACK}:53",
            "statmode_default": "off",
            "menu_bell": "no",
            "ringback_disabled": "yes",
            "ctrl_tcp_listen": f"{LOOPBACK}:{self.ctrl_port}",
            "module_path": str(MODULE_PATH),
        }
        if self.record_wav:
            self.record_dir.mkdir(exist_ok=True)
            cfg["snd_path"] = str(self.record_dir)
        if extra_config:
            cfg.update(extra_config)
        lines = [f"{k}\t\t{v}" for k, v in cfg.items()]
        modules = ["g711", "aubridge", "ausine", "aufile"]
        codecs = self.audio_codecs.lower()
        modules += [m for m in ("g722", "opus") if m in codecs]
        if self.record_wav:
            modules.append("sndfile")
        lines += [f"module\t\t\t{m}.so" for m in modules]
        lines += ["module_tmp\t\tuuid.so", "module_tmp\t\taccount.so",
                  "module_app\t\tmenu.so", "module_app\t\tctrl_tcp.so"]
        (self.dir / "config").write_text("\n".join(lines) + "\n")
        # The account is created over ctrl_tcp ("uanew") once we listen for
        # events: from the accounts file it would register before we could
        # connect and its REGISTER_OK would be lost.
        (self.dir / "accounts").write_text("")
        (self.dir / "contacts").write_text("")

    # ------------------------------------------------------------------ life
    def start(self, timeout: float = 10.0) -> Baresip:
        for attempt in range(3):
            self.proc = Proc(self.argv, logdir=self.dir, name="baresip", cwd=self.dir)
            self.pid = self.proc.pid
            try:
                self._sock = wait_until(self._try_connect, timeout, interval=0.05,
                                        what=f"baresip ctrl_tcp on port {self.ctrl_port}")
                break
            except (TimeoutError, BaresipError):
                out = self.describe()
                self.proc.stop()
                if "Address already in use" in out and attempt < 2:
                    # a port we picked was taken meanwhile: pick new ones
                    self.sip_port = free_port_block(2, "both")
                    self.ctrl_port = free_port("tcp")
                    self._write_config()
                    continue
                self.stop()
                raise BaresipError(f"baresip did not start\n{out}") from None
        self._sock.settimeout(0.2)
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()
        try:
            self.command("uanew", self.account_line)
        except BaresipError:
            self.stop()
            raise
        return self

    def _try_connect(self):
        if self.proc and not self.proc.alive():
            raise BaresipError(f"baresip exited with {self.proc.returncode}")
        log = self.log()
        if "Address already in use" in log:
            # e.g. ctrl_tcp could not listen: never talk to someone else's port
            raise BaresipError("port in use")
        if "baresip is ready" not in log:
            return None
        try:
            return socket.create_connection((LOOPBACK, self.ctrl_port), timeout=0.5)
        except OSError:
            return None

    def stop(self, grace: float = 3.0) -> int | None:
        """SIGTERM (baresip then hangs up and unregisters), SIGKILL after
        ``grace`` seconds; by pid/process group."""
        self._closed = True
        rc = None
        if self.proc:
            rc = self.proc.stop(grace=grace)
        if self._sock:
            try:
                self._sock.close()
            except OSError:
                pass
        if self._reader:
            self._reader.join(2)
        if self.record_wav:
            self._collect_recording()
        return rc

    close = stop

    def __enter__(self) -> Baresip:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def alive(self) -> bool:
        return bool(self.proc and self.proc.alive())

    # ------------------------------------------------------------ ctrl_tcp
    def _read_loop(self) -> None:
        buf = bytearray()
        while not self._closed:
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            while True:
                colon = buf.find(b":")
                if colon < 0 or not buf[:colon].isdigit():
                    if colon > 10:  # garbage: resync
                        buf.clear()
                    break
                n = int(buf[:colon])
                if len(buf) < colon + 1 + n + 1:
                    break
                payload = bytes(buf[colon + 1: colon + 1 + n])
                del buf[: colon + 1 + n + 1]  # trailing ','
                try:
                    obj = json.loads(payload.decode("utf-8", "replace"))
                except ValueError:
                    continue
                with self._cond:
                    if obj.get("event"):
                        self._events.append(BaresipEvent(len(self._events), time.monotonic(), obj))
                    elif obj.get("response"):
                        self._responses[str(obj.get("token"))] = obj
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def command(self, cmd: str, params: str | None = None, timeout: float = 5.0) -> dict:
        """Run a baresip long command (as typed after '/': dial, accept,
        hangup, reginfo, listcalls, ...). Returns the response dict
        ({"ok": bool, "data": str}); raises BaresipError if not ok."""
        if not self._sock:
            raise BaresipError("baresip is not running")
        self._token += 1
        token = f"t{self._token}"
        data = json.dumps({"command": cmd, "params": params, "token": token}).encode()
        self._sock.sendall(str(len(data)).encode() + b":" + data + b",")
        with self._cond:
            ok = self._cond.wait_for(lambda: token in self._responses or not self.alive(), timeout)
            resp = self._responses.pop(token, None)
        if not ok or resp is None:
            raise BaresipError(f"no answer to {cmd!r} within {timeout}s\n{self.describe()}")
        if not resp.get("ok", False):
            raise BaresipError(f"{cmd} {params or ''} failed: {resp.get('data')}\n{self.describe()}")
        return resp

    # ------------------------------------------------------------- events
    @property
    def events(self) -> list[BaresipEvent]:
        with self._cond:
            return list(self._events)

    def wait_event(self, pattern: str, timeout: float = 10.0, *,
                   fail_on: str | None = None,
                   where: Callable[[BaresipEvent], bool] | None = None,
                   consume: bool = True) -> BaresipEvent:
        """Wait for the next not yet consumed event whose type matches regex
        ``pattern`` (fullmatch on the type, else search in the JSON text).
        ``fail_on``: regex of event types that abort the wait at once
        (e.g. "CALL_CLOSED|REGISTER_FAIL").  Raises BaresipError with the
        events so far and baresip's output on timeout."""
        rx = re.compile(pattern)
        frx = re.compile(fail_on) if fail_on else None

        def find():
            for e in self._events:
                if e.index in self._consumed:
                    continue
                if where and not where(e):
                    continue
                if rx.fullmatch(e.type) or rx.search(e.text()):
                    return e
                if frx and (frx.fullmatch(e.type) or frx.search(e.text())):
                    return ("fail", e)
            return None

        with self._cond:
            deadline = time.monotonic() + timeout
            while True:
                r = find()
                if r is not None:
                    break
                left = deadline - time.monotonic()
                if left <= 0 or (not self.alive() and not r):
                    break
                self._cond.wait(min(left, 0.2))
            if isinstance(r, tuple):
                self._consumed.add(r[1].index)
                raise BaresipError(f"{self.name}: got {r[1].text()} while waiting for {pattern!r}\n"
                                   + self.describe())
            if r is None:
                raise BaresipError(f"{self.name}: no event matching {pattern!r} within {timeout}s"
                                   f" (alive={self.alive()})\n" + self.describe())
            if consume:
                self._consumed.add(r.index)
            return r

    def wait_registered(self, timeout: float = 10.0) -> BaresipEvent:
        return self.wait_event("REGISTER_OK", timeout, fail_on="REGISTER_FAIL")

    def wait_incoming(self, timeout: float = 10.0) -> BaresipEvent:
        return self.wait_event("CALL_INCOMING", timeout)

    def wait_established(self, timeout: float = 10.0) -> BaresipEvent:
        return self.wait_event("CALL_ESTABLISHED", timeout, fail_on="CALL_CLOSED")

    def wait_closed(self, timeout: float = 10.0) -> BaresipEvent:
        return self.wait_event("CALL_CLOSED", timeout)

    # ------------------------------------------------------------ actions
    def dial(self, uri: str) -> dict:
        return self.command("dial", uri)

    def answer(self) -> dict:
        return self.command("accept")

    def hangup(self) -> dict:
        return self.command("hangup")

    def send_dtmf(self, digits: str, gap: float = 0.25) -> None:
        """Press `digits` in the current call: baresip 1.0's ``sndcode`` (menu module)
        sends each as an RFC 4733 telephone-event (it offers telephone-event/8000
        on its own), one digit per command, `gap` seconds apart (a digit's start and
        end packets go out before the next digit starts)."""
        for digit in digits:
            self.command("sndcode", digit)
            time.sleep(gap)

    def reginfo(self) -> str:
        return str(self.command("reginfo").get("data", ""))

    def list_calls(self) -> str:
        return str(self.command("listcalls").get("data", ""))

    # ------------------------------------------------------------ output
    def log(self) -> str:
        return self.proc.stdout() + self.proc.stderr() if self.proc else ""

    def describe(self, limit: int = 30000) -> str:
        evs = "\n".join(e.text() for e in self._events) or "(none)"
        out = self.log()
        if len(out) > limit:
            out = "...(truncated)...\n" + out[-limit:]
        rc = self.proc.returncode if self.proc else None
        return (f"---- {self.name} (pid {self.proc.pid if self.proc else '-'}, rc {rc}, "
                f"sip port {self.sip_port}, dir {self.dir}) ----\n"
                f"account: {self.account_line}\n"
                f"events:\n{evs}\n---- baresip output (with -s SIP trace) ----\n{out}")

    def recordings(self) -> list[Path]:
        """WAV files written by sndfile ("...-dec.wav" is what was received)."""
        return sorted(self.record_dir.glob("*.wav")) if self.record_dir.exists() else []

    def _collect_recording(self) -> None:
        dec = [p for p in self.recordings() if p.name.endswith("-dec.wav")]
        if dec and self.record_wav:
            shutil.copyfile(dec[-1], self.record_wav)


def stop_all(agents: Iterable[Baresip]) -> None:
    for a in agents:
        try:
            a.stop()
        except Exception:  # noqa: BLE001 - cleanup must go on
            pass


__all__ = ["Baresip", "BaresipEvent", "BaresipError", "baresip_available",
           "available_modules", "make_tone_wav", "wav_rms", "stop_all"]
