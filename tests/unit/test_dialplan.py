"""The dial plan (appliance/pbx/dialplan.py): routes, number normalisation, feature codes."""

from __future__ import annotations

import pytest

from appliance.pbx.dialplan import Destination, FeatureCode, normalize, parse_feature, route
from appliance.store.config import Config, Extension, Line, Route, Trunk


def _config(routes: list[Route] | None = None, **kw) -> Config:
    exts = {n: Extension(password="secret-" + n) for n in ("100", "101", "102", "9000")}
    return Config(extensions=exts, routes=routes or [], **kw)


def _line(prefix: str = "9") -> Line:
    return Line(host="sip.example.net", account="7000", password="x", prefix=prefix)


# -- the shipped default plan -------------------------------------------------------------

def test_extension() -> None:
    assert route(_config(), "101") == Destination("extension", "101")


def test_unknown_number_and_empty() -> None:
    cfg = _config()
    assert route(cfg, "555") is None
    assert route(cfg, "") is None
    assert route(cfg, "%20") is None  # nothing left after normalisation


@pytest.mark.parametrize("code", ["*90*102#", "*90*102%23", "#21#", "*93#"])
def test_feature_code(code: str) -> None:
    assert route(_config(), code) == Destination("feature", normalize(code))


def test_line_prefix_is_stripped() -> None:
    cfg = _config(lines={"carrier": _line()})
    assert route(cfg, "95551234") == Destination("line", "5551234", "carrier")


def test_prefix_alone_is_not_a_number() -> None:
    cfg = _config(lines={"carrier": _line()})
    assert route(cfg, "9") is None


def test_extension_wins_over_line_prefix() -> None:
    """9000 is an extension although it starts with the line's prefix 9."""
    cfg = _config(lines={"carrier": _line()})
    assert route(cfg, "9000") == Destination("extension", "9000")
    assert route(cfg, "9001") == Destination("line", "001", "carrier")


def test_longest_prefix_wins() -> None:
    cfg = _config(lines={"short": _line("9"), "long": _line("90")},
                  trunks={"mid": Trunk(host="10.0.0.1", prefix="8")})
    assert route(cfg, "90123") == Destination("line", "123", "long")
    assert route(cfg, "91234") == Destination("line", "1234", "short")
    assert route(cfg, "8123") == Destination("trunk", "123", "mid")


def test_longest_prefix_wins_across_lines_and_trunks() -> None:
    cfg = _config(lines={"carrier": _line("0")},
                  trunks={"intl": Trunk(host="10.0.0.1", prefix="00")})
    assert route(cfg, "00861234") == Destination("trunk", "861234", "intl")
    assert route(cfg, "0861234") == Destination("line", "861234", "carrier")


def test_line_without_prefix_is_not_in_the_default_plan() -> None:
    cfg = _config(lines={"carrier": _line("")})
    assert route(cfg, "5551234") is None


# -- explicit routes ------------------------------------------------------------------------

def test_explicit_route_strip_and_prepend() -> None:
    cfg = _config([Route(target="line:carrier", prefix="0", strip=1, prepend="+86")],
                  lines={"carrier": _line()})
    assert route(cfg, "01012345678") == Destination("line", "+861012345678", "carrier")


def test_explicit_routes_before_defaults() -> None:
    """A route for `1` sends 101 out although 101 is an extension."""
    cfg = _config([Route(target="trunk:pbx2", prefix="1")],
                  trunks={"pbx2": Trunk(host="10.0.0.2")})
    assert route(cfg, "101") == Destination("trunk", "101", "pbx2")


def test_explicit_routes_first_match_wins() -> None:
    cfg = _config([Route(target="trunk:a", prefix="5"), Route(target="trunk:b", prefix="55")],
                  trunks={"a": Trunk(host="10.0.0.1"), "b": Trunk(host="10.0.0.2")})
    assert route(cfg, "5551234") == Destination("trunk", "5551234", "a")


