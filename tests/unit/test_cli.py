"""The command line: extension add/list/remove, `run` hand-off, exit codes."""

import os
import subprocess
import sys
import types

import pytest

from appliance import cli
from appliance.store.config import ConfigError, ConfigStore, load_config

INVALID = "version: 1\nsip:\n  udp_port: abc\n"


def appliance(*args, cwd=None, env=None):
    """Run `python -m appliance ...` as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=30,
    )


def test_extension_add_list_remove_via_subprocess(tmp_path):
    data = str(tmp_path / "data")

    r = appliance("extension", "add", "150", "--name", "Alice", "--data", data)
    assert r.returncode == 0, r.stderr
    assert "created" in r.stderr  # the defaults came first
    password = r.stdout.strip().rsplit("password: ", 1)[1]
    assert len(password) >= 12
    assert load_config(f"{data}/config.yaml").extensions["150"].password == password

    r = appliance("extension", "add", "151", "--password", "s3cret", "--data", data)
    assert r.returncode == 0, r.stderr
    assert "s3cret" not in r.stdout  # a given password is not echoed

    r = appliance("extension", "remove", "101", "--data", data)
    assert r.returncode == 0, r.stderr

    r = appliance("extension", "list", "--data", data)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["NUMBER", "NAME", "PASSWORD"]
    rows = [line.split(None, 1)[0] for line in lines[1:]]
    assert rows == ["100", "102", "150", "151"]
    assert any(line.split() == ["150", "Alice", password] for line in lines)
    assert any(line.split() == ["151", "s3cret"] for line in lines)  # no name


def test_data_defaults_to_env_then_var(tmp_path):
    env = {**os.environ, "APPLIANCE_DATA": str(tmp_path / "env")}
    assert appliance("extension", "list", cwd=tmp_path, env=env).returncode == 0
    assert (tmp_path / "env" / "config.yaml").exists()
    env.pop("APPLIANCE_DATA")
    assert appliance("extension", "list", cwd=tmp_path, env=env).returncode == 0
    assert (tmp_path / "var" / "config.yaml").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["extension", "add", "100"], "extension 100 already exists"),
        (["extension", "add", "1x"], "invalid extension number '1x'"),
        (["extension", "add", "123456789"], "invalid extension number"),
        (["extension", "add", "300", "--password", "abc"], "at least 4 characters"),
        (["extension", "add", "300", "--name", "bad\nname"], "control characters"),
        (["extension", "remove", "999"], "no extension 999"),
        (["extension", "remove", "x"], "invalid extension number 'x'"),
    ],
)
def test_refused_edits_exit_2_and_leave_file_untouched(tmp_path, capsys, argv, message):
    store = ConfigStore(tmp_path)
    store.ensure()
    before = store.path.read_bytes()
    assert cli.main([*argv, "--data", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert store.path.read_bytes() == before


def test_invalid_number_on_fresh_folder_creates_nothing(tmp_path, capsys):
    assert cli.main(["extension", "add", "1", "--data", str(tmp_path / "d")]) == 2
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    "argv", [["extension", "list"], ["extension", "add", "300"], ["extension", "remove", "100"]]
)
def test_invalid_config_exits_1_and_is_untouched(tmp_path, capsys, argv):
    path = tmp_path / "config.yaml"
    path.write_text(INVALID)
    assert cli.main([*argv, "--data", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "config.yaml line 3: sip.udp_port: must be an integer 1-65535, got 'abc'" in err
    assert path.read_text() == INVALID


def test_invalid_config_via_subprocess(tmp_path):
    (tmp_path / "config.yaml").write_text(INVALID)
    r = appliance("extension", "list", "--data", str(tmp_path))
    assert r.returncode == 1
    assert "config.yaml line 3: sip.udp_port" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.fixture
def fake_daemon(monkeypatch):
    daemon = types.ModuleType("appliance.daemon")
    daemon.calls = []
    daemon.main = lambda args: daemon.calls.append(args)
    monkeypatch.setitem(sys.modules, "appliance.daemon", daemon)
    return daemon


def test_run_passes_options_to_the_daemon(tmp_path, fake_daemon):
    argv = ["run", "--data", str(tmp_path), "--bind", "127.0.0.1", "--sip-port", "5080",
            "--tls-port", "5081", "--sip-trace", "--log-level", "DEBUG"]
    assert cli.main(argv) == 0
    (args,) = fake_daemon.calls
    assert (args.data, args.bind, args.sip_port, args.tls_port, args.sip_trace, args.log_level) == (
        str(tmp_path), "127.0.0.1", 5080, 5081, True, "debug"
    )


def test_run_defaults(tmp_path, fake_daemon, monkeypatch):
    monkeypatch.setenv("APPLIANCE_DATA", str(tmp_path))
    assert cli.main(["run"]) == 0
    (args,) = fake_daemon.calls
    assert (args.data, args.bind, args.sip_port, args.tls_port, args.sip_trace, args.log_level) == (
        str(tmp_path), None, None, None, False, "info"
    )


def test_run_with_invalid_config_exits_1(tmp_path, fake_daemon, capsys):
    def main(args):
        raise ConfigError("config.yaml line 3: sip.udp_port: must be an integer 1-65535, got 'abc'")

    fake_daemon.main = main
    assert cli.main(["run", "--data", str(tmp_path)]) == 1
    assert "config.yaml line 3: sip.udp_port" in capsys.readouterr().err


def test_run_returns_the_daemon_exit_code(tmp_path, fake_daemon):
    fake_daemon.main = lambda args: 3
    assert cli.main(["run", "--data", str(tmp_path)]) == 3


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--sip-port", "70000"],
        ["run", "--bind", "not-an-address"],
        ["run", "--log-level", "loud"],
        ["extension"],
        [],
    ],
)
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2


def test_data_may_come_before_or_after_the_action(tmp_path, capsys):
    first, second = tmp_path / "a", tmp_path / "b"
    assert cli.main(["--data", str(first), "extension", "list"]) == 0
    assert cli.main(["extension", "--data", str(second), "add", "300"]) == 0
    assert (first / "config.yaml").exists()
    assert "300" in load_config(second / "config.yaml").extensions
