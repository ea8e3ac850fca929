"""config.yaml: schema (version 1), validation naming key and line, migrations, the store.

The schema is the dataclasses below: each leaf field carries a `check` in its
metadata, sections carry `section`, the extension table carries `entries`.
Cross-field rules live in each class's `RULES`. Errors read like
`config.yaml line 7: sip.udp_port: must be an integer 1-65535, got 'abc'`.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import secrets
import stat
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import yaml

from appliance.store.atomic import atomic_write, clean_temp_files

# libyaml's parser when present (10,000 extensions load in a tenth of the time); same nodes.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

CURRENT_VERSION = 1
FILENAME = "config.yaml"

PathLike = str | os.PathLike[str]
KeyPath = tuple[str, ...]


class ConfigError(Exception):
    """An invalid configuration; the message names the file, line and key path."""

    def __init__(self, message: str, *, key: str | None = None, line: int | None = None):
        super().__init__(message)
        self.key = key
        self.line = line


class _Invalid(Exception):
    """A leaf check failed; the walker adds key path and line."""


# --- leaf checks: (value, raw scalar text or None) -> value, or raise _Invalid ----------------

Check = Callable[[Any, "str | None"], Any]
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NUMBER = re.compile(r"[0-9]{2,8}")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?")


def _show(value: Any) -> str:
    return "nothing" if value is None else repr(value)


def integer(lo: int, hi: int) -> Check:
    def check(value: Any, raw: str | None) -> int:
        if type(value) is not int or not lo <= value <= hi:
            raise _Invalid(f"must be an integer {lo}-{hi}, got {_show(value)}")
        return value

    return check


def text(min_len: int = 0, max_len: int = 200, optional: bool = False) -> Check:
    """A string; a plain YAML scalar such as `1234` or `yes` is taken as typed."""

    def check(value: Any, raw: str | None) -> str | None:
        if value is None and optional:
            return None
        if value is not None and not isinstance(value, str) and raw is not None:
            value = raw
        if not isinstance(value, str):
            raise _Invalid(f"must be a string, got {_show(value)}")
        if len(value) < min_len:  # values are not echoed: they may be passwords
            raise _Invalid(
                "must not be empty" if min_len == 1 else f"must be at least {min_len} characters"
            )
        if len(value) > max_len:
            raise _Invalid(f"must be at most {max_len} characters")
        if _CONTROL.search(value):
            raise _Invalid("must not contain control characters")
        return value

    return check


def choice(*options: str) -> Check:
    def check(value: Any, raw: str | None) -> str:
        if value not in options:
            raise _Invalid(f"must be one of {', '.join(options)}, got {_show(value)}")
        return value

    return check


def _ip(value: Any, raw: str | None) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise _Invalid(f"must be an IPv4 or IPv6 address, got {_show(value)}") from None
    return value


def _domain(value: Any, raw: str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            ipaddress.ip_address(value.strip("[]"))
            return value
        except ValueError:
            if _HOSTNAME.fullmatch(value):
                return value
    raise _Invalid(f"must be a host name, an IP address or null (any), got {_show(value)}")


_DIGITS = re.compile(r"[0-9*#+]*")
_PARAMS = re.compile(r"[A-Za-z0-9\-_.!~*'()\[\]/:&+$=;%]*")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")


def _host(value: Any, raw: str | None) -> str:
    r = _domain(value, raw)
    if r is None:
        raise _Invalid("must be a host name or an IP address")
    return r


def _optional_port(value: Any, raw: str | None) -> int | None:
    return None if value is None else _PORT(value, raw)


def _dial_string(optional: bool = False) -> Check:
    """Digits as dialled: 0-9, *, # and a leading + (E.164)."""

    def check(value: Any, raw: str | None) -> str | None:
        if value is None and optional:
            return None
        if value is not None and not isinstance(value, str) and raw is not None:
            value = raw
        if not isinstance(value, str) or _DIGITS.fullmatch(value) is None:
            raise _Invalid(f"must be a dial string of 0-9, *, # and +, got {_show(value)}")
        return value

    return check


def _uri_params(optional: bool) -> Check:
    """Request-URI parameters to append, e.g. `user=phone` or `user=phone;foo=bar`."""

    def check(value: Any, raw: str | None) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str) or _PARAMS.fullmatch(value) is None:
            raise _Invalid(f"must be URI parameters such as 'user=phone', got {_show(value)}")
        return value.strip(";")

    return check


