"""Ogg framing for Opus (RFC 3533, RFC 7845): pages, headers, and reading pages back.

Shared by the two consumers that write Ogg as packets arrive: the HTTP fallback stream
(``fallback.py``) and the lesson recorder (``recorder.py``). Written here rather than through a
muxer because both need pages on their own schedule (a listener's burst, a crash-safe flush)
and the recorder must read back its own torn pages after a power cut.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Iterable

from .packets import SAMPLE_RATE

PRE_SKIP = 312  # libopus' lookahead at 48 kHz (voip): samples to drop at the start of a stream
FLAG_BOS, FLAG_EOS = 0x02, 0x04
_HEADER = struct.Struct("<4sBBqIIIB")  # capture, version, flags, granule, serial, seq, crc, nseg

_REVERSE_BITS = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))


def ogg_crc(data: bytes) -> int:
    """CRC-32 of Ogg (poly 0x04C11DB7, init 0, not reflected, no final xor), at C speed.

    zlib's CRC-32 is the same polynomial, reflected, with init and final xor 0xFFFFFFFF: feed it
    bit-reversed bytes with the register pre-set to 0, undo the final xor, and reverse the result.
    """
    crc = zlib.crc32(data.translate(_REVERSE_BITS), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{crc:032b}"[::-1], 2)


def ogg_page(packets: list[bytes], granule: int, serial: int, sequence: int,
             first: bool = False, last: bool = False) -> bytes:
    """One Ogg page holding whole ``packets`` (at most 255 lacing values in total)."""
    lacing = bytearray()
    for packet in packets:
        lacing += b"\xff" * (len(packet) // 255) + bytes([len(packet) % 255])
    if len(lacing) > 255:
        raise ValueError("too many packets for one Ogg page")
    flags = (FLAG_BOS if first else 0) | (FLAG_EOS if last else 0)
    header = struct.pack("<4sBBqIIIB", b"OggS", 0, flags, granule, serial, sequence, 0,
                         len(lacing))
    page = bytearray(header + lacing + b"".join(packets))
    struct.pack_into("<I", page, 22, ogg_crc(bytes(page)))
    return bytes(page)


def opus_head(pre_skip: int = PRE_SKIP) -> bytes:
    """RFC 7845 5.1 identification header: mono, 48 kHz input, no gain, mapping family 0."""
    return struct.pack("<8sBBHIhB", b"OpusHead", 1, 1, pre_skip, SAMPLE_RATE, 0, 0)


def opus_tags(vendor: str = "G-Room", comments: Iterable[str] = ()) -> bytes:
    items = [c.encode() for c in comments]
    body = struct.pack("<I", len(vendor.encode())) + vendor.encode() + struct.pack("<I", len(items))
    for item in items:
        body += struct.pack("<I", len(item)) + item
    return b"OpusTags" + body



@dataclass(frozen=True)
class OggPage:
    offset: int
    length: int
    flags: int
    granule: int
    seq: int


def scan_pages(data: bytes) -> list[OggPage]:
    """The pages of ``data`` up to the first incomplete or corrupt one (a crash's torn tail)."""
    pages: list[OggPage] = []
    pos = 0
    while pos + 27 <= len(data):
        capture, _v, flags, granule, _serial, seq, crc, nseg = _HEADER.unpack_from(data, pos)
        if capture != b"OggS" or pos + 27 + nseg > len(data):
            break
        length = 27 + nseg + sum(data[pos + 27:pos + 27 + nseg])
        if pos + length > len(data):
            break
        page = data[pos:pos + length]
        if ogg_crc(page[:22] + b"\0\0\0\0" + page[26:]) != crc:
            break
        pages.append(OggPage(pos, length, flags, granule, seq))
        pos += length
    return pages
