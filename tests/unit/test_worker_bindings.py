"""When binding changes cross between the daemon and its SIP workers (appliance/workers.py,
b"B"): a new binding leaves before the process that made it answers the REGISTER, so the
daemon (to which a worker without the binding hands a call) always has it first."""

from __future__ import annotations

import asyncio
import time

from appliance.bus import Bus
from appliance.pbx.location import Binding, Location
from appliance.sip.transaction import Peer
from appliance.workers import REFRESH_SYNC, WorkerPool, _Outbox, decode_ops


def binding(contact: str) -> Binding:
    return Binding(contact, time.time() + 60, "cid", 1, Peer("udp", "127.0.0.1", 5062))


def test_a_worker_sends_a_new_binding_at_once_and_a_refresh_later() -> None:
    async def run() -> None:
        sent: list[bytes] = []
        outbox = _Outbox(sent.append)
        outbox.add(["put", "101", binding("sip:101@127.0.0.1:5062")], at_once=True)
        # on the channel before add returns: before the 200 to the REGISTER is sent
        assert [op[0] for m in sent for op in decode_ops(m)] == ["put"]
        outbox.add(["ref", "101", binding("sip:101@127.0.0.1:5062")])
        await asyncio.sleep(0)
        assert len(sent) == 1  # a refresh waits for REFRESH_SYNC
        await asyncio.sleep(REFRESH_SYNC + 0.1)
        assert [op[0] for op in decode_ops(sent[1])] == ["ref"]
    asyncio.run(run())


def test_the_daemon_passes_its_own_changes_at_once_and_a_worker_s_batch_whole() -> None:
    async def run() -> None:
        location = Location(None)
        pool = WorkerPool(2, ["unused"], location, Bus(), lambda data, peer: None)
        sent: dict[int, list[bytes]] = {1: [], 2: []}

        class Open:
            closed = False
        for w in pool.workers:
            w.channel = Open()  # type: ignore[assignment]
            w.outbox = _Outbox(sent[w.index].append)

        # a binding the daemon made (its registrar): to both workers before put returns
        location.put("100", binding("sip:100@127.0.0.1:5070"))
        assert [len(sent[1]), len(sent[2])] == [1, 1]

        # three changes from worker 1: applied, then to worker 2 in one message, not back
        pool._apply(1, [["put", "101", binding(f"sip:101@127.0.0.1:{p}")]
                        for p in (5071, 5072, 5073)])
        assert len(sent[1]) == 1
        assert len(sent[2]) == 2 and len(decode_ops(sent[2][1])) == 3
        assert len(location.bindings("101", time.time())) == 3
        await asyncio.sleep(0)  # nothing left for the end of the loop's turn
        assert [len(sent[1]), len(sent[2])] == [1, 2]
    asyncio.run(run())


def test_each_kind_of_change_crosses_as_it_was_made() -> None:
    """b"B" (marshal): every field of a new binding, odd text included, and the other
    kinds as they were given."""
    from appliance.workers import encode_ops
    b = Binding("sip:101@[2001:db8::5]:5062;ob", 1_795_828_754.25, 'a"b\x1fc,]}', 2**31,
                Peer("udp", "2001:db8::5", 5062), 0.5, ["<sip:p1;lr>", "<sip:p2;lr>"],
                "Télé\u00e9phone/1.0 \x00")
    ops = [["put", "101", b], ["ref", "101", b], ["del", "101", b.contact], ["clr", "102"]]
    (msg,) = encode_ops(ops)
    put, ref, gone, clr = decode_ops(msg)
    got = put[2]
    assert put[:2] == ["put", "101"]
    assert (got.contact, got.expires_at, got.call_id, got.cseq, got.peer, got.q, got.path,
            got.user_agent) == (b.contact, b.expires_at, b.call_id, b.cseq, b.peer, b.q,
                                b.path, b.user_agent)
    assert ref == ["ref", "101", b.contact, b.expires_at, b.call_id, b.cseq]
    assert gone == ["del", "101", b.contact] and clr == ["clr", "102"]