def _boolean(value: Any, raw: str | None) -> bool:
    if type(value) is not bool:
        raise _Invalid(f"must be true or false, got {_show(value)}")
    return value


def _ip_list(value: Any, raw: str | None) -> list[str]:
    if not isinstance(value, list):
        raise _Invalid(f"must be a list of IP addresses or networks, got {_show(value)}")
    for v in value:
        try:
            ipaddress.ip_network(str(v), strict=False)
        except ValueError:
            raise _Invalid(f"{v!r} is not an IP address or network") from None
    return [str(v) for v in value]


def _resolvers(value: Any, raw: str | None) -> list[str]:
    if not isinstance(value, list) or not value:
        raise _Invalid(f"must be a non-empty list of IP addresses, got {_show(value)}")
    for v in value:
        host = str(v).rsplit(":", 1)[0] if str(v).count(":") == 1 else str(v)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise _Invalid(f"{v!r} is not an IP address (optionally :port)") from None
    return [str(v) for v in value]


def _resolvers_or_none(value: Any, raw: str | None) -> list[str]:
    return [] if value == [] else _resolvers(value, raw)


def _target(value: Any, raw: str | None) -> str:
    if value in ("extension", "feature") or (
        isinstance(value, str) and value.split(":", 1)[0] in ("line", "trunk")
        and _NAME.fullmatch(value.split(":", 1)[-1] or "") is not None
    ):
        return value
    raise _Invalid("must be extension, feature, line:NAME or trunk:NAME, "
                   f"got {_show(value)}")


DIGEST_ALGORITHMS = ("MD5", "SHA-256")


def _algorithms(value: Any, raw: str | None) -> list[str]:
    """Digest algorithms to challenge with, most preferred first (RFC 8760 §2.4)."""
    if (not isinstance(value, list) or not value
            or any(v not in DIGEST_ALGORITHMS for v in value) or len(set(value)) != len(value)):
        raise _Invalid(f"must be a list of distinct values from {', '.join(DIGEST_ALGORITHMS)}, "
                       f"got {_show(value)}")
    return list(value)


def _language_or_none(value: Any, raw: str | None) -> str | None:
    return None if value is None else choice("en", "zh")(value, raw)


def _pin(value: Any, raw: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) and raw is not None:
        value = raw
    if not isinstance(value, str) or not value.isdigit() or not 3 <= len(value) <= 12:
        raise _Invalid("must be 3-12 digits or null (no PIN)")
    return value


def _name(value: Any, raw: str | None) -> str:
    if not isinstance(value, str) or _NAME.fullmatch(value) is None:
        raise _Invalid(f"names are letters, digits, - and _ (up to 32), got {_show(value)}")
    return value


def _number(value: Any, raw: str | None) -> str:
    if not is_extension_number(value):
        raise _Invalid(f"extension numbers must be 2-8 digits, got {_show(value)}")
    return value


def _version(value: Any, raw: str | None) -> int:
    if value != CURRENT_VERSION or type(value) is not int:
        raise _Invalid(f"must be {CURRENT_VERSION}, got {_show(value)}")
    return value


def is_extension_number(value: Any) -> bool:
    """True for a digit string of 2-8 ASCII digits."""
    return isinstance(value, str) and _NUMBER.fullmatch(value) is not None


def _leaf(default: Any, check: Check) -> Any:
    return field(default=default, metadata={"check": check})


_PORT = integer(1, 65535)

# --- the schema ---------------------------------------------------------------------------

Rule = tuple[str, Callable[[Any], bool], str]  # (key, predicate on the object, message)


@dataclass
class SystemConfig:
    language: str = _leaf("en", choice("en", "zh"))
    name: str = _leaf("Office PBX", text(1, 64))


