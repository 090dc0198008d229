"""SDP text edits that aiortc does not make: Opus parameters in our answers, and offer checks.

aiortc's answer carries no ``a=fmtp`` for Opus, so the browser falls back to its defaults (Chrome
sends 32 kbps, no DTX, no FEC). In SDP the Opus fmtp of a description is the *receiver's* wish
for what the other side sends (RFC 7587), so we state in each answer what we want to receive:

- from the teacher: in-band FEC (a 2G/3G hop loses packets), DTX (silences between sentences
  cost almost nothing), mono, at most 32 kbps (the top tier; more is wasted since we re-encode);
- from a student (only heard while holding the floor, on a poor link): the same, capped lower,
  and ``a=ptime:60`` because the server's tiers send 60 ms packets to students: Chrome honours
  the remote ``ptime`` for its own encoder, so both directions pay a third of the per-packet
  header overhead, and ``sprop-stereo=0`` tells the phone it only needs a mono decoder.

The edits are made on the answer text handed to the browser; aiortc keeps its own copy.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping

TEACHER_UPLOAD: Mapping[str, int] = {
    "minptime": 10,
    "useinbandfec": 1,
    "usedtx": 1,
    "stereo": 0,
    "sprop-stereo": 0,
    "maxaveragebitrate": 32_000,
}
STUDENT_LINK: Mapping[str, int] = {
    "minptime": 10,
    "useinbandfec": 1,
    "usedtx": 1,
    "stereo": 0,
    "sprop-stereo": 0,
    "maxaveragebitrate": 16_000,
}
STUDENT_PTIME_MS = 60  # the tiers' packet duration
STUDENT_MAXPTIME_MS = 120

_OPUS_RTPMAP = re.compile(r"^a=rtpmap:(\d+) opus/48000(?:/\d+)?$", re.IGNORECASE)
_MAX_SDP_CHARS = 64 * 1024  # a real audio-only offer is 2-6 kB; refuse to scan megabytes
MAX_CANDIDATES = 16  # a phone offers 2-8 (host, mDNS, srflx, relay; IPv4 and IPv6)
_MDNS_NAME = re.compile(r"^[a-zA-Z0-9-]{1,63}\.local$")  # a browser's hidden host address
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")


def _split(sdp: str) -> tuple[list[str], str]:
    """Lines without terminators, and the terminator to put back (browsers send CRLF)."""
    eol = "\r\n" if "\r\n" in sdp else "\n"
    lines = sdp.split(eol)
    if lines and lines[-1] == "":
        lines.pop()
    return lines, eol


def _sections(lines: list[str]) -> list[tuple[int, int]]:
    """(start, end) line ranges of each media section (``m=`` line to before the next)."""
    starts = [i for i, line in enumerate(lines) if line.startswith("m=")]
    return [(s, e) for s, e in zip(starts, starts[1:] + [len(lines)])]


def _merge_fmtp(existing: str, params: Mapping[str, int | str]) -> str:
    """``existing`` (``k=v;k=v``) with ``params`` overriding same keys, order kept."""
    merged: dict[str, str] = {}
    for item in existing.split(";"):
        key, sep, value = item.strip().partition("=")
        if key and sep:
            merged[key.lower()] = value.strip()
    for key, param in params.items():
        merged[key.lower()] = str(param)
    return ";".join(f"{k}={v}" for k, v in merged.items())


def set_opus_params(sdp: str, params: Mapping[str, int | str], ptime_ms: int | None = None,
                    maxptime_ms: int | None = None) -> str:
    """Return ``sdp`` with ``params`` merged into every audio section's Opus ``a=fmtp`` line.

    An fmtp line is added right after the Opus ``a=rtpmap`` when there is none. ``ptime_ms`` and
    ``maxptime_ms`` replace (or add) the section's ``a=ptime``/``a=maxptime``. Sections without
    Opus, and non-audio sections, are left untouched.
    """
    lines, eol = _split(sdp)
    out: list[str] = []
    cursor = 0
    for start, end in _sections(lines):
        out.extend(lines[cursor:start])
        cursor = end
        section = lines[start:end]
        if not section[0].startswith("m=audio"):
            out.extend(section)
            continue
        opus_pts = [m.group(1) for line in section if (m := _OPUS_RTPMAP.match(line))]
        if not opus_pts:
            out.extend(section)
            continue
        edited: list[str] = []
        for line in section:
            if (ptime_ms is not None and line.startswith("a=ptime:")) or (
                    maxptime_ms is not None and line.startswith("a=maxptime:")):
                continue
            fmtp_pt = next((pt for pt in opus_pts if line.startswith(f"a=fmtp:{pt} ")), None)
            if fmtp_pt is not None:
                existing = line.split(" ", 1)[1]
                edited.append(f"a=fmtp:{fmtp_pt} {_merge_fmtp(existing, params)}")
                opus_pts.remove(fmtp_pt)
                continue
            edited.append(line)
        for pt in opus_pts:  # Opus payload types that had no fmtp line yet
            at = next(i for i, line in enumerate(edited)
                      if line.lower().startswith(f"a=rtpmap:{pt} "))
            edited.insert(at + 1, f"a=fmtp:{pt} {_merge_fmtp('', params)}")
        if ptime_ms is not None:
            edited.append(f"a=ptime:{ptime_ms}")
        if maxptime_ms is not None:
            edited.append(f"a=maxptime:{maxptime_ms}")
        out.extend(edited)
    out.extend(lines[cursor:])
    return eol.join(out) + eol


def teacher_answer(sdp: str) -> str:
    """The answer sent to the teacher's browser: ask for mono 32 kbps Opus with FEC and DTX."""
    return set_opus_params(sdp, TEACHER_UPLOAD)


