"""The dial plan: which destination a dialled number reaches.

Explicit `routes` from config.yaml are tried first, in order; then the shipped
defaults: feature codes (`*…`), extensions, then each line's and trunk's
prefix (longest first, the prefix stripped), so a fresh box with one line
dials out with `9` + number as small-office PBXs do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from ..sip.uri import SipURI, TelURI
from ..store.config import Config, Route

__all__ = ["Destination", "route", "FeatureCode", "parse_feature"]


@dataclass(frozen=True, slots=True)
class Destination:
    kind: str            # "extension" | "room" | "line" | "trunk" | "feature"
    number: str          # the number to dial there (after strip and prepend)
    name: str | None = None  # line or trunk name


def normalize(dialled: str) -> str:
    """Phones send '#' as %23 and may add visual separators (RFC 3966 §5.1.1)."""
    return "".join(c for c in unquote(dialled) if c not in "-.() ")


def number_of(uri: object) -> str | None:
    """The number a URI names: a tel: URI's digits (RFC 3966), a sip: URI's user part."""
    if isinstance(uri, TelURI):
        return uri.digits
    if isinstance(uri, SipURI) and uri.user:
        return normalize(uri.user)
    return None


def _apply(rule: Route, number: str) -> str:
    return rule.prepend + number[rule.strip:]


def route(cfg: Config, dialled: str) -> Destination | None:
    number = normalize(dialled)
    if not number:
        return None
    for rule in cfg.routes:
        if not number.startswith(rule.prefix):
            continue
        if not rule.min_length <= len(number) <= rule.max_length:
            continue
        out = _apply(rule, number)
        kind, _, name = rule.target.partition(":")
        if kind == "extension":
            if out in cfg.extensions:
                return Destination("extension", out)
            continue
        if kind == "feature":
            return Destination("feature", out)
        return Destination(kind, out, name)
    if number[0] in "*#":
        return Destination("feature", number)
    if number in cfg.extensions:
        return Destination("extension", number)
    if number in cfg.rooms:
        return Destination("room", number)
    prefixed: list[tuple[str, str, str]] = [
        (ln.prefix, "line", name) for name, ln in cfg.lines.items() if ln.prefix
    ] + [(t.prefix, "trunk", name) for name, t in cfg.trunks.items() if t.prefix]
    for prefix, kind, name in sorted(prefixed, key=lambda p: -len(p[0])):
        if number.startswith(prefix) and len(number) > len(prefix):
            return Destination(kind, number[len(prefix):], name)
    return None


# -- feature codes ----------------------------------------------------------------------

# *90 unconditional, *91 busy, *92 no answer, *93 unreachable (as miniSIPServer does):
# `*9N*NUMBER#` sets, `*9N#` clears.
FORWARD_KINDS = {"90": "unconditional", "91": "busy", "92": "no_answer", "93": "unreachable"}
_FORWARD_TARGET = re.compile(r"\+?[0-9][0-9*]*")


@dataclass(frozen=True, slots=True)
class FeatureCode:
    action: str               # "set-forward" | "clear-forward"
    kind: str                 # one of FORWARD_KINDS' values
    target: str | None = None


def parse_feature(code: str) -> FeatureCode | None:
    code = normalize(code)
    if not code.startswith("*") or len(code) < 3:  # `*90`: phones whose send key is #
        return None
    kind = FORWARD_KINDS.get(code[1:3])
    if kind is None:
        return None
    rest = code[3:]
    if rest == "#" or rest == "":
        return FeatureCode("clear-forward", kind)
    if rest.startswith("*"):
        target = rest[1:].rstrip("#")
        if _FORWARD_TARGET.fullmatch(target):  # a number, not `*` alone (a feature code)
            return FeatureCode("set-forward", kind, target)
    return None
