"""What the message parser and writer do with line breaks, CSeq methods and header names,
stated as expected text: the checks the general path makes on every datagram (§7.5 line
breaks, §20.16 CSeq, §7.3.1 header names as written back)."""

from __future__ import annotations

import pytest

from appliance.sip.message import (
    Headers,
    ParseError,
    Request,
    Response,
    parse_message,
    validate_request,
)

HEAD = ("OPTIONS sip:100@127.0.0.1 SIP/2.0", "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1",
        "From: <sip:200@127.0.0.1>;tag=a", "To: <sip:100@127.0.0.1>", "Call-ID: c1",
        "CSeq: 1 OPTIONS", "Max-Forwards: 70")


def _datagram(breaks: list[str]) -> bytes:
    """HEAD with `breaks[i]` after line i, then an empty line."""
    return ("".join(line + brk for line, brk in zip(HEAD, breaks, strict=True))
            + "Content-Length: 0\r\n\r\n").encode()


@pytest.mark.parametrize("where", range(len(HEAD)))
def test_a_bare_cr_anywhere_in_the_head_is_refused(where: int) -> None:
    breaks = ["\r\n"] * len(HEAD)
    breaks[where] = "\r"
    with pytest.raises(ParseError, match="Bare CR"):
        parse_message(_datagram(breaks))


@pytest.mark.parametrize("inside", ["Call-ID: c\r1", "Call-ID: c1\r\r"])
def test_a_cr_inside_a_line_is_refused(inside: str) -> None:
    data = _datagram(["\r\n"] * len(HEAD)).replace(b"Call-ID: c1\r\n", inside.encode() + b"\n")
    with pytest.raises(ParseError, match="Bare CR"):
        parse_message(data)


@pytest.mark.parametrize("where", [*range(len(HEAD)), "all"])
def test_bare_lf_line_ends_are_tolerated(where: int | str) -> None:
    breaks = ["\n" if where in ("all", i) else "\r\n" for i in range(len(HEAD))]
    msg = parse_message(_datagram(breaks))
    assert isinstance(msg, Request) and msg.method == "OPTIONS"
    assert msg.call_id == "c1" and msg.cseq == (1, "OPTIONS")
    assert msg.headers.get("max-forwards") == "70" and validate_request(msg) is None


def test_crlf_line_ends_parse_every_header() -> None:
    msg = parse_message(_datagram(["\r\n"] * len(HEAD)))
    assert [k for k, _ in msg.headers.items()] == [
        "via", "from", "to", "call-id", "cseq", "max-forwards", "content-length"]


KNOWN = ["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE",
         "NOTIFY", "UPDATE", "MESSAGE", "REFER", "INFO", "PUBLISH"]


@pytest.mark.parametrize("method", [*KNOWN, "invite", "FOO", "X-Y.Z!%*_+`'~", "A1"])
def test_a_cseq_method_that_is_a_token_is_read(method: str) -> None:
    data = _datagram(["\r\n"] * len(HEAD)).replace(b"CSeq: 1 OPTIONS", f"CSeq: 7 {method}".encode())
    assert parse_message(data).cseq == (7, method)


@pytest.mark.parametrize("method", ["INV@ITE", "BYE;", "A/B", "\"ACK\"", "IN(VITE", "É"])
def test_a_cseq_method_that_is_no_token_is_malformed(method: str) -> None:
    data = _datagram(["\r\n"] * len(HEAD)).replace(b"CSeq: 1 OPTIONS", f"CSeq: 7 {method}".encode())
    msg = parse_message(data)
    with pytest.raises(ParseError, match="Malformed CSeq"):
        _ = msg.cseq
    assert validate_request(msg) == (400, "Malformed CSeq")


def test_to_bytes_writes_each_header_by_its_canonical_name_in_order() -> None:
    h = Headers()
    for name, value in (("v", "SIP/2.0/UDP h;branch=z9hG4bK2"), ("call-id", "x"),
                        ("x-custom-thing", "1"), ("www-authenticate", "Digest a=b"),
                        ("content-length", "99"), ("cseq", "2 BYE"), ("via", "SIP/2.0/UDP g"),
                        ("cseq", "again")):
        h.add(name, value)
    resp = Response(200, "OK", h, b"body")
    assert resp.to_bytes() == (
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK2\r\nCall-ID: x\r\n"
        b"X-Custom-Thing: 1\r\nWWW-Authenticate: Digest a=b\r\nCSeq: 2 BYE\r\n"
        b"Via: SIP/2.0/UDP g\r\nCSeq: again\r\nContent-Length: 4\r\n\r\nbody")
    assert str(resp) == resp.to_bytes().decode()


def test_to_bytes_of_a_request_without_headers() -> None:
    assert Request("BYE", "sip:a@b").to_bytes() == (
        b"BYE sip:a@b SIP/2.0\r\nContent-Length: 0\r\n\r\n")


def test_to_bytes_keeps_undecodable_bytes_as_read() -> None:
    data = _datagram(["\r\n"] * len(HEAD)).replace(b"Call-ID: c1", b"Call-ID: c\xff1")
    assert parse_message(data).to_bytes() == data


@pytest.mark.parametrize("method", [*KNOWN, "FOO", "X-Y.Z!%*_+`'~", "invite"])
def test_a_request_line_method_that_is_a_token_is_read(method: str) -> None:
    data = _datagram(["\r\n"] * len(HEAD)).replace(b"OPTIONS sip:", f"{method} sip:".encode())
    msg = parse_message(data)
    assert isinstance(msg, Request) and msg.method == method


@pytest.mark.parametrize("method", ["INV@ITE", "BYE;", "A/B", "\"ACK\"", "IN(VITE", "É"])
def test_a_request_line_method_that_is_no_token_is_malformed(method: str) -> None:
    data = _datagram(["\r\n"] * len(HEAD)).replace(b"OPTIONS sip:", f"{method} sip:".encode())
    with pytest.raises(ParseError, match="Malformed method"):
        parse_message(data)