def student_answer(sdp: str) -> str:
    """The answer sent to a student's phone: 60 ms packets, mono, FEC and DTX, 16 kbps up."""
    return set_opus_params(sdp, STUDENT_LINK, ptime_ms=STUDENT_PTIME_MS,
                           maxptime_ms=STUDENT_MAXPTIME_MS)


def has_audio(sdp: object) -> bool:
    """True when ``sdp`` is an SDP text with a live (port != 0, not inactive) Opus audio section.

    The room refuses offers that fail this before handing them to aiortc, so a page that lost
    its microphone or a hand-made request gets a clear error instead of a silent connection.
    """
    if not isinstance(sdp, str) or not sdp.startswith("v=0") or len(sdp) > _MAX_SDP_CHARS:
        return False
    lines, _ = _split(sdp)
    for start, end in _sections(lines):
        fields = lines[start][2:].split()
        if len(fields) < 4 or fields[0] != "audio" or fields[1].split("/")[0] == "0":
            continue
        section = lines[start:end]
        if "a=inactive" in section:
            continue
        if any(_OPUS_RTPMAP.match(line) for line in section):
            return True
    return False


def one_audio_section(sdp: str) -> bool:
    """True when ``sdp`` has exactly one media section, and it is audio.

    That is what every page offers (one audio transceiver, no video, no data channel). Any other
    section would be answered ``recvonly`` by aiortc, which then decodes whatever arrives on it
    (a 640x480 video: ~14 MB a second) into a queue the room never reads; so such offers are
    refused before aiortc sees them."""
    lines, _ = _split(sdp)
    sections = [line for line in lines if line.startswith("m=")]
    return len(sections) == 1 and sections[0].startswith("m=audio ")


def candidate_allowed(host: str, *, allow_link_local: bool = False) -> bool:
    """May the server send ICE connectivity checks to ``host``, named by a participant?

    Private ranges stay allowed (a school LAN, a phone behind the school's NAT), and so do mDNS
    names (``<uuid>.local``: how browsers hide a host address). Dropped: loopback and
    "this network" (the server itself), multicast, broadcast and reserved, unspecified, names
    that are not addresses, and link-local (169.254/16, fe80::/10: cloud metadata services,
    neighbours of the server) unless ``allow_link_local`` (a LAN without DHCP)."""
    if _MDNS_NAME.match(host):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback or address.is_multicast or address.is_unspecified or address.is_reserved:
        return False
    if isinstance(address, ipaddress.IPv4Address) and address in _THIS_NETWORK:
        return False
    return allow_link_local or not address.is_link_local


