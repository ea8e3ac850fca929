"""`read_head`, the express paths' line reader, against the plain reading it replaces:
every header name looked up by its text and every value stripped of LWS.

`read_head` matches a line's name against the last name seen in the same slot (its
length, and its first and last letters mixed: `HeaderTable.spelled`) and takes "Name:
value" with one slice. These tests give it names that share a slot but differ (`twin`),
names of the same length and first letter, spellings in other cases, and every spacing
around the colon and at the end of the line, in several orders, so that each line meets
a slot learned from another; the result must be what the plain reading gives."""

from __future__ import annotations

import itertools
import random

import pytest

from appliance.sip.express import HeaderTable, read_head

CODES = {"via": 1, "from": 2, "to": 3, "call-id": 4, "cseq": 5, "contact": 6,
         "require": -1, "content-type": -1}


def plain(lines: list[str], table: HeaderTable) -> tuple | None:
    """The reading before the slots, of the header `lines` of `request(lines)`: each
    name by `table.code`, each value stripped of LWS."""
    values: list[str | None] = [None] * table.count
    for line in lines:
        if line[0] in " \t":
            return None
        colon = line.find(":")
        if colon <= 0:
            return None
        code = table.code(line[:colon])
        if code < 0:
            return None
        if code == 0:
            continue
        if values[code] is not None:
            return None
        values[code] = line[colon + 1:].strip(" \t")
    return "sip:b", values, 0




def twin(name: str) -> str:
    """Another name in `name`'s slot: the same length, other first and last letters
    whose mix is the same (`read_head`: (first + 3 * last) & 127)."""
    target = (ord(name[0]) + 3 * ord(name[-1])) & 127
    for last in "abcdefghijklmnopqrstuvwxyz":
        first = chr((target - 3 * ord(last)) & 127)
        if first.isascii() and first.isalpha() and last != name[-1]:
            return first + name[1:-1] + last
    raise AssertionError(name)


# Names that share a slot with a kept one (twins), share its length and first letter,
# or spell it otherwise.
KEPT = ["Via", "From", "To", "Call-ID", "CSeq", "Contact", "Require", "Content-Type"]
NAMES = ["Via", "VIA", "via", "Vix", "Vi", "v", "From", "FROM", "Frum", "f", "To", "TO", "Tx",
         "t", "Call-ID", "Call-Id", "CALL-ID", "Call-IX", "i", "CSeq", "Cseq", "CSeX",
         "Contact", "Contacx", "m", "Require", "Requirx", "Content-Type", "Content-Typx",
         "Subject", "X-Foo", "Via ", "Via\t", "To  ", "Max-Forwards",
         *(twin(name) for name in KEPT)]
# What follows the colon, and what ends the line.
SPACINGS = [("", ""), (" ", ""), ("  ", ""), ("\t", ""), (" \t", ""), (" ", " "),
            (" ", "\t"), ("", " "), (" ", "  ")]
VALUES = ["x", "ab", "sip:a@b;tag=1", " ", "", "a b", "a\tb"]


def request(lines: list[str]) -> bytes:
    return ("REGISTER sip:b SIP/2.0\r\n" + "".join(line + "\r\n" for line in lines)
            + "\r\n").encode()


def test_each_name_spacing_and_value_reads_as_the_plain_reading() -> None:
    table = HeaderTable(CODES)
    reference = HeaderTable(CODES)
    for name, (before, after), value in itertools.product(NAMES, SPACINGS, VALUES):
        lines = [f"{name}:{before}{value}{after}"]
        assert read_head(request(lines), "REGISTER", table) == plain(lines, reference), lines


@pytest.mark.parametrize("seed", range(40))
def test_heads_of_mixed_lines_read_as_the_plain_reading(seed: int) -> None:
    rng = random.Random(seed)
    table = HeaderTable(CODES)
    reference = HeaderTable(CODES)
    for _ in range(300):
        lines = []
        for _ in range(rng.randint(1, 7)):
            before, after = rng.choice(SPACINGS)
            lines.append(f"{rng.choice(NAMES)}:{before}{rng.choice(VALUES)}{after}")
        assert read_head(request(lines), "REGISTER", table) == plain(lines, reference), lines


@pytest.mark.parametrize("other", [twin("Via"), "Vix"])
def test_a_name_sharing_a_slot_is_not_taken_for_the_kept_one(other: str) -> None:
    """A twin of "Via" (its slot), or "Vix" (its length and first letter), after "Via":
    ignored, not a second Via."""
    assert len(other) == 3 and other.lower() != "via"
    table = HeaderTable(CODES)
    read = read_head(request(["Via: a", f"{other}: b", "Via:c"]), "REGISTER", table)
    assert read is None  # the third line is a second Via
    read = read_head(request(["Via: a", f"{other}: b"]), "REGISTER", table)
    assert read is not None and read[1][1] == "a"
    read = read_head(request([f"{other}: b", "VIA: a "]), "REGISTER", table)
    assert read is not None and read[1][1] == "a"


def test_a_body_that_ends_with_crlfcrlf_is_not_read_as_head() -> None:
    """A bodiless head ends the datagram, which `read_head` checks first; a body that
    itself ends with CRLFCRLF must not make the head run on into it."""
    head = "REGISTER sip:b SIP/2.0\r\nVia: a\r\nContent-Length: 6\r\n\r\n"
    table = HeaderTable(CODES)
    assert read_head((head + "ab\r\n\r\n").encode(), "REGISTER", table) is None
    read = read_head((head + "ab\r\ncd").encode(), "REGISTER", table)
    assert read is not None and read[1][1] == "a" and read[2] == 6
    read = read_head(head.encode(), "REGISTER", table)
    assert read is not None and read[1][1] == "a" and read[2] == 0


@pytest.mark.parametrize("bare", ["\r", "\n"])
def test_a_bare_cr_or_lf_anywhere_in_the_head_is_not_read(bare: str) -> None:
    """§7.5: lines end with CRLF; a lone CR or LF anywhere gives the general path the
    datagram (which refuses it)."""
    text = "REGISTER sip:b SIP/2.0\r\nVia: a\r\nTo: b"
    table = HeaderTable(CODES)
    assert read_head((text + "\r\n\r\n").encode(), "REGISTER", table) is not None
    for at in range(len(text) + 1):
        data = (text[:at] + bare + text[at:] + "\r\n\r\n").encode()
        if b"\r\n\r\n" in data[:-4] or data.endswith(b"\r\n\r\n\r\n"):
            continue  # the bare one completed a CRLF: the head ends elsewhere
        if bare == "\n" and text[at - 1:at] == "\r" or bare == "\r" and text[at:at + 1] == "\n":
            continue  # it made a CRLF of a CR or LF next to it: not bare
        assert read_head(data, "REGISTER", table) is None, data
