"""The config store: schema, errors naming key and line, migrations, atomic writes, TLS files."""

import dataclasses
import os
import ssl
import stat
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.store import atomic
from appliance.store.atomic import TEMP_PREFIX, atomic_write, clean_temp_files
from appliance.store.certs import CertificateError, ensure_certificate
from appliance.store.config import (
    MIGRATIONS,
    Config,
    ConfigError,
    ConfigStore,
    Extension,
    default_config,
    load_config,
    parse_config,
    save_config,
    validate,
)

GOOD = """\
version: 1
system:
  language: zh
  name: Front office
sip:
  udp_port: 5070
  domain: pbx.example.com
extensions:
  100:
    password: secret100
    name: Reception
  "0101":
    password: 1234
"""

# (YAML text, key path named, line named, fragment of the message)
INVALID = [
    pytest.param(
        "version: 1\nsip:\n  bind: 0.0.0.0\n  udp_port: abc\n",
        "sip.udp_port", 4, "must be an integer 1-65535, got 'abc'", id="bad-type",
    ),
    pytest.param(
        "version: 1\nsip:\n  tls_port: 70000\n", "sip.tls_port", 3, "1-65535, got 70000",
        id="out-of-range",
    ),
    pytest.param(
        "version: 1\nsip:\n  udp_prot: 5060\n", "sip.udp_prot", 3, "did you mean 'udp_port'",
        id="unknown-key",
    ),
    pytest.param("version: 1\ncolour: blue\n", "colour", 2, "unknown key", id="unknown-top-key"),
    pytest.param(
        "version: 1\nextensions:\n  100: {password: abcd}\n  1x: {password: abcd}\n",
        "extensions.1x", 4, "2-8 digits", id="bad-extension-number",
    ),
    pytest.param(
        "version: 1\nextensions:\n  123456789: {password: abcd}\n",
        "extensions.123456789", 3, "2-8 digits", id="long-extension-number",
    ),
    pytest.param(
        "version: 1\nextensions:\n  100:\n    name: Bob\n    password: ab\n",
        "extensions.100.password", 5, "at least 4 characters", id="short-password",
    ),
    pytest.param(
        "version: 1\nextensions:\n  100:\n    name: Bob\n",
        "extensions.100.password", 3, "required", id="missing-password",
    ),
    pytest.param(
        "version: 1\nsystem:\n  language: fr\n", "system.language", 3, "one of en, zh",
        id="bad-choice",
    ),
    pytest.param(
        "version: 1\nsip:\n  udp_port: 5060\n  udp_port: 5070\n", "sip.udp_port", 4,
        "duplicate key (first at line 3)", id="duplicate-key",
    ),
    pytest.param(
        "version: 1\nsip:\n  min_expires: 60\n  default_expires: 30\n", "sip.default_expires", 4,
        "between sip.min_expires", id="cross-field",
    ),
    pytest.param("version: 7\n", "version", 1, "newer than this software", id="future-version"),
    pytest.param(
        "version: 1\nsip:\n  udp_port: 5060\n   tcp_port: 5060\n", None, 4, "YAML syntax error",
        id="yaml-syntax",
    ),
    pytest.param(
        "version: 1\nsip: {udp_port: 5060\n", None, 3, "YAML syntax error", id="yaml-unclosed",
    ),
    pytest.param(
        "version: 1\nsip:\n  user_agent: !!python/object/apply:os.system [id]\n", None, 3,
        "YAML error", id="unsafe-tag",
    ),
    pytest.param("", None, 1, "empty", id="empty-file"),
]


def test_valid_file_loads(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(GOOD)
    cfg = load_config(path)
    assert cfg.system.language == "zh"
    assert cfg.sip.udp_port == 5070 and cfg.sip.tcp_port == 5060  # defaults fill the rest
    assert cfg.sip.domain == "pbx.example.com"
    assert cfg.extensions == {
        "100": Extension(password="secret100", name="Reception"),
        "0101": Extension(password="1234", name=""),  # typed as written, not int 1234
    }


@pytest.mark.parametrize("text, key, line, fragment", INVALID)
def test_invalid_config_names_key_and_line(tmp_path, text, key, line, fragment):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"config.yaml line {line}: "), message
    assert fragment in message
    assert info.value.line == line
    if key:
        assert info.value.key == key
        assert f": {key}: " in message


