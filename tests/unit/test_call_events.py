"""A call's events on the bus (appliance/bus.py): whoever subscribes, to the kind or to
everything, gets CallRinging, CallAnswered and CallEnded with the call's fields; the
call path builds none while nobody listens (`Bus.wants`). The call is the bench's, fed
datagram by datagram to the daemon's message path (bench/inprocess.py)."""

from __future__ import annotations

import asyncio

import pytest

from appliance.bus import Bus, CallAnswered, CallEnded, CallRinging, ExtensionRegistered
from bench.inprocess import Box


def test_wants_is_true_only_for_what_someone_hears() -> None:
    bus = Bus()
    assert not bus.wants(CallEnded)
    bus.subscribe(CallRinging, lambda e: None)
    assert bus.wants(CallRinging) and not bus.wants(CallEnded)
    bus.subscribe(None, lambda e: None)
    assert bus.wants(CallEnded) and bus.wants(ExtensionRegistered)


@pytest.mark.parametrize("kinds", [None, (CallRinging, CallAnswered, CallEnded), (CallEnded,)])
def test_a_call_publishes_its_events_to_subscribers(kinds: tuple[type, ...] | None) -> None:
    async def run() -> list[object]:
        box = Box(set())
        box.register_callee()
        heard: list[object] = []
        for kind in kinds or (None,):
            box.pbx.bus.subscribe(kind, heard.append)
        box.call(1)
        box.call(2)
        return heard

    heard = asyncio.run(run())
    expected: list[object] = []
    for i in (1, 2):
        call_id = f"{i}-call@127.0.0.1"
        expected += [CallRinging(call_id, "1000", "2000"), CallAnswered(call_id, "1000", "2000")]
        ended = [e for e in heard if isinstance(e, CallEnded) and e.call_id == call_id]
        assert len(ended) == 1 and ended[0].status == 200 and ended[0].reason == "hangup"
        expected.append(ended[0])
    assert heard == [e for e in expected if kinds is None or type(e) in kinds]


def test_a_call_without_subscribers_completes() -> None:
    async def run() -> Box:
        box = Box(set())
        box.register_callee()
        box.call(1)
        return box

    box = asyncio.run(run())
    assert not box.pbx.bus.wants(CallEnded) and not box.pbx.calls
