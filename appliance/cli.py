"""Command line: `appliance run` and `appliance extension add|list|remove`.

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
    return parser


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


if __name__ == "__main__":
    raise SystemExit(main())
