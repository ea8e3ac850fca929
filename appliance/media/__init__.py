"""Media engine: RTP endpoints, relay and transcoding, DTMF, jitter buffer, conference mixer.

Built on aiortc (RTP/RTCP packets, PCMU/PCMA/G.722/Opus coders) and PyAV
(resampling). The PBX asks this package for `RtpEndpoint`s, negotiates with
`sdp`, and tells it to `Relay` two legs or put them in a `Mixer`.
"""

# Submodules load on first use (PEP 562): the daemon imports the SIP core without paying
# for aiortc, PyAV and numpy until a call or a room actually needs media.
import importlib
from typing import Any

_EXPORTS = {
    "Codec": "sdp",
    "DtmfEvent": "dtmf",
    "DtmfRelay": "dtmf",
    "JitterBuffer": "jitter",
    "MediaDescription": "sdp",
    "Mixer": "mixer",
    "Participant": "mixer",
    "PortAllocator": "rtp",
    "PortsExhausted": "rtp",
    "ReceiveStats": "rtp",
    "Relay": "relay",
    "RtpEndpoint": "rtp",
    "SdpError": "sdp",
    "SdpOrigin": "sdp",
    "SessionDescription": "sdp",
    "TelephoneEventDetector": "dtmf",
    "TelephoneEventGenerator": "dtmf",
    "TickDriver": "mixer",
    "Transcoder": "relay",
    "answer_codecs": "sdp",
    "build_answer": "sdp",
    "build_offer": "sdp",
    "format_dtmf_relay": "dtmf",
    "mixer_benchmark": "mixer",
    "parse_dtmf_info": "dtmf",
    "parse_dtmf_relay": "dtmf",
    "rewrite": "sdp",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'appliance.media' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