@dataclass
class SipConfig:
    bind: str = _leaf("0.0.0.0", _ip)
    udp_port: int = _leaf(5060, _PORT)
    tcp_port: int = _leaf(5060, _PORT)
    tls_port: int = _leaf(5061, _PORT)
    domain: str | None = _leaf(None, _domain)  # None: accept any domain
    t1_ms: int = _leaf(500, integer(10, 10_000))
    t2_ms: int = _leaf(4000, integer(100, 60_000))
    t4_ms: int = _leaf(5000, integer(100, 60_000))
    min_expires: int = _leaf(60, integer(1, 86_400))
    max_expires: int = _leaf(3600, integer(1, 604_800))
    default_expires: int = _leaf(3600, integer(1, 604_800))
    ring_timeout: int = _leaf(60, integer(1, 600))
    # SIP worker processes sharing the UDP port: they answer REGISTER and run plain calls
    # between extensions (appliance/workers.py); 0: one process.
    workers: int = _leaf(0, integer(0, 16))
    user_agent: str = _leaf("appliance", text(1, 128))
    # MD5 only by default: many phones answer the first challenge even when they cannot
    # compute it (SIPp 3.6), and some refuse a 401 carrying any non-MD5 challenge at all
    # (baresip 1.0 / libre 1.1). Offices with RFC 8760 phones list SHA-256 here.
    auth_algorithms: list[str] = field(
        default_factory=lambda: ["MD5"], metadata={"check": _algorithms})

    RULES: ClassVar[list[Rule]] = [
        ("tls_port", lambda s: s.tls_port != s.tcp_port, "must differ from sip.tcp_port"),
        ("t2_ms", lambda s: s.t2_ms >= s.t1_ms, "must be >= sip.t1_ms"),
        ("max_expires", lambda s: s.max_expires >= s.min_expires, "must be >= sip.min_expires"),
        (
            "default_expires",
            lambda s: s.min_expires <= s.default_expires <= s.max_expires,
            "must lie between sip.min_expires and sip.max_expires",
        ),
    ]


@dataclass
class Forwarding:
    """Call forwarding of one extension (to an extension or an outside number)."""

    unconditional: str | None = _leaf(None, _dial_string(optional=True))
    busy: str | None = _leaf(None, _dial_string(optional=True))
    no_answer: str | None = _leaf(None, _dial_string(optional=True))
    no_answer_after: int = _leaf(20, integer(1, 300))
    unreachable: str | None = _leaf(None, _dial_string(optional=True))


@dataclass
class Extension:
    password: str = field(metadata={"check": text(4, 128)})
    name: str = _leaf("", text(0, 64))
    forward: Forwarding = field(default_factory=Forwarding, metadata={"section": Forwarding})


_TRANSPORT = choice("udp", "tcp", "tls")
_FORWARD_HEADER = choice("diversion", "history-info")


@dataclass
class Line:
    """An account the box registers with at a VoIP provider."""

    host: str = field(metadata={"check": _host})
    account: str = field(metadata={"check": text(1, 64)})
    password: str = field(metadata={"check": text(1, 128)})
    port: int | None = _leaf(None, _optional_port)  # None: RFC 3263 (SRV) or 5060/5061
    transport: str = _leaf("udp", _TRANSPORT)
    auth_user: str | None = _leaf(None, text(1, 64, optional=True))  # None: the account
    domain: str | None = _leaf(None, _domain)  # AOR domain; None: the host
    expires: int = _leaf(3600, integer(60, 86_400))
    retry_interval: int = _leaf(30, integer(1, 3600))  # seconds before the first retry
    register: bool = _leaf(True, _boolean)
    prefix: str = _leaf("9", _dial_string())
    caller_id: str | None = _leaf(None, _dial_string(optional=True))
    inbound: str | None = _leaf(None, _dial_string(optional=True))  # extension for calls in
    ruri_params: str | None = _leaf(None, _uri_params(optional=True))  # None: by language
    disable_100rel: bool = _leaf(False, _boolean)
    forward_header: str = _leaf("diversion", _FORWARD_HEADER)


@dataclass
class Trunk:
    """A server-to-server SIP trunk: no registration, calls accepted from its peers only."""

    host: str = field(metadata={"check": _host})
    port: int | None = _leaf(None, _optional_port)
    transport: str = _leaf("udp", _TRANSPORT)
    peers: list[str] = field(default_factory=list, metadata={"check": _ip_list})
    allow_any_source: bool = _leaf(False, _boolean)
    prefix: str | None = _leaf(None, _dial_string(optional=True))
    caller_id: str | None = _leaf(None, _dial_string(optional=True))
    inbound: str | None = _leaf(None, _dial_string(optional=True))
    ruri_params: str = _leaf("", _uri_params(optional=False))
    disable_100rel: bool = _leaf(False, _boolean)
    forward_header: str = _leaf("diversion", _FORWARD_HEADER)


