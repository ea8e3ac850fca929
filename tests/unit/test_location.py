"""The location service's persistence cadence: structural changes at once, refreshes later."""

from appliance.pbx import location as location_mod
from appliance.pbx.location import Binding, Location
from appliance.sip.transaction import Peer

PHONE = Peer("udp", "127.0.0.1", 5070)


def binding(expires_at: float, cseq: int, peer: Peer = PHONE) -> Binding:
    return Binding("sip:100@127.0.0.1:5070", expires_at, "call-1", cseq, peer)


def test_refresh_waits_but_new_and_moved_bindings_save_at_once(tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(location_mod.time, "monotonic", lambda: clock[0])
    loc = Location(tmp_path / "registrations.json")
    assert not loc.needs_save()
    loc.put("100", binding(2000.0, 1))
    assert loc.needs_save()   # a new binding
    loc.save()
    assert not loc.needs_save()

    loc.put("100", binding(3000.0, 2))   # the same flow, a later expiry
    assert loc.get("100", "sip:100@127.0.0.1:5070").cseq == 2
    assert not loc.needs_save()
    clock[0] += location_mod.REFRESH_SAVE_DELAY
    assert loc.needs_save()
    loc.save()
    saved = Location(tmp_path / "registrations.json")
    assert saved.load(0.0) == 1 and saved.get("100", "sip:100@127.0.0.1:5070").cseq == 2

    loc.put("100", binding(3000.0, 3, Peer("udp", "127.0.0.1", 5080)))   # moved: NAT rebinding
    assert loc.needs_save()
    loc.save()
    loc.remove("100", "sip:100@127.0.0.1:5070")
    assert loc.needs_save()
