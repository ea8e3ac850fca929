"""The daemon as an operator meets it: systemd, restarts, live config edits, TLS, NAT."""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import sys
import threading
import warnings

import pytest

from tests.peers import rawsip
from tests.peers.certs import make_self_signed
from tests.peers.procs import wait_until
from tests.peers.sipp import scenario, start_sipp

pytestmark = pytest.mark.integration


def _register(daemon, user: str, password: str, transport: str = "udp",
              client: rawsip.SipClient | None = None) -> rawsip.RegisterResult:
    port = daemon.tls_port if transport == "tls" else daemon.port
    c = client or rawsip.SipClient(transport, ("127.0.0.1", port))
    try:
        return rawsip.register(c, user=user, password=password, domain="127.0.0.1",
                               algorithm="MD5", expires=300)
    finally:
        if client is None:
            c.close()


def test_systemd_ready_and_watchdog(daemon_factory, tmp_path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(10)
        daemon_factory(env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "400000"})
        got: list[str] = []
        while not ({"READY=1", "WATCHDOG=1"} <= set(got)):
            got += sock.recv(4096).decode().split("\n")
        assert "READY=1" in got and "WATCHDOG=1" in got
        # The watchdog keeps being fed, not just once.
        pings = 0
        while pings < 3:
            pings += sock.recv(4096).decode().split("\n").count("WATCHDOG=1")


def test_registrations_survive_a_restart(daemon_factory) -> None:
    daemon = daemon_factory()
    with rawsip.SipClient("udp", ("127.0.0.1", daemon.port)) as phone:
        assert _register(daemon, "101", daemon.passwords["101"], client=phone).status == 200
        wait_until(lambda: (daemon.data / "registrations.json").exists(), 5,
                   what="registrations.json")
        daemon = daemon_factory.restart(daemon)
        assert "1 registrations restored" in daemon.log()

        caller = start_sipp(scenario("uac_expect_status"), daemon.remote("udp"),
                            keys={"user": "100", "password": daemon.passwords["100"],
                                  "callee": "101", "expect_status": 486})
        try:
            invite = phone.recv(10)
            assert invite is not None and invite.method == "INVITE"
            busy = rawsip.reply(invite, 486, "Busy Here")
            phone.send(busy)
            caller.wait(20).check()
        finally:
            caller.stop()


def test_a_register_replayed_after_a_restart_is_challenged_again(daemon_factory) -> None:
    """The nonce key survives a restart, the nonce counts do not: the exact REGISTER the
    old process accepted (nc=00000001), sent again to the new one, gets a 401 with
    stale=true (RFC 2617 §3.2.2 replay protection), not a 200."""
    daemon = daemon_factory()
    with rawsip.SipClient("udp", ("127.0.0.1", daemon.port)) as phone:
        first = rawsip.register(phone, user="101", password=daemon.passwords["101"],
                                domain="127.0.0.1", algorithm="MD5")
        assert first.status == 200, first.transcript()
        accepted = first.exchanges[-1][0]  # the REGISTER with credentials
        assert b"\r\nAuthorization: Digest " in accepted and b"nc=00000001" in accepted
        daemon = daemon_factory.restart(daemon)
        phone.send(accepted)
        again = phone.recv_final(cseq_method="REGISTER", timeout=5)
    assert again is not None and again.status == 401, again
    assert re.search(r"\bstale=true\b", again.header("www-authenticate"), re.I), again


def _cli(daemon, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance", *args, "--data", str(daemon.data)],
                          capture_output=True, text=True, timeout=30)


def test_extension_edits_reach_the_running_daemon(daemon) -> None:
    assert _register(daemon, "104", "pw-104-secret").status == 401
    r = _cli(daemon, "extension", "add", "104", "--password", "pw-104-secret", "--name", "Lab")
    assert r.returncode == 0, r.stderr
    daemon.wait_log("reloaded", 5)
    assert _register(daemon, "104", "pw-104-secret").status == 200
    assert "104" in _cli(daemon, "extension", "list").stdout

    r = _cli(daemon, "extension", "remove", "104")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: _register(daemon, "104", "pw-104-secret").status == 401, 5,
               what="104 refused after removal")


def test_invalid_config_edit_keeps_the_running_configuration(daemon) -> None:
    path = daemon.data / "config.yaml"
    broken = path.read_text().replace("udp_port", "udp_prot", 1)
    if "udp_prot" not in broken:
        broken = path.read_text() + "sip_typo: 1\n"
    path.write_text(broken)
    daemon.wait_log("invalid, keeping the running one", 5)
    assert "line " in daemon.log().split("invalid, keeping the running one", 1)[1]
    # Still serving the last good configuration, and the file was left as the user wrote it.
    assert _register(daemon, "100", daemon.passwords["100"]).status == 200
    assert path.read_text() == broken
    assert daemon.proc.alive()


