"""The collector policy: gen0 only automatically, full collections when idle or after ten
minutes of load, and the hot paths leave no cyclic garbage for the full one to find."""

import asyncio
import gc

from appliance import gcpolicy


def test_full_collection_when_idle_or_after_ten_minutes(monkeypatch):
    runs = []
    monkeypatch.setattr(gc, "collect", lambda *a: runs.append(a) or 0)
    clock = [0.0]
    full = gcpolicy.FullCollections(clock=lambda: clock[0])
    received = 0
    for _ in range(int(gcpolicy.BUSY_EVERY) - 1):   # busy: a message every second
        clock[0] += 1.0
        received += 5
        assert not full.tick(received)
    clock[0] += 1.0
    received += 5
    assert full.tick(received) and runs == [()]   # ten minutes of load: now
    clock[0] += gcpolicy.IDLE_EVERY - 1
    assert not full.tick(received)   # idle, but the last one is too recent
    clock[0] += 1.0
    assert full.tick(received)       # idle and a minute since
    clock[0] += 1.0
    assert not full.tick(received)
    assert len(runs) == 2


def test_start_freezes_and_sets_thresholds(monkeypatch):
    old = gc.get_threshold()
    try:
        gcpolicy.start()
        assert gc.get_threshold() == gcpolicy.THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*old)


def test_only_gen0_is_collected_automatically():
    """Survivors of gen0 are not walked again before a full collection."""
    old = gc.get_threshold()
    seen: list[int] = []

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            seen.append(info["generation"])

    try:
        gcpolicy.start()
        gc.callbacks.append(callback)
        kept = [[] for _ in range(50 * gcpolicy.THRESHOLDS[0])]  # fifty gen0 collections' worth
        assert kept and seen and set(seen) == {0}
    finally:
        if callback in gc.callbacks:
            gc.callbacks.remove(callback)
        gc.unfreeze()
        gc.set_threshold(*old)


def test_registrations_leave_no_cyclic_garbage():
    """The policy leaves cycles among older objects to the full collection: the
    registrar's two paths must make none (a challenge, a registration, a refresh)."""
    from tests.unit.test_register_express import PASSWORDS, PHONES, Box, _datagram, authorization

    boxes = []
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    gc.collect()
    gc.disable()
    try:
        for express in (True, False):
            box = Box(express=express)
            boxes.append(box)
            gc.collect()
            for n in range(1, 201):
                box.feed(_datagram(PHONES[0], n, None))
                answer = box.feed(_datagram(PHONES[0], n, authorization(box, "1000",
                                                                      PASSWORDS["1000"])))
                assert answer[0][1].startswith(b"SIP/2.0 200 OK")
            box.endpoint.layer.handle_timer(box.endpoint.now + 100.0)  # Timer J ends them
            assert gc.collect() == 0, "cyclic garbage from the registrar"
    finally:
        gc.enable()
        asyncio.set_event_loop(None)
        loop.close()
    assert boxes[0].served == 400 and boxes[1].served == 0
