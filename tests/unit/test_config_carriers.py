"""config.yaml sections for carriers: lines, trunks, routes, forwarding, dns; and their CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest

from appliance.store.config import ConfigError, load_config, parse_config

BASE = """\
version: 1
extensions:
  "100": {password: secret100}
  "101":
    password: secret101
    forward: {busy: "102", no_answer: "9555", no_answer_after: 15}
lines:
  carrier:
    host: sip.carrier.test
    account: "7000"
    password: pw
    transport: tls
    inbound: "100"
    ruri_params: user=phone
trunks:
  office2:
    host: 127.0.0.1
    peers: [127.0.0.1, 10.1.0.0/16]
    prefix: "8"
routes:
  - {prefix: "0", target: "line:carrier"}
  - {prefix: "+4420", strip: 5, target: extension}
dns:
  servers: ["127.0.0.1:5353"]
"""


def test_full_carrier_config_parses() -> None:
    cfg = parse_config(BASE)
    line = cfg.lines["carrier"]
    assert (line.host, line.transport, line.prefix, line.ruri_params) == (
        "sip.carrier.test", "tls", "9", "user=phone")
    assert line.port is None and line.disable_100rel is False
    assert cfg.trunks["office2"].peers == ["127.0.0.1", "10.1.0.0/16"]
    assert [r.target for r in cfg.routes] == ["line:carrier", "extension"]
    assert cfg.extensions["101"].forward.busy == "102"
    assert cfg.extensions["100"].forward.unconditional is None
    assert cfg.dns.servers == ["127.0.0.1:5353"]
    # untouched forwarding and unset optional keys are not written back
    again = cfg.to_yaml()
    assert "forward" not in again.split("'100'")[1].split("'101'")[0]
    assert parse_config(again) == cfg


@pytest.mark.parametrize("edit, where", [
    (("transport: tls", "transport: sctp"), ("line 12", "lines.carrier.transport")),
    (('inbound: "100"', 'inbound: "555"'), ("line 13", "lines.carrier.inbound")),
    (('target: "line:carrier"', 'target: "line:other"'), ("line 21", "routes.1.target")),
    (("strip: 5", "strip: 99"), ("line 22", "routes.2.strip")),
    (("10.1.0.0/16", "not-an-ip"), ("line 18", "trunks.office2.peers")),
    (('no_answer: "9555"', 'no_answer: "95x55"'), ("line 6", "extensions.101.forward")),
    (("ruri_params: user=phone", 'ruri_params: "user=phone bad"'),
     ("line 14", "lines.carrier.ruri_params")),
])
def test_carrier_mistakes_name_key_and_line(edit, where) -> None:
    text = BASE.replace(*edit)
    assert text != BASE
    with pytest.raises(ConfigError) as e:
        parse_config(text)
    for part in where:
        assert part in str(e.value)


def _cli(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance", *args, "--data", str(tmp_path)],
                          capture_output=True, text=True, timeout=30)


def test_line_trunk_route_commands(tmp_path) -> None:
    r = _cli(tmp_path, "line", "add", "carrier", "--host", "127.0.0.1", "--account", "7000",
             "--password", "pw", "--prefix", "0", "--disable-100rel", "--forward-header",
             "history-info")
    assert r.returncode == 0, r.stderr
    r = _cli(tmp_path, "trunk", "add", "t1", "--host", "127.0.0.1", "--peer", "127.0.0.2")
    assert r.returncode == 0, r.stderr
    r = _cli(tmp_path, "route", "add", "--target", "trunk:t1", "--prefix", "00", "--strip", "2")
    assert r.returncode == 0, r.stderr
    cfg = load_config(tmp_path / "config.yaml")
    assert cfg.lines["carrier"].disable_100rel is True
    assert cfg.lines["carrier"].forward_header == "history-info"
    assert cfg.trunks["t1"].peers == ["127.0.0.2"]
    assert cfg.routes[0].target == "trunk:t1" and cfg.routes[0].strip == 2
    assert "carrier" in _cli(tmp_path, "line", "list").stdout
    assert "trunk:t1" in _cli(tmp_path, "route", "list").stdout

    before = (tmp_path / "config.yaml").read_bytes()
    r = _cli(tmp_path, "trunk", "remove", "t1")  # a route still uses it
    assert r.returncode == 2 and "routes.1.target" in r.stderr
    r = _cli(tmp_path, "line", "add", "bad", "--host", "127.0.0.1")
    assert r.returncode == 2 and "--account" in r.stderr
    assert (tmp_path / "config.yaml").read_bytes() == before

    assert _cli(tmp_path, "route", "remove", "1").returncode == 0
    assert _cli(tmp_path, "trunk", "remove", "t1").returncode == 0
    assert load_config(tmp_path / "config.yaml").trunks == {}
