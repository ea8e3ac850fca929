"""sd_notify by hand, the watchdog interval, and the unit file."""

import configparser
import os
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from appliance.systemd import notify, watchdog_interval

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "appliance.service"


@pytest.fixture
def receiver():
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(2)
    yield sock
    sock.close()


def test_notify_sends_a_datagram(tmp_path, monkeypatch, receiver):
    path = tmp_path / "notify.sock"
    receiver.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    assert notify("READY=1") is True
    assert receiver.recv(4096) == b"READY=1"
    assert notify("STATUS=2 phones registered\nWATCHDOG=1") is True
    assert receiver.recv(4096) == b"STATUS=2 phones registered\nWATCHDOG=1"


def test_notify_abstract_namespace(monkeypatch, receiver):
    name = f"appliance-test-{uuid.uuid4().hex}"
    receiver.bind("\0" + name)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    assert notify("READY=1") is True
    assert receiver.recv(4096) == b"READY=1"


@pytest.mark.parametrize("value", [None, "", "vsock:2:1234", "relative/path"])
def test_notify_without_systemd_is_a_no_op(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    else:
        monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert notify("READY=1") is False


def test_notify_to_a_missing_socket_fails_quietly(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert notify("READY=1") is False


@pytest.mark.parametrize(
    "usec, pid, expected",
    [
        ("30000000", None, 30.0),
        ("30000000", "self", 30.0),
        ("30000000", "1", None),  # meant for another process
        ("30000000", "junk", None),
        ("0", None, None),
        ("junk", None, None),
        (None, None, None),
    ],
)
def test_watchdog_interval(monkeypatch, usec, pid, expected):
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, str(os.getpid()) if value == "self" else value)
    assert watchdog_interval() == expected


def test_unit_file():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(UNIT)
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["ExecStart"] == "/usr/bin/appliance run --data /data/appliance"
    assert service["Environment"] == "APPLIANCE_DATA=/data/appliance"
    assert service["WatchdogSec"] == "30"
    assert service["Restart"] == "on-failure"
    assert service["ReadWritePaths"] == "/data/appliance"
    assert service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == "yes"
    assert service["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_unit_file_verifies(tmp_path):
    copy = tmp_path / "appliance.service"
    shutil.copy(UNIT, copy)
    r = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True)
    # /usr/bin/appliance is absent outside the package; anything else is a real complaint
    problems = [
        line
        for line in (r.stdout + r.stderr).splitlines()
        if line.strip() and "/usr/bin/appliance" not in line
    ]
    assert problems == []