def test_message_format_matches_the_documented_example():
    with pytest.raises(ConfigError) as info:
        parse_config("version: 1\nsip:\n\n\n\n\n  udp_port: abc\n")
    assert str(info.value) == (
        "config.yaml line 7: sip.udp_port: must be an integer 1-65535, got 'abc'"
    )


def test_password_is_not_echoed_in_errors():
    with pytest.raises(ConfigError) as info:
        parse_config("extensions:\n  100: {password: xyz}\n")
    assert "xyz" not in str(info.value)


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_bytes(b"version: 1\nsystem:\n  name: \xff\xfe\n")
    with pytest.raises(ConfigError, match="line 3: not valid UTF-8"):
        load_config(path)


@pytest.mark.parametrize("header", ["", "version: 0\n"])
def test_old_versions_are_migrated(header):
    assert 0 in MIGRATIONS
    cfg = parse_config(header + "sip:\n  udp_port: 5080\n")
    assert cfg.version == 1 and cfg.sip.udp_port == 5080


def test_default_config():
    cfg = default_config()
    assert list(cfg.extensions) == ["100", "101", "102"]
    passwords = [e.password for e in cfg.extensions.values()]
    assert len(set(passwords)) == 3 and all(len(p) >= 12 for p in passwords)
    assert cfg.extensions["101"].name == "Extension 101"
    assert cfg.sip.domain is None and cfg.sip.udp_port == 5060 and cfg.system.language == "en"


def test_round_trip(tmp_path):
    cfg = parse_config(GOOD)
    path = tmp_path / "config.yaml"
    save_config(path, cfg)
    assert load_config(path) == cfg
    assert parse_config(cfg.to_yaml()) == cfg
    assert cfg.to_dict()["extensions"]["0101"] == {"password": "1234", "name": ""}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "change, key",
    [
        (lambda c: dataclasses.replace(c, sip=dataclasses.replace(c.sip, udp_port=0)), "sip.udp_port"),
        (lambda c: dataclasses.replace(c, extensions={"1": Extension("abcd")}), "extensions.1"),
        (
            lambda c: dataclasses.replace(c, extensions={"100": Extension("ab")}),
            "extensions.100.password",
        ),
        (lambda c: dataclasses.replace(c, sip=dataclasses.replace(c.sip, bind="nowhere")), "sip.bind"),
    ],
)
def test_failed_save_leaves_file_untouched(tmp_path, change, key):
    path = tmp_path / "config.yaml"
    save_config(path, default_config())
    before = path.read_bytes()
    with pytest.raises(ConfigError) as info:
        save_config(path, change(load_config(path)))
    assert info.value.key == key
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["config.yaml"]


def test_save_keeps_mode_but_drops_world_access(tmp_path):
    path = tmp_path / "config.yaml"
    save_config(path, default_config())
    path.chmod(0o644)
    save_config(path, default_config())
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


# --- the store ---------------------------------------------------------------------------


def test_ensure_creates_defaults_once(tmp_path):
    store = ConfigStore(tmp_path / "data")
    cfg, created = store.ensure()
    assert created and store.path.exists()
    again, created = store.ensure()
    assert not created and again == cfg


def test_changed_and_poll(tmp_path):
    store = ConfigStore(tmp_path)
    cfg, _ = store.ensure()
    assert not store.changed() and store.poll() is None
    assert store.mtime_ns() == store.path.stat().st_mtime_ns

    # an outside edit, same size and possibly the same mtime: the new inode still shows it
    edited = dataclasses.replace(cfg, system=dataclasses.replace(cfg.system, name="Office PBY"))
    save_config(store.path, edited)
    assert store.changed()
    assert store.poll() == edited
    assert store.poll() is None

    # an invalid edit is reported once, and never rewritten
    store.path.write_text("version: 1\nsip:\n  udp_port: x\n")
    with pytest.raises(ConfigError, match="line 3: sip.udp_port"):
        store.poll()
    assert store.poll() is None
    assert store.path.read_text() == "version: 1\nsip:\n  udp_port: x\n"


