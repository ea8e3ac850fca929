"""RFC 4475 SIP torture test messages against appliance.sip.message.

The messages in tests/data/rfc4475/*.dat were extracted byte for byte from the
archive in RFC 4475 Appendix A; tests/data/rfc4475/expected.yaml records, for
each one, what the RFC says an element must do with it (and quotes the RFC).
Its header comment documents the schema this module interprets.
"""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.sip.message import ParseError, Request, Response, parse_message, validate_request

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "rfc4475"
EXPECTED: dict[str, Any] = yaml.safe_load((DATA_DIR / "expected.yaml").read_text(encoding="utf-8"))
MESSAGES: dict[str, dict[str, Any]] = EXPECTED["messages"]
NAMES = sorted(MESSAGES)

# 49 messages described in RFC 4475 section 3, plus test.dat, which the
# Appendix A archive carries without any section describing it.
ARCHIVE_MEMBERS = 50

_WS = re.compile(r"[ \t\r\n]+")


def _data(name: str) -> bytes:
    return (DATA_DIR / f"{name}.dat").read_bytes()


def _norm(value: str) -> str:
    """Collapse runs of SP/HTAB/CR/LF (folding, LWS) into one SP."""
    return _WS.sub(" ", value).strip()


def _codes(value: int | list[int]) -> list[int]:
    return list(value) if isinstance(value, list) else [value]