@dataclass
class Route:
    """One dial-plan rule; rules are tried in order, the first match wins."""

    target: str = field(metadata={"check": _target})
    prefix: str = _leaf("", _dial_string())
    min_length: int = _leaf(1, integer(1, 32))
    max_length: int = _leaf(32, integer(1, 32))
    strip: int = _leaf(0, integer(0, 32))
    prepend: str = _leaf("", _dial_string())

    RULES: ClassVar[list[Rule]] = [
        ("max_length", lambda r: r.max_length >= r.min_length, "must be >= min_length"),
        ("strip", lambda r: r.strip <= r.max_length, "must be <= max_length"),
    ]


@dataclass
class Room:
    """A conference room: callers dial its number, enter the PIN (if any) and join."""

    pin: str | None = _leaf(None, _pin)
    name: str = _leaf("", text(0, 64))
    max_participants: int = _leaf(5, integer(2, 500))  # local participants, as shipped
    language: str | None = _leaf(None, _language_or_none)  # None: system.language


@dataclass
class MediaConfig:
    rtp_port_min: int = _leaf(10000, integer(1024, 65534))
    rtp_port_max: int = _leaf(20000, integer(1025, 65535))
    relay_extension_calls: bool = _leaf(True, _boolean)  # lines and trunks always relay
    timeout: int = _leaf(60, integer(0, 3600))  # seconds without RTP before BYE (0: never)

    RULES: ClassVar[list[Rule]] = [
        ("rtp_port_max", lambda m: m.rtp_port_max > m.rtp_port_min + 1,
         "must leave room for at least one RTP/RTCP pair above rtp_port_min"),
    ]


@dataclass
class DnsConfig:
    # servers: resolvers for lines and trunks (empty: the system's /etc/resolv.conf)
    servers: list[str] = field(default_factory=list, metadata={"check": _resolvers_or_none})
    # reference: resolvers the DNS check compares the system's answers with
    reference: list[str] = field(default_factory=lambda: ["119.29.29.29", "223.5.5.5"],
                                 metadata={"check": _resolvers})


