"""Full collections wait for an idle second, or ten minutes of unbroken load."""

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