def filter_candidates(sdp: str, *, allow_link_local: bool = False, limit: int = MAX_CANDIDATES) -> str:
    """``sdp`` without the ``a=candidate`` lines naming addresses the server must not probe
    (``candidate_allowed``), malformed ones, and any beyond the first ``limit``: every candidate
    costs connectivity checks, so a 16 KB offer must not turn the server into a UDP scanner."""
    lines, eol = _split(sdp)
    out: list[str] = []
    kept = 0
    for line in lines:
        if line.startswith("a=candidate:"):
            fields = line.split()
            if len(fields) < 8 or kept >= limit \
                    or not candidate_allowed(fields[4], allow_link_local=allow_link_local):
                continue
            kept += 1
        out.append(line)
    return eol.join(out) + eol


_RED_RTPMAP = re.compile(r"^a=rtpmap:(\d+) red/48000/2$", re.IGNORECASE)


def offered_red(offer_sdp: str) -> tuple[int, int] | None:
    """(RED payload type, Opus payload type) when the offer's audio section accepts RFC 2198 RED
    over Opus (``a=rtpmap:63 red/48000/2`` with ``a=fmtp:63 111/111``: Chromium offers it);
    else None. Such a student can be sent a protected (RED) tier variant."""
    lines, _ = _split(offer_sdp)
    for start, end in _sections(lines):
        if not lines[start].startswith("m=audio"):
            continue
        section = lines[start:end]
        opus = {m.group(1) for line in section if (m := _OPUS_RTPMAP.match(line))}
        for line in section:
            m = _RED_RTPMAP.match(line)
            if m is None:
                continue
            red = m.group(1)
            fmtp = next((x.split(" ", 1)[1] for x in section
                         if x.startswith(f"a=fmtp:{red} ") and " " in x), "")
            blocks = set(fmtp.strip().split("/"))
            if len(blocks) == 1 and blocks <= opus:
                return int(red), int(blocks.pop())
    return None


def with_red(answer_sdp: str, red: tuple[int, int]) -> tuple[str, bool]:
    """The answer with RED accepted after Opus (aiortc knows no RED, so it dropped it), when the
    answer kept the Opus payload type the offer's RED wraps; and whether it did. Opus stays
    first, so the browser goes on *sending* plain Opus."""
    red_pt, opus_pt = red
    lines, eol = _split(answer_sdp)
    out: list[str] = []
    added = False
    for start, end in _sections(lines):
        section = lines[start:end]
        fields = section[0].split()
        if (not added and section[0].startswith("m=audio") and str(opus_pt) in fields[3:]
                and any(line.lower().startswith(f"a=rtpmap:{opus_pt} opus/") for line in section)):
            section = [" ".join([*fields, str(red_pt)])] + section[1:]
            at = max(i for i, line in enumerate(section)
                     if line.startswith((f"a=rtpmap:{opus_pt} ", f"a=fmtp:{opus_pt} "))) + 1
            section[at:at] = [f"a=rtpmap:{red_pt} red/48000/2", f"a=fmtp:{red_pt} {opus_pt}/{opus_pt}"]
            added = True
        out.extend(section)
    head = lines[:_sections(lines)[0][0]] if _sections(lines) else lines
    return eol.join(head + out) + eol, added


def fingerprints(sdp: str) -> frozenset[str]:
    """The DTLS certificate fingerprints an SDP names. A renegotiation (the floor) keeps them; a
    new connection from the same seat (a page that reconnected while its old connection was
    still alive here) has new ones and must get a new peer connection, not a renegotiation."""
    return frozenset(line.split(":", 1)[1].strip().lower() for line in sdp.splitlines()
                     if line.startswith("a=fingerprint:"))
