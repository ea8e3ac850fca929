"""TCP -> TLS shim so that Debian's SIPp (built without OpenSSL) can talk TLS.

SIPp runs with ``-t t1`` against the shim's plain TCP port; every accepted
connection is relayed byte-for-byte over a new TLS connection to the real
server (certificate not verified).  The SIP messages themselves are written by
the scenarios with ``Via: SIP/2.0/TLS`` and ``;transport=tls`` (keys
``via_transport`` / ``uri_transport``), so the server sees a genuine TLS
client.  Limitation: the server must answer and send its requests back on the
connection the client opened (RFC 3261 18.2.2 responses; for requests to a
registered contact: connection reuse as every PBX does for TLS); a new
connection opened by the server towards SIPp's Contact would not be TLS.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading

from .ports import free_port
from .rawsip import client_tls_context


class TlsShim:
    def __init__(self, remote: tuple[str, int], *, host: str = "127.0.0.1",
                 port: int | None = None) -> None:
        self.remote = (remote[0], int(remote[1]))
        self.host = host
        self.port = port or free_port("tcp", host)
        self._ctx: ssl.SSLContext = client_tls_context()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self.connections = 0
        self.errors: list[str] = []

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> TlsShim:
        ls = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET,
                           socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((self.host, self.port))
        ls.listen(8)
        ls.settimeout(0.2)
        self._ls = ls
        self._socks.append(ls)
        self._spawn(self._accept_loop)
        return self

    def _spawn(self, fn, *args) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        t.start()
        self._threads.append(t)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                c, _ = self._ls.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                raw = socket.create_connection(self.remote, timeout=5)
                t = self._ctx.wrap_socket(raw, server_hostname=None)
            except (OSError, ssl.SSLError) as e:
                self.errors.append(f"connect to {self.remote}: {e!r}")
                c.close()
                continue
            self.connections += 1
            self._socks += [c, t]
            self._spawn(self._relay, c, t)

    def _relay(self, c: socket.socket, t: ssl.SSLSocket) -> None:
        """One thread per connection pair, so the SSL object is never shared."""
        c.settimeout(5)
        t.settimeout(5)
        try:
            while not self._stop.is_set():
                if t.pending():
                    ready = [t]
                else:
                    ready, _, _ = select.select([c, t], [], [], 0.2)
                for s in ready:
                    # the TLS socket can be readable with no application
                    # data (TLS 1.3 session tickets): read it non-blocking
                    s.setblocking(False)
                    try:
                        data = s.recv(65535)
                    except (ssl.SSLWantReadError, BlockingIOError):
                        continue
                    finally:
                        s.settimeout(5)
                    if not data:
                        return
                    (t if s is c else c).sendall(data)
        except (OSError, ssl.SSLError, ValueError) as e:
            if not self._stop.is_set():
                self.errors.append(f"relay: {e!r}")
        finally:
            for s in (c, t):
                try:
                    s.close()
                except OSError:
                    pass

    def stop(self) -> None:
        self._stop.set()
        for s in self._socks:
            try:
                s.close()
            except OSError:
                pass
        for t in self._threads:
            t.join(2)

    def __enter__(self) -> TlsShim:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
