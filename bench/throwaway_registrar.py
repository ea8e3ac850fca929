"""Issue 3's yardstick: a throwaway asyncio + uvloop responder that only answers REGISTER.

    python bench/throwaway_registrar.py PORT PASSWORDS.json

It challenges a REGISTER without credentials (401, MD5, qop=auth, a nonce carrying its own
keyed BLAKE2b MAC), checks the answer (the nonce's MAC and age, the nonce count, the
digest), keeps one binding per extension and answers 200 listing it; OPTIONS gets a 200 (the
bench's start-up probe). Nothing else of SIP: no validation beyond the lines it reads, no
transactions (a retransmitted REGISTER is challenged or answered again), no Date, no logs.
bench/run.py runs it through the same registrations ladder as the servers: the distance
between its CPU per registration and the daemon's is what the daemon's design costs.
Not part of the product; never use it for anything but this measurement.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import socket
import sys
import time
from typing import Any

REALM = "bench"
NONCE_TTL = 300
_KEY = os.urandom(16)
_PARAM = re.compile(r'([A-Za-z]+)=(?:"([^"]*)"|([^,\s]+))')
_COPIED = ("via", "from", "call-id", "cseq")


class Registrar(asyncio.DatagramProtocol):
    def __init__(self, passwords: dict[str, str]) -> None:
        self.passwords = passwords
        self.bindings: dict[str, tuple[str, float]] = {}
        self.counts: dict[str, int] = {}   # nonce -> last nonce count (grows without bound)
        self.issued = 0
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport  # uvloop's is not an asyncio.DatagramTransport

    def _nonce(self) -> str:
        self.issued += 1
        body = f"{int(time.time()):x}.{self.issued:x}"
        return body + "." + hashlib.blake2b(body.encode(), key=_KEY, digest_size=8).hexdigest()

    def _nonce_ok(self, nonce: str) -> bool:
        body, _, mac = nonce.rpartition(".")
        good = hashlib.blake2b(body.encode(), key=_KEY, digest_size=8).hexdigest()
        return hmac.compare_digest(good, mac) and \
            time.time() - int(body.split(".")[0], 16) <= NONCE_TTL

    def _checked(self, authorization: str) -> str | None:
        """The extension whose credentials these are, if they are right."""
        p = {m[0].lower(): m[1] or m[2] for m in _PARAM.findall(authorization)}
        user = p.get("username", "")
        password = self.passwords.get(user)
        nonce = p.get("nonce", "")
        if password is None or p.get("qop") != "auth" or not self._nonce_ok(nonce):
            return None
        try:
            nc = int(p["nc"], 16)
            ha1 = hashlib.md5(f"{user}:{REALM}:{password}".encode()).hexdigest()
            ha2 = hashlib.md5(f"REGISTER:{p['uri']}".encode()).hexdigest()
            want = hashlib.md5(
                f"{ha1}:{nonce}:{p['nc']}:{p['cnonce']}:auth:{ha2}".encode()).hexdigest()
        except (KeyError, ValueError):
            return None
        if not hmac.compare_digest(want, p.get("response", "")) or \
                nc <= self.counts.get(nonce, 0):
            return None
        self.counts[nonce] = nc
        return user

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        lines = data.split(b"\r\n\r\n", 1)[0].decode(errors="replace").split("\r\n")
        method = lines[0].split(" ", 1)[0]
        headers: dict[str, str] = {}
        copied: list[str] = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            headers[name] = value.strip()
            if name in _COPIED:
                copied.append(line)
        to = headers.get("to", "")
        if method == "OPTIONS":
            out = ["SIP/2.0 200 OK", *copied, f"To: {to};tag=tw"]
        elif method != "REGISTER":
            return
        else:
            auth = headers.get("authorization")
            user = self._checked(auth) if auth else None
            if user is None:
                out = ["SIP/2.0 401 Unauthorized", *copied, f"To: {to};tag=tw",
                       f'WWW-Authenticate: Digest realm="{REALM}", nonce="{self._nonce()}", '
                       'qop="auth", algorithm=MD5']
            else:
                contact = headers.get("contact", "").strip("<>")
                self.bindings[user] = (contact, time.time() + 3600)
                out = ["SIP/2.0 200 OK", *copied, f"To: {to};tag=tw",
                       f"Contact: <{contact}>;expires=3600"]
        self.transport.sendto(("\r\n".join(out) + "\r\nContent-Length: 0\r\n\r\n").encode(),
                              addr)


async def serve(port: int, passwords: dict[str, str]) -> None:
    loop = asyncio.get_running_loop()
    # the 4 MB receive buffer the daemon asks for (and Kamailio gets, bench/kamailio.cfg)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", port))
    await loop.create_datagram_endpoint(lambda: Registrar(passwords), sock=sock)
    await asyncio.Event().wait()


def main() -> None:
    port, path = int(sys.argv[1]), sys.argv[2]
    with open(path) as f:
        passwords = json.load(f)
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(port, passwords))


if __name__ == "__main__":
    main()