def test_tls_13_preferred_and_old_versions_refused(daemon, tmp_path) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", daemon.tls_port), timeout=5) as raw:
        with ctx.wrap_socket(raw) as tls:
            assert tls.version() == "TLSv1.3"
    ctx12 = ssl.create_default_context()
    ctx12.check_hostname = False
    ctx12.verify_mode = ssl.CERT_NONE
    ctx12.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", daemon.tls_port), timeout=5) as raw:
        with ctx12.wrap_socket(raw) as tls:
            assert tls.version() == "TLSv1.2"
    old = _tls11_client()
    if not _tls11_possible(old, tmp_path):
        pytest.skip("this OpenSSL build cannot negotiate TLS 1.1 even with a willing server")
    with socket.create_connection(("127.0.0.1", daemon.tls_port), timeout=5) as raw:
        with pytest.raises(ssl.SSLError):
            old.wrap_socket(raw).do_handshake()


def _tls11_client() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    return ctx


def _tls11_possible(client: ssl.SSLContext, tmp_path) -> bool:
    """The refusal above only means something if this client can do TLS 1.1 at all:
    try it against a local server that allows it."""
    cert, key = make_self_signed(tmp_path / "tls11")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server.minimum_version = ssl.TLSVersion.TLSv1_1
    server.set_ciphers("ALL:@SECLEVEL=0")
    server.load_cert_chain(cert, key)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                with server.wrap_socket(conn, server_side=True):
                    pass
            except (OSError, ssl.SSLError):
                pass

        t = threading.Thread(target=serve)
        t.start()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                with client.wrap_socket(raw) as tls:
                    return tls.version() == "TLSv1.1"
        except (OSError, ssl.SSLError):
            return False
        finally:
            t.join(5)


def test_rport_sends_responses_back_to_the_source_port(daemon) -> None:
    """RFC 3581: with rport the answer goes to where the request came from (NAT);
    without it, to the port in Via (§18.2.2)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as nat, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as via_port:
        nat.bind(("127.0.0.1", 0))
        via_port.bind(("127.0.0.1", 0))
        nat.settimeout(3)
        via_port.settimeout(3)
        vp = via_port.getsockname()[1]

        def options(branch: str, rport: str) -> bytes:
            return (f"OPTIONS sip:127.0.0.1 SIP/2.0\r\n"
                    f"Via: SIP/2.0/UDP 127.0.0.1:{vp};branch=z9hG4bK{branch}{rport}\r\n"
                    f"From: <sip:nat@127.0.0.1>;tag=n\r\nTo: <sip:127.0.0.1>\r\n"
                    f"Call-ID: {branch}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
                    f"Content-Length: 0\r\n\r\n").encode()

        nat.sendto(options("rp1", ";rport"), ("127.0.0.1", daemon.port))
        resp = nat.recv(65535).decode()
        assert resp.startswith("SIP/2.0 200")
        assert f";rport={nat.getsockname()[1]}" in resp and "received=127.0.0.1" in resp

        nat.sendto(options("rp2", ""), ("127.0.0.1", daemon.port))
        resp = via_port.recv(65535).decode()
        assert resp.startswith("SIP/2.0 200") and "branch=z9hG4bKrp2" in resp


def test_tcp_call_reuses_the_registration_connection(daemon) -> None:
    """The callee registered over TCP from a port that does not listen: the INVITE
    can only arrive over the connection it registered on."""
    with rawsip.SipClient("tcp", ("127.0.0.1", daemon.port)) as phone:
        contact = "<sip:101@127.0.0.1:9;transport=tcp>"  # nobody listens on port 9
        res = rawsip.register(phone, user="101", password=daemon.passwords["101"],
                              domain="127.0.0.1", algorithm="MD5", contact=contact)
        assert res.status == 200, res.transcript()
        caller = start_sipp(scenario("uac_expect_status"), daemon.remote("udp"),
                            keys={"user": "100", "password": daemon.passwords["100"],
                                  "callee": "101", "expect_status": 486})
        try:
            invite = phone.recv(10)
            assert invite is not None and invite.method == "INVITE"
            assert invite.uri == "sip:101@127.0.0.1:9;transport=tcp"
            phone.send(rawsip.reply(invite, 486, "Busy Here"))
            caller.wait(20).check()
        finally:
            caller.stop()


def test_many_messages_at_once_do_not_starve_the_loop(daemon) -> None:
    """Bursts of garbage and valid requests together: everything valid is answered."""
    answered = []

    def burst() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            s.settimeout(3)
            p = s.getsockname()[1]
            for i in range(200):
                s.sendto(b"\x00garbage\r\n\r\n" * 3, ("127.0.0.1", daemon.port))
                s.sendto((f"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{p}"
                          f";branch=z9hG4bKb{i};rport\r\nFrom: <sip:a@b>;tag=1\r\n"
                          f"To: <sip:c@d>\r\nCall-ID: burst{i}\r\nCSeq: 1 OPTIONS\r\n"
                          f"Content-Length: 0\r\n\r\n").encode(), ("127.0.0.1", daemon.port))
            try:
                while len(answered) < 200:
                    answered.append(s.recv(65535))
            except TimeoutError:
                pass

    t = threading.Thread(target=burst)
    t.start()
    t.join(30)
    assert len(answered) == 200
    assert daemon.proc.alive()