@dataclass
class Config:
    version: int = _leaf(CURRENT_VERSION, _version)
    system: SystemConfig = field(default_factory=SystemConfig, metadata={"section": SystemConfig})
    sip: SipConfig = field(default_factory=SipConfig, metadata={"section": SipConfig})
    extensions: dict[str, Extension] = field(
        default_factory=dict, metadata={"entries": Extension, "key": _number}
    )
    lines: dict[str, Line] = field(
        default_factory=dict, metadata={"entries": Line, "key": _name}
    )
    trunks: dict[str, Trunk] = field(
        default_factory=dict, metadata={"entries": Trunk, "key": _name}
    )
    routes: list[Route] = field(default_factory=list, metadata={"items": Route})
    rooms: dict[str, Room] = field(default_factory=dict, metadata={"entries": Room, "key": _number})
    media: MediaConfig = field(default_factory=MediaConfig, metadata={"section": MediaConfig})
    dns: DnsConfig = field(default_factory=DnsConfig, metadata={"section": DnsConfig})

    def problems(self) -> list[tuple[KeyPath, str]]:
        """Cross-references between sections, each named by its own key path."""
        out: list[tuple[KeyPath, str]] = []
        for table in ("lines", "trunks"):
            for name, entry in getattr(self, table).items():
                if entry.inbound is not None and entry.inbound not in self.extensions:
                    out.append(((table, name, "inbound"),
                                f"no extension {entry.inbound!r} to send calls to"))
        for number in self.rooms:
            if number in self.extensions:
                out.append((("rooms", number), "is also an extension number"))
        for i, r in enumerate(self.routes, start=1):
            kind, _, name = r.target.partition(":")
            if kind in ("line", "trunk") and name not in getattr(self, kind + "s"):
                out.append((("routes", str(i), "target"), f"there is no {kind} {name!r}"))
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain data as written to the file: unset optional keys and untouched
        forwarding settings are left out so that the file stays readable."""
        d = dataclasses.asdict(self)
        no_forward = dataclasses.asdict(Forwarding())
        for ext in d["extensions"].values():
            if ext["forward"] == no_forward:
                del ext["forward"]
        for table in ("lines", "trunks", "rooms"):
            for name, entry in d[table].items():
                d[table][name] = {k: v for k, v in entry.items() if v is not None}
        return d

    def to_yaml(self) -> str:
        body = yaml.safe_dump(
            self.to_dict(), sort_keys=False, allow_unicode=True, default_flow_style=False
        )
        return f"# appliance configuration, schema version {self.version}\n{body}"


# --- migrations: MIGRATIONS[n] turns a version-n dict into a version n+1 dict --------------


def _v0_to_v1(data: dict[str, Any]) -> dict[str, Any]:
    return {"version": 1, **{k: v for k, v in data.items() if k != "version"}}


MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {0: _v0_to_v1}


# --- validation ----------------------------------------------------------------------------


@dataclass
class _Source:
    """Where values came from: file name, line of each key, raw text of plain scalars."""

    name: str | None = None
    lines: dict[KeyPath, int] = field(default_factory=dict)
    raw: dict[KeyPath, str] = field(default_factory=dict)

    def line_of(self, path: KeyPath) -> int | None:
        while path:  # a missing key is reported at its parent's line
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None

    def error(self, path: KeyPath, message: str, line: int | None = None) -> ConfigError:
        key = ".".join(path) or None
        line = line or self.line_of(path)
        where = [self.name + (f" line {line}" if line else "")] if self.name else []
        text_ = ": ".join([*where, *([key] if key else []), message])
        return ConfigError(text_, key=key, line=line)


def _section(cls: type, data: Any, path: KeyPath, src: _Source) -> Any:
    if data is None:  # `sip:` with nothing under it: all defaults
        data = {}
    if not isinstance(data, dict):
        raise src.error(path, f"must be a mapping, got {_show(data)}")
    known = {f.name: f for f in fields(cls)}
    for key in data:
        if key not in known:
            raise src.error(path + (str(key),), _unknown(str(key), list(known)))
    values = {}
    for name, f in known.items():
        if name in data:
            values[name] = _value(f, data[name], path + (name,), src)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise src.error(path + (name,), "required")
    obj = cls(**values)
    for sub, message in obj.problems() if hasattr(obj, "problems") else ():
        raise src.error(path + sub, message)
    for key, ok, message in getattr(cls, "RULES", ()):
        if not ok(obj):
            raise src.error(path + (key,), f"{message}, got {getattr(obj, key)!r}")
    return obj


def _value(f: dataclasses.Field, value: Any, path: KeyPath, src: _Source) -> Any:
    meta = f.metadata
    if "section" in meta:
        return _section(meta["section"], value, path, src)
    if "items" in meta:
        if value is None:
            value = []
        if not isinstance(value, list):
            raise src.error(path, f"must be a list, got {_show(value)}")
        return [_section(meta["items"], item, path + (str(i + 1),), src)
                for i, item in enumerate(value)]
    if "entries" in meta:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise src.error(path, f"must be a mapping, got {_show(value)}")
        out = {}
        for key, item in value.items():
            try:
                meta["key"](key, None)
            except _Invalid as e:
                raise src.error(path + (str(key),), str(e)) from None
            out[key] = _section(meta["entries"], item, path + (key,), src)
        return out
    try:
        return meta["check"](value, src.raw.get(path))
    except _Invalid as e:
        raise src.error(path, str(e)) from None


def _unknown(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return f"unknown key (did you mean '{close[0]}'?)"
    return f"unknown key (expected one of: {', '.join(known)})"


def _migrate(data: dict[str, Any], src: _Source) -> dict[str, Any]:
    version = data.get("version", 0)
    if type(version) is not int or version < 0:
        raise src.error(("version",), f"must be an integer, got {_show(version)}")
    if version > CURRENT_VERSION:
        raise src.error(
            ("version",),
            f"{version} is newer than this software understands ({CURRENT_VERSION}); update it",
        )
    for v in range(version, CURRENT_VERSION):
        data = MIGRATIONS[v](data)
    return data


def validate(cfg: Config) -> Config:
    """Check an in-memory Config against the schema; return a fresh, checked copy."""
    return _section(Config, cfg.to_dict(), (), _Source())


# --- YAML: compose to nodes so every key keeps its line ------------------------------------


def _plain(loader: yaml.SafeLoader, node: yaml.Node, path: KeyPath, src: _Source) -> Any:
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise src.error(path, "keys must be plain strings", line)
            key = key_node.value  # the text as written: `0100` stays "0100", not 64
            sub = path + (key,)
            if key in out:
                raise src.error(sub, f"duplicate key (first at line {src.lines[sub]})", line)
            src.lines[sub] = line
            out[key] = _plain(loader, value_node, sub, src)
        return out
    if isinstance(node, yaml.SequenceNode) and node.tag == "tag:yaml.org,2002:seq":
        items = []
        for i, item in enumerate(node.value):
            sub = path + (str(i + 1),)
            src.lines[sub] = item.start_mark.line + 1
            items.append(_plain(loader, item, sub, src))
        return items
    if isinstance(node, yaml.ScalarNode) and not node.style:  # plain (C loader: "")
        src.raw[path] = node.value
    return loader.construct_object(node, deep=True)


def parse_config(text_: str, name: str = FILENAME) -> Config:
    """Parse and validate config.yaml text; migrate older schema versions."""
    src = _Source(name)
    loader = _Loader(text_)
    try:
        root = loader.get_single_node()
        data = None if root is None else _plain(loader, root, (), src)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        problem = ", ".join(p for p in (e.context, e.problem) if p)
        kind = (
            "YAML error"
            if isinstance(e, yaml.constructor.ConstructorError)
            else "YAML syntax error"
        )
        raise src.error((), f"{kind}: {problem}", line) from None
    except yaml.YAMLError as e:
        raise src.error((), f"YAML error: {e}") from None
    finally:
        loader.dispose()
    if data is None:
        raise src.error((), "the file is empty; expected a mapping starting with 'version: 1'", 1)
    if not isinstance(data, dict):
        raise src.error((), f"must be a mapping of keys, got {_show(data)}", 1)
    return _section(Config, _migrate(data, src), (), src)


def load_config(path: PathLike) -> Config:
    """Read and validate a config file; raises ConfigError naming key and line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror or e}") from None
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path.name} line {line}: not valid UTF-8", line=line) from None
    return parse_config(content, path.name)


