"""Command line: `appliance run`, `extension|line|trunk|route|room add|list|remove`, `dns-check`.

Exit codes: 0 success, 1 invalid config.yaml, 2 usage errors and refused edits.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import ipaddress
import os
import sys

from appliance.store.config import (
    Config,
    ConfigError,
    ConfigStore,
    Extension,
    Line,
    Room,
    Route,
    Trunk,
    is_extension_number,
    new_password,
)

DEFAULT_DATA = "./var"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
EXIT_CONFIG = 1
EXIT_USAGE = 2


def default_data_dir() -> str:
    return os.environ.get("APPLIANCE_DATA") or DEFAULT_DATA


def _port(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 1-65535, got {value!r}")
    return int(value)


def _address(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an IP address, got {value!r}") from None
    return value


def build_parser() -> argparse.ArgumentParser:
    # SUPPRESS: a subparser that did not see --data must not overwrite an earlier one.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="data folder (default: $APPLIANCE_DATA, else ./var)",
    )
    parser = argparse.ArgumentParser(
        prog="appliance", parents=[common], description="Office phone system: a SIP PBX."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", parents=[common], help="run the PBX daemon")
    run.add_argument("--bind", metavar="ADDR", type=_address, help="override sip.bind")
    run.add_argument("--sip-port", metavar="N", type=_port, help="override sip.udp_port/tcp_port")
    run.add_argument("--tls-port", metavar="N", type=_port, help="override sip.tls_port")
    run.add_argument("--sip-trace", action="store_true", help="log every SIP message")
    run.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS, default="info")
    run.set_defaults(handler=_run)

    ext = commands.add_parser("extension", parents=[common], help="manage extensions")
    actions = ext.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", parents=[common], help="add an extension")
    add.add_argument("number", help="2-8 digits")
    add.add_argument("--password", help="SIP password (default: random, printed)")
    add.add_argument("--name", default="", help="display name")
    add.set_defaults(handler=_extension_add)
    lst = actions.add_parser("list", parents=[common], help="list extensions")
    lst.set_defaults(handler=_extension_list)
    rm = actions.add_parser("remove", parents=[common], help="remove an extension")
    rm.add_argument("number")
    rm.set_defaults(handler=_extension_remove)

    _carrier_commands(commands, common, "line", Line, LINE_OPTIONS)
    _carrier_commands(commands, common, "trunk", Trunk, TRUNK_OPTIONS)

    rte = commands.add_parser("route", parents=[common], help="manage dial-plan rules")
    ractions = rte.add_subparsers(dest="action", required=True, metavar="ACTION")
    radd = ractions.add_parser("add", parents=[common], help="add a rule (tried in order)")
    radd.add_argument("--target", required=True,
                      help="extension, feature, line:NAME or trunk:NAME")
    radd.add_argument("--prefix", default="")
    radd.add_argument("--min-length", type=int, default=1)
    radd.add_argument("--max-length", type=int, default=32)
    radd.add_argument("--strip", type=int, default=0)
    radd.add_argument("--prepend", default="")
    radd.add_argument("--position", type=int, help="1-based place in the list (default: last)")
    radd.set_defaults(handler=_route_add)
    rlist = ractions.add_parser("list", parents=[common], help="list rules")
    rlist.set_defaults(handler=_route_list)
    rrm = ractions.add_parser("remove", parents=[common], help="remove a rule by number")
    rrm.add_argument("index", type=int)
    rrm.set_defaults(handler=_route_remove)

    room = commands.add_parser("room", parents=[common], help="manage conference rooms")
    oactions = room.add_subparsers(dest="action", required=True, metavar="ACTION")
    oadd = oactions.add_parser("add", parents=[common], help="add or replace a room")
    oadd.add_argument("number", help="2-8 digits, not an extension's")
    oadd.add_argument("--pin", help="3-12 digits callers must enter (default: none)")
    oadd.add_argument("--name", default="", help="room name")
    oadd.add_argument("--max-participants", type=int, default=5,
                      help="callers in the room at once (default 5)")
    oadd.add_argument("--language", choices=("en", "zh"),
                      help="prompt language (default: system.language)")
    oadd.set_defaults(handler=_room_add)
    olist = oactions.add_parser("list", parents=[common], help="list rooms")
    olist.set_defaults(handler=_room_list)
    orm = oactions.add_parser("remove", parents=[common], help="remove a room")
    orm.add_argument("number")
    orm.set_defaults(handler=_room_remove)

    dns = commands.add_parser("dns-check", parents=[common],
                              help="compare DNS answers for every line and trunk host")
    dns.add_argument("hosts", nargs="*", help="hosts to check (default: from config.yaml)")
    dns.add_argument("--reference", action="append",
                     help="reference resolver IP[:port] (default: dns.reference)")
    dns.add_argument("--system", help="resolver(s) to treat as the system's, IP[:port],...")
    dns.set_defaults(handler=_dns_check)
    return parser


# (option, field, kind) for `line add` / `trunk add`; kind: str, int, flag, list
LINE_OPTIONS = [
    ("--host", "host", str), ("--account", "account", str), ("--password", "password", str),
    ("--port", "port", int), ("--transport", "transport", str),
    ("--auth-user", "auth_user", str), ("--domain", "domain", str),
    ("--expires", "expires", int), ("--retry-interval", "retry_interval", int),
    ("--prefix", "prefix", str),
    ("--caller-id", "caller_id", str), ("--inbound", "inbound", str),
    ("--ruri-params", "ruri_params", str), ("--forward-header", "forward_header", str),
    ("--disable-100rel", "disable_100rel", "flag"), ("--no-register", "register", "noflag"),
]
TRUNK_OPTIONS = [
    ("--host", "host", str), ("--port", "port", int), ("--transport", "transport", str),
    ("--peer", "peers", "list"), ("--allow-any-source", "allow_any_source", "flag"),
    ("--prefix", "prefix", str), ("--caller-id", "caller_id", str),
    ("--inbound", "inbound", str), ("--ruri-params", "ruri_params", str),
    ("--forward-header", "forward_header", str), ("--disable-100rel", "disable_100rel", "flag"),
]


def _carrier_commands(commands, common, kind: str, cls: type, options: list) -> None:
    sub = commands.add_parser(kind, parents=[common], help=f"manage {kind}s")
    actions = sub.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", parents=[common], help=f"add or replace a {kind}")
    add.add_argument("name")
    for opt, dest, typ in options:
        if typ == "flag":
            add.add_argument(opt, dest=dest, action="store_true", default=None)
        elif typ == "noflag":
            add.add_argument(opt, dest=dest, action="store_false", default=None)
        elif typ == "list":
            add.add_argument(opt, dest=dest, action="append")
        else:
            add.add_argument(opt, dest=dest, type=typ)
    add.set_defaults(handler=lambda a: _carrier_add(a, kind, cls, options))
    lst = actions.add_parser("list", parents=[common], help=f"list {kind}s")
    lst.set_defaults(handler=lambda a: _carrier_list(a, kind))
    rm = actions.add_parser("remove", parents=[common], help=f"remove a {kind}")
    rm.add_argument("name")
    rm.set_defaults(handler=lambda a: _carrier_remove(a, kind))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.data = getattr(args, "data", None) or default_data_dir()
    try:
        return args.handler(args)
    except ConfigError as e:
        print(f"appliance: {e}", file=sys.stderr)
        return EXIT_CONFIG


def _run(args: argparse.Namespace) -> int:
    daemon = importlib.import_module("appliance.daemon")  # late: pulls in the whole daemon
    result = daemon.main(args)
    return result if isinstance(result, int) else 0


def _fail(message: str) -> int:
    print(f"appliance: {message}", file=sys.stderr)
    return EXIT_USAGE


def _open(args: argparse.Namespace) -> tuple[ConfigStore, Config]:
    store = ConfigStore(args.data)
    cfg, created = store.ensure()
    if created:
        numbers = ", ".join(cfg.extensions)
        print(f"appliance: created {store.path} with extensions {numbers}", file=sys.stderr)
    return store, cfg


def _extension_add(args: argparse.Namespace) -> int:
    number = args.number
    if not is_extension_number(number):
        return _fail(f"invalid extension number {number!r}: use 2-8 digits")
    store, cfg = _open(args)
    if number in cfg.extensions:
        return _fail(f"extension {number} already exists")
    password = args.password if args.password is not None else new_password()
    ext = Extension(password=password, name=args.name)
    try:
        store.save(dataclasses.replace(cfg, extensions={**cfg.extensions, number: ext}))
    except ConfigError as e:  # e.g. a too-short password; the file is untouched
        return _fail(f"extension {number} refused: {e}")
    label = f" ({args.name})" if args.name else ""
    if args.password is None:
        print(f"added extension {number}{label}, password: {password}")
    else:
        print(f"added extension {number}{label}")
    return 0


def _extension_list(args: argparse.Namespace) -> int:
    _, cfg = _open(args)
    rows = [("NUMBER", "NAME", "PASSWORD")]
    for number in sorted(cfg.extensions, key=lambda n: (int(n), n)):
        ext = cfg.extensions[number]
        rows.append((number, ext.name, ext.password))
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    for number, name, password in rows:
        print(f"{number:<{widths[0]}}  {name:<{widths[1]}}  {password}")
    return 0


def _extension_remove(args: argparse.Namespace) -> int:
    number = args.number
    if not is_extension_number(number):
        return _fail(f"invalid extension number {number!r}: use 2-8 digits")
    store, cfg = _open(args)
    if number not in cfg.extensions:
        return _fail(f"no extension {number}")
    remaining = {n: e for n, e in cfg.extensions.items() if n != number}
    store.save(dataclasses.replace(cfg, extensions=remaining))
    print(f"removed extension {number}")
    return 0


def _table(cfg: Config, kind: str) -> dict:
    return cfg.lines if kind == "line" else cfg.trunks


def _carrier_add(args: argparse.Namespace, kind: str, cls: type, options: list) -> int:
    store, cfg = _open(args)
    values = {dest: getattr(args, dest) for _, dest, _ in options
              if getattr(args, dest) is not None}
    try:
        entry = cls(**values)
    except TypeError:
        need = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        return _fail(f"{kind} {args.name}: needs " + ", ".join(f"--{n.replace('_', '-')}"
                                                               for n in need))
    table = {**_table(cfg, kind), args.name: entry}
    new = dataclasses.replace(cfg, **{f"{kind}s": table})
    try:
        store.save(new)
    except ConfigError as e:
        return _fail(f"{kind} {args.name} refused: {e}")
    print(f"saved {kind} {args.name}")
    return 0


def _carrier_list(args: argparse.Namespace, kind: str) -> int:
    _, cfg = _open(args)
    for name, entry in _table(cfg, kind).items():
        d = {k: v for k, v in dataclasses.asdict(entry).items()
             if v not in (None, "", []) and k != "password"}
        print(name + "  " + "  ".join(f"{k}={v}" for k, v in d.items()))
    return 0


def _carrier_remove(args: argparse.Namespace, kind: str) -> int:
    store, cfg = _open(args)
    table = dict(_table(cfg, kind))
    if args.name not in table:
        return _fail(f"no {kind} {args.name}")
    del table[args.name]
    try:
        store.save(dataclasses.replace(cfg, **{f"{kind}s": table}))
    except ConfigError as e:  # e.g. a route still points at it
        return _fail(f"{kind} {args.name} cannot be removed: {e}")
    print(f"removed {kind} {args.name}")
    return 0


def _route_add(args: argparse.Namespace) -> int:
    store, cfg = _open(args)
    rule = Route(target=args.target, prefix=args.prefix, min_length=args.min_length,
                 max_length=args.max_length, strip=args.strip, prepend=args.prepend)
    routes = list(cfg.routes)
    pos = len(routes) if args.position is None else max(0, args.position - 1)
    routes.insert(pos, rule)
    try:
        store.save(dataclasses.replace(cfg, routes=routes))
    except ConfigError as e:
        return _fail(f"route refused: {e}")
    print(f"added route {pos + 1}")
    return 0


def _route_list(args: argparse.Namespace) -> int:
    _, cfg = _open(args)
    for i, r in enumerate(cfg.routes, start=1):
        print(f"{i}  prefix={r.prefix!r} length={r.min_length}-{r.max_length} "
              f"strip={r.strip} prepend={r.prepend!r} -> {r.target}")
    return 0


def _route_remove(args: argparse.Namespace) -> int:
    store, cfg = _open(args)
    if not 1 <= args.index <= len(cfg.routes):
        return _fail(f"no route {args.index}")
    routes = [r for i, r in enumerate(cfg.routes, start=1) if i != args.index]
    store.save(dataclasses.replace(cfg, routes=routes))
    print(f"removed route {args.index}")
    return 0


def _room_add(args: argparse.Namespace) -> int:
    number = args.number
    if not is_extension_number(number):
        return _fail(f"invalid room number {number!r}: use 2-8 digits")
    store, cfg = _open(args)
    room = Room(pin=args.pin, name=args.name, max_participants=args.max_participants,
                language=args.language)
    existed = number in cfg.rooms
    try:
        store.save(dataclasses.replace(cfg, rooms={**cfg.rooms, number: room}))
    except ConfigError as e:  # a bad PIN, too many participants, an extension's number
        return _fail(f"room {number} refused: {e}")
    label = f" ({args.name})" if args.name else ""
    pin = "with a PIN" if args.pin else "without a PIN"
    print(f"{'updated' if existed else 'added'} room {number}{label}, {pin}")
    return 0


def _room_list(args: argparse.Namespace) -> int:
    _, cfg = _open(args)
    rows = [("NUMBER", "NAME", "PIN", "MAX", "LANGUAGE")]
    for number in sorted(cfg.rooms, key=lambda n: (int(n), n)):
        r = cfg.rooms[number]
        rows.append((number, r.name or "-", r.pin or "-", str(r.max_participants),
                     r.language or f"({cfg.system.language})"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(f"{v:<{widths[i]}}" for i, v in enumerate(row[:4])) + "  " + row[4])
    return 0


def _room_remove(args: argparse.Namespace) -> int:
    number = args.number
    store, cfg = _open(args)
    if number not in cfg.rooms:
        return _fail(f"no room {number}")
    remaining = {n: r for n, r in cfg.rooms.items() if n != number}
    store.save(dataclasses.replace(cfg, rooms=remaining))
    print(f"removed room {number}")
    return 0


def _dns_check(args: argparse.Namespace) -> int:
    from appliance.dnscheck import main_dns_check

    hosts = list(args.hosts)
    if not hosts:
        _, cfg = _open(args)
        hosts = sorted({c.host for c in (*cfg.lines.values(), *cfg.trunks.values())})
        reference = args.reference or list(cfg.dns.reference)
    else:
        reference = args.reference
    if not hosts:
        print("no line or trunk hosts configured; name hosts to check")
        return 0
    return main_dns_check(hosts, reference, args.system)


if __name__ == "__main__":
    raise SystemExit(main())
