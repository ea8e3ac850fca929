"""parse_message's header names against the plain reading they replace: each name cut
at its colon, stripped of trailing LWS, lowercased and its compact form expanded.

parse_message matches a line's name against the last name seen in the same slot (its
length, and its first and last letters mixed: `_SPELLED`), so these tests give it names
that share a slot but differ (`twin`), names of the same length and first letter,
compact forms, other cases and LWS before the colon, in several orders, so that each
line meets a slot learned from another; the result must be what the plain reading
gives."""

from __future__ import annotations

import random

import pytest

from appliance.sip.message import _key, parse_message
from tests.unit.test_express_head import twin  # the same slot's mix as read_head's


def plain(lines: list[str]) -> list[tuple[str, str]]:
    items = []
    for line in lines:
        colon = line.find(":")
        items.append((_key(line[:colon].rstrip(" \t")), line[colon + 1:].strip(" \t")))
    return items


def parsed(lines: list[str]) -> list[tuple[str, str]]:
    data = ("OPTIONS sip:b@h SIP/2.0\r\n" + "\r\n".join(lines) + "\r\n\r\n").encode()
    return list(parse_message(data).headers.items())


# (not Content-Length: a second one is refused, and it bounds the body)
KNOWN = ["Via", "From", "To", "Call-ID", "CSeq", "Contact", "Max-Forwards",
         "Content-Type", "Record-Route", "Accept"]
NAMES = [*KNOWN, *(twin(n) for n in KNOWN), *(n.upper() for n in KNOWN),
         *(n.lower() for n in KNOWN), "v", "f", "t", "i", "m", "c", "Vix", "Cal-ID",
         "Via ", "From\t", "X-Long-Header-Name-Longer-Than-Thirty-Two"]


@pytest.mark.parametrize("seed", range(40))
def test_heads_of_mixed_names_read_as_the_plain_reading(seed: int) -> None:
    rng = random.Random(seed)
    lines = [f"{rng.choice(NAMES)}:{rng.choice(['', ' ', '  '])}value {n}"
             for n in range(rng.randrange(1, 30))]
    assert parsed(lines) == plain(lines)


@pytest.mark.parametrize("name", KNOWN)
def test_a_name_sharing_a_slot_is_not_taken_for_the_one_seen_there(name: str) -> None:
    """The twin comes right after the name it shares a slot with, and the other way round."""
    other = twin(name)
    for lines in ([f"{name}: a", f"{other}: b", f"{name}: c"],
                  [f"{other}: a", f"{name}: b", f"{other}: c"]):
        assert parsed(lines) == plain(lines)
        assert parsed(lines)[1][0] != parsed(lines)[0][0]


def test_a_name_with_lws_before_its_colon_is_read_as_the_name() -> None:
    lines = ["Via : SIP/2.0/UDP h", "Via: SIP/2.0/UDP g", "Via\t: SIP/2.0/UDP k"]
    assert parsed(lines) == [("via", "SIP/2.0/UDP h"), ("via", "SIP/2.0/UDP g"),
                             ("via", "SIP/2.0/UDP k")]