def save_config(path: PathLike, cfg: Config) -> None:
    """Validate, then write atomically. Blocks on fsync: call from an executor in the daemon.

    An existing file keeps its owner and mode (minus any world access); new files are 0600.
    """
    data = validate(cfg).to_yaml().encode()
    mode, owner = 0o600, None
    try:
        st = os.stat(path)
    except FileNotFoundError:
        pass
    else:
        mode = stat.S_IMODE(st.st_mode) & 0o770
        if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (0, 0):
            owner = (st.st_uid, st.st_gid)  # root editing the daemon's file keeps it readable
    atomic_write(path, data, mode=mode, owner=owner)


def new_password() -> str:
    """A random SIP password (12 URL-safe characters)."""
    return secrets.token_urlsafe(9)


def default_config() -> Config:
    """Factory settings: extensions 100, 101 and 102 with random passwords."""
    exts = {
        n: Extension(password=new_password(), name=f"Extension {n}") for n in ("100", "101", "102")
    }
    return Config(extensions=exts)


# --- the store -----------------------------------------------------------------------------


class ConfigStore:
    """config.yaml in the data folder, with a cheap change check for polling."""

    def __init__(self, data_dir: PathLike):
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / FILENAME
        self._seen: tuple[int, int, int] | None = None

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)  # inode: each save is a new file

    def mtime_ns(self) -> int | None:
        stamp = self._stamp()
        return stamp[0] if stamp else None

    def changed(self) -> bool:
        """True when the file differs from the version last loaded or saved (one stat call)."""
        return self._stamp() != self._seen

    def load(self) -> Config:
        # Marked as seen before parsing: an invalid file is reported once, not every poll.
        self._seen = self._stamp()
        return load_config(self.path)

    def poll(self) -> Config | None:
        """The new Config if the file changed since last seen, else None; ConfigError once."""
        return self.load() if self.changed() else None

    def save(self, cfg: Config) -> None:
        save_config(self.path, cfg)
        self._seen = self._stamp()

    def ensure(self) -> tuple[Config, bool]:
        """Load the config, writing the defaults first if there is none. Returns (cfg, created)."""
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        clean_temp_files(self.data_dir, FILENAME)
        if self.path.exists():
            return self.load(), False
        cfg = default_config()
        self.save(cfg)
        return cfg, True
