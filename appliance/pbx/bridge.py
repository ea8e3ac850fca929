"""The media path of a two-party call: the box in the middle of the RTP (RFC 3264, RFC 7092 §3).

The PBX keeps SIP; this module keeps SDP and media for one call. One RTP
endpoint faces the caller (A) and one the callee (B). Offers going either
way are rewritten to point at the endpoint facing the receiver; the callee's
answer picks B's codec, and the caller gets the same codec when it offered
it (plain forwarding) or else its own first codec we can transcode to.
"""

from __future__ import annotations

import logging
from typing import Any

from ..media.relay import Relay
from ..media.rtp import RtpEndpoint
from ..media.sdp import (
    Codec,
    SdpError,
    SdpOrigin,
    SessionDescription,
    audio_codec,
    is_sdp,
    parse,
    rewrite,
    telephone_event,
)

log = logging.getLogger("appliance.media")

__all__ = ["MediaBridge", "SUPPORTED", "is_sdp"]

# What the box can decode and encode (aiortc's coders, PyAV resampling).
SUPPORTED = [Codec.parse(c) for c in ("PCMU/8000", "PCMA/8000", "G722/8000", "opus/48000/2")]
# Static payload types the box adds to an offer so that a callee without any of the
# caller's codecs can still answer (and the box transcodes).
EXTRA_STATIC = (0, 8, 9)


def _supported(c: Codec) -> bool:
    return any(s.matches(c) for s in SUPPORTED)


class MediaBridge:
    """Two RTP endpoints and the relay between them, driven by the call's SDP."""

    def __init__(self, a: RtpEndpoint, b: RtpEndpoint, address: str) -> None:
        self.a, self.b = a, b
        self.address = address
        self.origins = {"a": SdpOrigin(address), "b": SdpOrigin(address)}
        self.a_offer: SessionDescription | None = None
        self.relay: Relay | None = None
        self.on_dtmf: Any = None

    @classmethod
    async def open(cls, address: str, allocator: Any) -> MediaBridge:
        a = await RtpEndpoint.open(address, allocator)
        try:
            b = await RtpEndpoint.open(address, allocator)
        except BaseException:
            a.close()
            raise
        return cls(a, b, address)

    def endpoint(self, side: str) -> RtpEndpoint:
        return self.a if side == "a" else self.b

    # -- the initial offer/answer -------------------------------------------------------
    def offer_to_callee(self, body: bytes) -> bytes:
        """The caller's offer, pointed at the box, with the codecs we can transcode to."""
        offer = parse(body)
        self.a_offer = offer
        self._learn_remote("a", offer)
        out = rewrite(offer, self.address, self.b.rtp_port, self.origins["b"])
        media = out.audio()
        if media is not None:
            codecs = media.codecs
            audio = [c for c in codecs if not (c.is_telephone_event or c.is_comfort_noise)]
            rest = [c for c in codecs if c.is_telephone_event or c.is_comfort_noise]
            used = {c.payload_type for c in codecs}
            for pt in EXTRA_STATIC:
                extra = Codec.static(pt)
                if extra is not None and pt not in used and not any(extra.matches(c)
                                                                    for c in audio):
                    audio.append(extra)
            media.set_codecs(audio + rest)
            self.origins["b"].stamp(out)
        return bytes(out)

    def answer_to_caller(self, body: bytes) -> bytes | None:
        """The callee's answer: configures both legs and starts (or updates) the relay.

        None when the caller offered nothing we can bridge to the callee's codec.
        """
        answer = parse(body)
        media = answer.audio()
        b_codec = audio_codec(media)
        if b_codec is None or self.a_offer is None or not _supported(b_codec):
            return None
        self.b.configure(b_codec, telephone_event(media, b_codec.clock_rate))
        self._learn_remote("b", answer)
        offered = self.a_offer.audio()
        if offered is None:
            return None
        same = next((c for c in offered.codecs if c.matches(b_codec)), None)
        a_codec = same or next((c for c in offered.codecs if not c.is_telephone_event
                                and not c.is_comfort_noise and _supported(c)), None)
        if a_codec is None:
            return None
        a_event = telephone_event(offered, a_codec.clock_rate)
        self.a.configure(a_codec, a_event)
        out = rewrite(answer, self.address, self.a.rtp_port, self.origins["a"])
        out_media = out.audio()
        if out_media is not None:
            out_media.set_codecs([a_codec] + ([a_event] if a_event else []))
            self.origins["a"].stamp(out)
        if self.relay is None:
            self.relay = Relay(self.a, self.b, on_dtmf=self._dtmf)
            self.relay.start()
        else:
            self.relay.update()
        log.info("media: %s %s ⇄ %s %s (%s)", self.a.local_address, a_codec.encoding,
                 self.b.local_address, b_codec.encoding, self.relay.mode)
        return bytes(out)

    # -- later offers and answers (re-INVITE, UPDATE) --------------------------------------
    def rewrite_toward(self, receiver: str, body: bytes) -> bytes:
        """An SDP from the other side, pointed at the endpoint facing `receiver`.
        The sender's address is learnt from it (a hold with 0.0.0.0 stops sending)."""
        sender = "b" if receiver == "a" else "a"
        try:
            sdp = parse(body)
        except SdpError:
            return body
        self._learn_remote(sender, sdp)
        return bytes(rewrite(sdp, self.address, self.endpoint(receiver).rtp_port,
                             self.origins[receiver]))

    def _learn_remote(self, side: str, sdp: SessionDescription) -> None:
        addr = sdp.remote_address()
        ep = self.endpoint(side)
        if addr is None or addr[0] in ("0.0.0.0", "::") or not addr[1]:
            ep.set_remote(None, None)
        else:
            ep.set_remote(addr[0], addr[1])

    def _dtmf(self, endpoint: RtpEndpoint, event: Any) -> None:
        if self.on_dtmf is not None:
            self.on_dtmf("a" if endpoint is self.a else "b", event)

    # -- teardown ---------------------------------------------------------------------------
    def stats(self) -> dict[str, dict[str, Any]]:
        """Per leg: packets received, lost, interarrival jitter, and the peer's RTCP view."""
        out: dict[str, dict[str, Any]] = {}
        for side, ep in (("a", self.a), ("b", self.b)):
            s = ep.stats
            leg: dict[str, Any] = {"packets": s.packets, "lost": max(0, s.lost),
                                   "jitter_ms": round(s.jitter_seconds * 1000, 2)}
            r = ep.remote_report
            if r is not None:
                leg["remote"] = {"fraction_lost": r.fraction_lost,
                                 "packets_lost": r.packets_lost,
                                 "jitter_ms": round(r.jitter * 1000, 2)}
            out[side] = leg
        return out

    def close(self) -> None:
        if self.relay is not None:
            self.relay.stop()
        self.a.close()
        self.b.close()
