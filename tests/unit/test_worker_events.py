"""A SIP worker's call events reach the daemon's bus (appliance/workers.py, b"E")."""

from __future__ import annotations

import asyncio
import socket

from appliance.bus import Bus, CallAnswered, CallEnded, DtmfReceived, ExtensionRegistered
from appliance.pbx.location import Location
from appliance.workers import Channel, WorkerPool, _EventOutbox, decode_events, encode_events


def test_call_events_cross_as_they_were_and_nothing_else_does() -> None:
    events = [CallAnswered("c1", "100", "101"),
              CallEnded("c1", "100", "101", 200, "hangup", 12.5),
              DtmfReceived("c1", "a", "5", "info")]
    assert decode_events(encode_events(events)) == events
    # a name that is not a call event (a registration is announced by the daemon itself)
    assert decode_events(encode_events([ExtensionRegistered("100", "sip:x", 60)])) == []


def test_events_of_one_loop_turn_go_in_one_message_and_the_daemon_publishes_them() -> None:
    async def run() -> list[object]:
        published: list[object] = []
        bus = Bus()
        bus.subscribe(None, published.append)
        pool = WorkerPool(1, ["unused"], Location(None), bus, lambda data, peer: None)
        worker = pool.workers[0]
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        messages: list[bytes] = []
        worker.channel = Channel(ours, lambda m: (messages.append(m),
                                                  pool._received(worker, m)), lambda: None)
        sender = Channel(theirs, lambda m: None, lambda: None)
        outbox = _EventOutbox(sender.send)
        outbox.add(CallAnswered("c1", "100", "101"))
        outbox.add(CallEnded("c1", "100", "101", 200, "hangup", 1.0))
        for _ in range(50):
            await asyncio.sleep(0.01)
            if published:
                break
        assert len(messages) == 1 and messages[0][:1] == b"E"
        sender.close()
        worker.channel.close()
        return published

    assert asyncio.run(run()) == [CallAnswered("c1", "100", "101"),
                                  CallEnded("c1", "100", "101", 200, "hangup", 1.0)]