def _unquote(text: str) -> str:
    """Resolve quoted-pairs (RFC 3261 section 25.1)."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            i += 1
        out.append(text[i])
        i += 1
    return "".join(out)


def _display_matches(actual: str | None, expected: str | None) -> bool:
    """A display name compares equal whether or not the implementation has
    already removed the quotes and resolved the quoted-pairs."""
    if expected is None:
        return actual in (None, "")
    if actual is None:
        return False
    candidates = {actual, _unquote(actual), _norm(actual)}
    if len(actual) >= 2 and actual[0] == '"' and actual[-1] == '"':
        candidates.add(_unquote(actual[1:-1]))
    return expected in candidates


def _param_matches(actual: Any, expected: str | None) -> bool:
    if expected is None:  # a parameter without a value
        return actual in (None, "")
    return actual == expected


def _params_get(params: dict, name: str) -> tuple[bool, Any]:
    for key, value in params.items():
        if key.lower() == name.lower():
            return True, value
    return False, None


def _parse(data: bytes) -> tuple[Request | Response | None, ParseError | None]:
    try:
        return parse_message(data), None
    except ParseError as e:
        return None, e


def _check_reason(reason: Any, what: str) -> None:
    assert isinstance(reason, str) and reason.strip(), f"{what}: empty reason phrase {reason!r}"


# -- facts ----------------------------------------------------------------------

def _check_name_addr(label: str, actual, expected: dict[str, Any]) -> None:
    if "uri" in expected:
        assert actual.uri == expected["uri"], f"{label}.uri"
    if "tag" in expected:
        assert actual.tag == expected["tag"], f"{label}.tag"
    if "display" in expected:
        assert _display_matches(actual.display, expected["display"]), (
            f"{label}.display: {actual.display!r} != {expected['display']!r}")


def _check_via(index: int, via, expected: dict[str, Any]) -> None:
    label = f"via[{index}]"
    if "transport" in expected:
        assert via.transport.upper() == expected["transport"].upper(), f"{label}.transport"
    if "host" in expected:
        assert via.host.lower() == expected["host"].lower(), f"{label}.host"
    if "port" in expected:
        assert via.port == expected["port"], f"{label}.port"
    if "branch" in expected:
        assert via.branch == expected["branch"], f"{label}.branch"
    for name, value in expected.get("params", {}).items():
        present, actual = _params_get(via.params, name)
        assert present, f"{label}: parameter {name!r} missing from {via.params!r}"
        assert _param_matches(actual, value), f"{label}.params[{name!r}]: {actual!r} != {value!r}"


def _check_facts(msg: Request | Response, facts: dict[str, Any]) -> None:
    for key, expected in facts.items():
        if key == "method":
            assert isinstance(msg, Request), f"expected a request, got {msg!r}"
            assert msg.method == expected, "method"
        elif key == "uri":
            assert isinstance(msg, Request), f"expected a request, got {msg!r}"
            assert msg.uri == expected, "Request-URI"
        elif key == "version":
            assert msg.version == expected, "SIP-Version"
        elif key == "status":
            assert isinstance(msg, Response), f"expected a response, got {msg!r}"
            assert msg.status == expected, "Status-Code"
        elif key == "reason":
            assert isinstance(msg, Response), f"expected a response, got {msg!r}"
            assert _norm(msg.reason) == _norm(expected), f"Reason-Phrase {msg.reason!r}"
        elif key == "call_id":
            assert msg.call_id == expected, "Call-ID"
        elif key == "cseq":
            assert tuple(msg.cseq) == (expected[0], expected[1]), "CSeq"
        elif key == "via_count":
            assert len(msg.vias) == expected, "number of Via values"
        elif key == "via":
            vias = msg.vias
            for index, fields in expected.items():
                assert index < len(vias), f"no Via value #{index} (only {len(vias)})"
                _check_via(index, vias[index], fields)
        elif key == "from":
            _check_name_addr("From", msg.from_, expected)
        elif key == "to":
            _check_name_addr("To", msg.to, expected)
        elif key == "headers":
            for name, value in expected.items():
                actual = msg.headers.get(name)
                if value is None:
                    assert actual is None, f"header {name!r} should be absent, is {actual!r}"
                else:
                    assert actual is not None, f"header {name!r} missing"
                    assert _norm(actual) == _norm(value), f"header {name!r}: {actual!r}"
        elif key == "header_values":
            for name, values in expected.items():
                actual = [_norm(v) for v in msg.headers.get_all(name)]
                assert actual == [_norm(v) for v in values], f"header {name!r} values"
        elif key == "header_counts":
            for name, count in expected.items():
                assert len(msg.headers.get_all(name)) == count, f"number of {name!r} values"
        elif key == "body_length":
            assert len(msg.body) == expected, "body length"
        elif key == "body_sha256":
            assert hashlib.sha256(bytes(msg.body)).hexdigest() == expected, "body bytes"
        else:
            raise AssertionError(f"expected.yaml: unknown fact {key!r}")


# -- the table is intact -----------------------------------------------------------

def test_corpus_matches_the_archive() -> None:
    on_disk = sorted(p.stem for p in DATA_DIR.glob("*.dat"))
    assert on_disk == NAMES, "every .dat file has exactly one entry in expected.yaml"
    assert len(NAMES) == ARCHIVE_MEMBERS
    described = [n for n in NAMES if MESSAGES[n]["section"] is not None]
    assert len(described) == ARCHIVE_MEMBERS - 1
    for name in NAMES:
        digest = hashlib.sha256(_data(name)).hexdigest()
        assert digest == MESSAGES[name]["sha256"], f"{name}.dat is not the RFC's bytes"


# -- what the RFC prescribes for each message -----------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_rfc4475_message(name: str) -> None:
    entry = MESSAGES[name]
    data = _data(name)
    assert hashlib.sha256(data).hexdigest() == entry["sha256"], f"{name}.dat was altered"
    expect = entry["expect"]
    facts = entry.get("facts", {})
    where = f"{name} (RFC 4475 section {entry['section']})"
    msg, err = _parse(data)

    if expect == "parse" or (isinstance(expect, dict) and expect.get("parse")):
        assert err is None, f"{where}: must parse, got ParseError({err.status}, {err.reason!r})"
        _check_facts(msg, facts)
        then = expect.get("then") if isinstance(expect, dict) else None
        if then == "drop":
            assert isinstance(msg, Response), f"{where}: expected a response, got {msg!r}"
            return
        if isinstance(msg, Response):
            assert then is None and "validate" not in entry, f"{where}: expected a request"
            return
        result = validate_request(msg)
        if then is not None:
            allowed = _codes(then["respond"])
            assert result is not None, f"{where}: validate_request accepted it, expected {allowed}"
        else:
            allowed = entry.get("validate", [None])
        status = None if result is None else result[0]
        assert status in allowed, f"{where}: validate_request gave {result!r}, allowed {allowed}"
        if result is not None:
            _check_reason(result[1], where)
        return

    if "respond" in expect:
        codes = _codes(expect["respond"])
        if err is not None:
            assert err.status in codes, (
                f"{where}: ParseError({err.status}, {err.reason!r}), expected {codes}")
            _check_reason(err.reason, where)
            return
        assert isinstance(msg, Request), f"{where}: expected a request, got {msg!r}"
        result = validate_request(msg)
        if result is None and "liberal" in entry:
            # The RFC allows this element to be liberal; then it must get it right.
            _check_facts(msg, entry["liberal"])
            return
        assert result is not None, f"{where}: accepted, but the RFC prescribes {codes}"
        assert result[0] in codes, f"{where}: validate_request gave {result!r}, expected {codes}"
        _check_reason(result[1], where)
        return

    if expect.get("drop"):
        if err is not None:
            _check_reason(err.reason, where)
            return
        assert isinstance(msg, Response), f"{where}: a response to drop parsed as {msg!r}"
        return

    if expect.get("reject"):
        if err is not None:
            _check_reason(err.reason, where)
            return
        assert isinstance(msg, Request), f"{where}: parsed as {msg!r}"
        result = validate_request(msg)
        assert result is not None, f"{where}: accepted a message that is not valid SIP"
        _check_reason(result[1], where)
        return

    raise AssertionError(f"expected.yaml: {name}: unknown expectation {expect!r}")


# -- robustness: nothing but ParseError ever escapes ------------------------------------

# Bytes that tend to matter to a SIP parser, mixed into the random flips.
_INTERESTING = b"\r\n\t\x00 :;,=<>\"\\%@/?-0123456789\x7f\x80\xc3\xff"
_FLIPS_PER_MESSAGE = 64


def _variants(name: str, data: bytes):
    yield "original", data
    for i in range(len(data)):
        yield f"prefix[:{i}]", data[:i]
    rng = random.Random(f"rfc4475/{name}")  # fixed seed: the same inputs every run
    for n in range(_FLIPS_PER_MESSAGE):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(mutated))
            roll = rng.random()
            if roll < 0.4:
                mutated[pos] = rng.choice(_INTERESTING)
            elif roll < 0.7:
                mutated[pos] ^= 1 << rng.randrange(8)
            else:
                mutated[pos] = rng.randrange(256)
        yield f"flip#{n}", bytes(mutated)


def _exercise(data: bytes) -> None:
    """Parse, read the structured views and validate; only ParseError may escape
    from parse_message and the views, and validate_request must answer."""
    try:
        msg = parse_message(data)
    except ParseError as e:
        assert isinstance(e.status, int) and 400 <= e.status <= 699, f"ParseError.status {e.status!r}"
        assert isinstance(e.reason, str) and e.reason, "ParseError without a reason"
        return
    assert isinstance(msg, Request | Response), f"parse_message returned {msg!r}"
    for attr in ("call_id", "cseq", "vias", "from_", "to"):
        try:
            getattr(msg, attr)
        except ParseError:
            pass
    if isinstance(msg, Request):
        result = validate_request(msg)
        assert result is None or (
            isinstance(result, tuple) and isinstance(result[0], int) and isinstance(result[1], str)
            and result[1]), f"validate_request returned {result!r}"


@pytest.mark.parametrize("name", NAMES)
def test_rfc4475_mutations_raise_only_parse_error(name: str) -> None:
    data = _data(name)
    failures: list[str] = []
    for label, variant in _variants(name, data):
        try:
            _exercise(variant)
        except Exception as e:  # anything else is the bug being looked for
            failures.append(f"{label}: {type(e).__name__}: {e} <- {variant[:80]!r}...")
            if len(failures) >= 10:
                break
    assert not failures, f"{name}: {len(failures)} input(s) escaped ParseError:\n" + "\n".join(failures)