def test_ensure_refuses_an_invalid_file(tmp_path):
    store = ConfigStore(tmp_path)
    store.path.write_text("version: 1\nbogus: 1\n")
    with pytest.raises(ConfigError, match="line 2: bogus"):
        store.ensure()
    assert store.path.read_text() == "version: 1\nbogus: 1\n"


# --- atomic writes -------------------------------------------------------------------------


def test_atomic_write_replaces_and_sets_mode(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"old")
    atomic_write(path, b"new", mode=0o640)
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert os.listdir(tmp_path) == ["f"]


def test_atomic_write_cleans_up_on_error(tmp_path, monkeypatch):
    path = tmp_path / "f"
    path.write_bytes(b"old")

    def boom(*args):
        raise OSError("disk on fire")

    monkeypatch.setattr(atomic.os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        atomic_write(path, b"new")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]


def test_atomic_write_through_symlink_keeps_link(tmp_path):
    real = tmp_path / "real.yaml"
    real.write_bytes(b"old")
    link = tmp_path / "link.yaml"
    link.symlink_to(real)
    atomic_write(link, b"new")
    assert link.is_symlink() and real.read_bytes() == b"new"


def test_clean_temp_files_removes_only_dead_writers(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = tmp_path / f"{TEMP_PREFIX}config.yaml.{dead.stdout.strip()}.abcd1234"
    live = tmp_path / f"{TEMP_PREFIX}config.yaml.{os.getpid()}.efgh5678"
    other = tmp_path / f"{TEMP_PREFIX}other.{dead.stdout.strip()}.ijkl9012"
    for p in (stale, live, other):
        p.write_bytes(b"partial")
    assert clean_temp_files(tmp_path, "config.yaml") == [stale]
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, other.name])


def test_ensure_cleans_stale_temp_files(tmp_path):
    store = ConfigStore(tmp_path)
    store.ensure()
    stale = tmp_path / f"{TEMP_PREFIX}config.yaml.0.zzzz0000"  # pid 0: never a live writer
    stale.write_bytes(b"version: 1\nsip: {ud")
    store.ensure()
    assert os.listdir(tmp_path) == ["config.yaml"]


# --- TLS certificate -------------------------------------------------------------------------


def test_certificate_is_created_and_reused(tmp_path):
    cert_path, key_path = ensure_certificate(tmp_path, hostname="pbx.local")
    assert cert_path == tmp_path / "tls" / "cert.pem" and key_path == tmp_path / "tls" / "key.pem"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_path, key_path)

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["pbx.local", "localhost"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime.days >= 3650

    before = (cert_path.read_bytes(), key_path.read_bytes())
    assert ensure_certificate(tmp_path) == (cert_path, key_path)
    assert (cert_path.read_bytes(), key_path.read_bytes()) == before


def test_certificate_works_in_a_verified_handshake(tmp_path):
    cert_path, key_path = ensure_certificate(tmp_path, hostname="pbx.local")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_path, key_path)
    client = ssl.create_default_context(cafile=str(cert_path))
    client.verify_flags |= ssl.VERIFY_X509_STRICT
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname="localhost")
    s = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for end in (c, s):
            try:
                end.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    assert c.getpeercert()["subject"] == ((("commonName", "pbx.local"),),)


def test_operator_certificate_is_used_as_is(tmp_path):
    tls = tmp_path / "tls"
    tls.mkdir()
    (tls / "cert.pem").write_bytes(b"operator cert")
    (tls / "key.pem").write_bytes(b"operator key")
    assert ensure_certificate(tmp_path) == (tls / "cert.pem", tls / "key.pem")
    assert (tls / "cert.pem").read_bytes() == b"operator cert"
    assert (tls / "key.pem").read_bytes() == b"operator key"


def test_key_without_certificate_is_kept(tmp_path):
    tls = tmp_path / "tls"
    tls.mkdir()
    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tls / "key.pem").write_bytes(pem)
    cert_path, key_path = ensure_certificate(tmp_path)
    assert key_path.read_bytes() == pem
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_path, key_path)


def test_certificate_without_key_is_an_error(tmp_path):
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "cert.pem").write_bytes(b"operator cert")
    with pytest.raises(CertificateError, match="key.pem is missing"):
        ensure_certificate(tmp_path)


def test_config_dataclass_defaults_are_valid():
    assert validate(Config()) == Config()