@pytest.mark.parametrize(("number", "expected"), [
    ("123", None),              # shorter than min_length: no rule, no default
    ("1234", "b"),
    ("12345678", "b"),
    ("123456789", "c"),         # longer than rule b's max_length: the next rule
])
def test_explicit_route_length_limits(number: str, expected: str | None) -> None:
    cfg = _config([Route(target="trunk:b", prefix="1", min_length=4, max_length=8),
                   Route(target="trunk:c", prefix="1", min_length=9)],
                  trunks={"b": Trunk(host="10.0.0.1"), "c": Trunk(host="10.0.0.2")})
    dest = route(cfg, number)
    assert (dest.name if dest else None) == expected


def test_explicit_extension_route() -> None:
    """Short dialling: 2101 → extension 101 (strip 1); a result that is no extension
    falls through to the next rule and then to the defaults."""
    cfg = _config([Route(target="extension", prefix="2", strip=1),
                   Route(target="trunk:t", prefix="2")],
                  trunks={"t": Trunk(host="10.0.0.1")})
    assert route(cfg, "2101") == Destination("extension", "101")
    assert route(cfg, "2999") == Destination("trunk", "2999", "t")


def test_explicit_feature_route() -> None:
    cfg = _config([Route(target="feature", prefix="#", strip=1, prepend="*")])
    assert route(cfg, "#90#") == Destination("feature", "*90#")


def test_explicit_route_sees_the_normalized_number() -> None:
    cfg = _config([Route(target="line:carrier", prefix="0", strip=1)],
                  lines={"carrier": _line()})
    assert route(cfg, "0-555-(123)") == Destination("line", "555123", "carrier")


# -- normalize ------------------------------------------------------------------------------

@pytest.mark.parametrize(("dialled", "expected"), [
    ("%2390%23", "#90#"),
    ("*90*102%23", "*90*102#"),
    ("%2A90%2A102%23", "*90*102#"),
    ("555-1234", "5551234"),
    ("(010) 1234.5678", "01012345678"),
    ("+86 10 1234 5678", "+861012345678"),
    ("101", "101"),
])
def test_normalize(dialled: str, expected: str) -> None:
    assert normalize(dialled) == expected


# -- feature codes --------------------------------------------------------------------------

KINDS = [("90", "unconditional"), ("91", "busy"), ("92", "no_answer"), ("93", "unreachable")]


@pytest.mark.parametrize(("code", "kind"), KINDS)
def test_feature_set(code: str, kind: str) -> None:
    assert parse_feature(f"*{code}*102#") == FeatureCode("set-forward", kind, "102")
    assert parse_feature(f"*{code}*102%23") == FeatureCode("set-forward", kind, "102")
    # outside numbers and E.164 targets
    assert parse_feature(f"*{code}*95551234#") == FeatureCode("set-forward", kind, "95551234")
    assert parse_feature(f"*{code}*%2B8610123#") == FeatureCode("set-forward", kind, "+8610123")


@pytest.mark.parametrize(("code", "kind"), KINDS)
def test_feature_clear(code: str, kind: str) -> None:
    assert parse_feature(f"*{code}#") == FeatureCode("clear-forward", kind)
    assert parse_feature(f"*{code}%23") == FeatureCode("clear-forward", kind)


@pytest.mark.parametrize("code", ["*90", "*90*102"])
def test_feature_without_the_closing_hash(code: str) -> None:
    """Phones that use # as their send key do not send it: the code still works."""
    feature = parse_feature(code)
    assert feature is not None and feature.kind == "unconditional"
    assert feature.target == ("102" if "*102" in code else None)


@pytest.mark.parametrize("code", [
    "", "*", "*9", "#90#", "90*102#", "*94*102#", "*89*102#", "*9a*102#",
    "*90*#", "*90**#", "*90*1a2#", "*90*102#5", "*90102#", "*90#102", "*90##", "**90*102#",
])
def test_feature_garbage(code: str) -> None:
    assert parse_feature(code) is None
