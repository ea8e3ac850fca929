"""Media engine: RTP endpoints, relay and transcoding, DTMF, jitter buffer, conference mixer.

Built on aiortc (RTP/RTCP packets, PCMU/PCMA/G.722/Opus coders) and PyAV
(resampling). The PBX asks this package for `RtpEndpoint`s, negotiates with
`sdp`, and tells it to `Relay` two legs or put them in a `Mixer`.
"""

from .dtmf import (
    DtmfEvent,
    DtmfRelay,
    TelephoneEventDetector,
    TelephoneEventGenerator,
    format_dtmf_relay,
    parse_dtmf_info,
    parse_dtmf_relay,
)
from .jitter import JitterBuffer
from .mixer import Mixer, Participant, TickDriver, mixer_benchmark
from .relay import Relay, Transcoder
from .rtp import PortAllocator, PortsExhausted, ReceiveStats, RtpEndpoint
from .sdp import (
    Codec,
    MediaDescription,
    SdpError,
    SdpOrigin,
    SessionDescription,
    answer_codecs,
    build_answer,
    build_offer,
    rewrite,
)

__all__ = [
    "Codec", "DtmfEvent", "DtmfRelay", "JitterBuffer", "MediaDescription", "Mixer",
    "Participant", "PortAllocator", "PortsExhausted", "ReceiveStats", "Relay", "RtpEndpoint",
    "SdpError", "SdpOrigin", "SessionDescription", "TelephoneEventDetector",
    "TelephoneEventGenerator", "TickDriver", "Transcoder", "answer_codecs", "build_answer",
    "build_offer", "format_dtmf_relay", "mixer_benchmark", "parse_dtmf_info",
    "parse_dtmf_relay", "rewrite",
]
