"""The unit that flows from a tier's encoder to everyone listening to that tier.

A tier's packet source may be local (``tiers.TierEncoder``) or, later, remote (an origin node
feeding edge nodes); consumers (student WebRTC senders, the HTTP fallback stream, the recorder)
only ever see ``EncodedPacket`` through the ``PacketSink`` protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

SAMPLE_RATE = 48_000  # Opus RTP clock rate, whatever the coded bandwidth


@dataclass(frozen=True, slots=True)
class EncodedPacket:
    tier: str
    payload: bytes  # one Opus packet (may hold several 20 ms frames' worth, e.g. 60 ms)
    timestamp: int  # RTP clock (48 kHz), shared by all tiers so a student can switch tiers
    duration: int  # samples at 48 kHz covered by this packet
    created: float  # time.monotonic() when the source audio entered the server (latency)
    red: bool = False  # an RFC 2198 payload (tiers.red_payload) wrapping Opus, not Opus itself


class PacketSink(Protocol):
    """Anything that receives a tier's packets. ``push`` must never block or await."""

    def push(self, packet: EncodedPacket) -> None: ...
