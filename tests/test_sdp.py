"""Opus fmtp in our answers, and the audio check on offers, with real aiortc offers/answers."""

from __future__ import annotations

import asyncio

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack
from aiortc.sdp import SessionDescription

from groom.live.sdp import (
    STUDENT_LINK,
    TEACHER_UPLOAD,
    has_audio,
    offered_red,
    set_opus_params,
    student_answer,
    teacher_answer,
    with_red,
)
from groom.live.sender import _red_for
from groom.live.tiers import red_payload

CHROME_AUDIO = """v=0\r
o=- 1 2 IN IP4 127.0.0.1\r
s=-\r
t=0 0\r
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 0\r
c=IN IP4 0.0.0.0\r
a=rtpmap:111 opus/48000/2\r
a=fmtp:111 minptime=10;useinbandfec=1\r
a=rtpmap:63 red/48000/2\r
a=fmtp:63 111/111\r
a=rtpmap:0 PCMU/8000\r
a=ptime:20\r
a=sendrecv\r
"""


def pc() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


async def offer_answer(browser: RTCPeerConnection) -> tuple[str, RTCPeerConnection]:
    """The browser's offer answered by a server peer that sends audio back: (answer, server)."""
    server = pc()
    await browser.setLocalDescription(await browser.createOffer())
    await server.setRemoteDescription(browser.localDescription)
    for transceiver in server.getTransceivers():
        if transceiver.kind == "audio":
            server.addTrack(AudioStreamTrack())
    await server.setLocalDescription(await server.createAnswer())
    return server.localDescription.sdp, server


def opus_params(sdp: str) -> dict[str, str]:
    """The Opus fmtp as aiortc's own SDP parser reads it (values as text)."""
    media = SessionDescription.parse(sdp).media[0]
    opus = next(c for c in media.rtp.codecs if c.mimeType.lower() == "audio/opus")
    return {k: str(v) for k, v in opus.parameters.items()}


async def test_teacher_answer_asks_for_fec_dtx_mono_32k_and_still_connects() -> None:
    browser = pc()
    browser.addTrack(AudioStreamTrack())
    got: asyncio.Future[object] = asyncio.get_running_loop().create_future()

    @browser.on("track")
    def on_track(t: object) -> None:
        if not got.done():
            got.set_result(t)

    answer, server = await offer_answer(browser)
    assert "a=fmtp" not in answer  # what aiortc gives: nothing negotiated
    munged = teacher_answer(answer)
    assert opus_params(munged) == {k: str(v) for k, v in TEACHER_UPLOAD.items()}
    assert munged.endswith("\r\n") and "\n" not in munged.replace("\r\n", "")
    # the browser side accepts it and media flows both ways
    await browser.setRemoteDescription(RTCSessionDescription(munged, "answer"))
    track = await asyncio.wait_for(got, 10)
    frame = await asyncio.wait_for(track.recv(), 10)  # type: ignore[attr-defined]
    assert frame.sample_rate == 48_000
    await browser.close()
    await server.close()


async def test_student_answer_sets_60ms_packets() -> None:
    browser = pc()
    browser.addTransceiver("audio", direction="recvonly")
    answer, server = await offer_answer(browser)
    munged = student_answer(answer)
    assert opus_params(munged) == {k: str(v) for k, v in STUDENT_LINK.items()}
    assert "a=ptime:60\r\n" in munged and "a=maxptime:120\r\n" in munged
    await browser.setRemoteDescription(RTCSessionDescription(munged, "answer"))
    await browser.close()
    await server.close()


def test_existing_fmtp_is_merged_other_codecs_untouched() -> None:
    out = student_answer(CHROME_AUDIO)
    lines = out.split("\r\n")
    fmtp = next(line for line in lines if line.startswith("a=fmtp:111 "))
    assert fmtp.startswith("a=fmtp:111 minptime=10;useinbandfec=1;usedtx=1;stereo=0")
    assert "maxaveragebitrate=16000" in fmtp
    assert "a=fmtp:63 111/111" in lines  # RED's fmtp is not Opus's
    assert lines.count("a=fmtp:111 " + fmtp.split(" ", 1)[1]) == 1
    assert "a=ptime:20" not in lines and lines.count("a=ptime:60") == 1
    # idempotent
    assert student_answer(out) == out
    assert set_opus_params(out, {}) == out


async def test_has_audio_accepts_real_offers_and_refuses_the_rest() -> None:
    with_audio = pc()
    with_audio.addTrack(AudioStreamTrack())
    await with_audio.setLocalDescription(await with_audio.createOffer())
    video_only = pc()
    video_only.addTrack(VideoStreamTrack())
    await video_only.setLocalDescription(await video_only.createOffer())
    data_only = pc()
    data_only.createDataChannel("chat")
    await data_only.setLocalDescription(await data_only.createOffer())
    try:
        assert has_audio(with_audio.localDescription.sdp)
        assert has_audio(CHROME_AUDIO)
        assert not has_audio(video_only.localDescription.sdp)
        assert not has_audio(data_only.localDescription.sdp)
        assert not has_audio(CHROME_AUDIO.replace("m=audio 9 ", "m=audio 0 "))  # rejected m-line
        assert not has_audio(CHROME_AUDIO.replace("a=sendrecv", "a=inactive"))
        assert not has_audio(CHROME_AUDIO.replace("opus/48000/2", "ISAC/16000"))  # no Opus
        assert not has_audio("")
        assert not has_audio(None)
        assert not has_audio({"sdp": "v=0"})
        assert not has_audio("v=0\r\n" + "a=x\r\n" * 100_000)  # absurdly large
    finally:
        for peer in (with_audio, video_only, data_only):
            await peer.close()


def test_red_offered_by_chromium_is_found_and_nothing_else_passes() -> None:
    assert offered_red(CHROME_AUDIO) == (63, 111)
    assert offered_red(CHROME_AUDIO.replace("a=fmtp:63 111/111", "a=fmtp:63 0/0")) is None  # not Opus
    assert offered_red(CHROME_AUDIO.replace("a=fmtp:63 111/111", "a=fmtp:63 111/0")) is None
    assert offered_red(CHROME_AUDIO.replace("a=rtpmap:63 red/48000/2\r\n", "")) is None


async def test_answer_accepts_red_after_opus_and_the_browser_takes_it() -> None:
    """aiortc drops RED from its answer; ``with_red`` puts it back after Opus (so the browser
    keeps sending plain Opus), and a peer applies that answer."""
    browser = pc()
    browser.addTransceiver("audio", direction="recvonly")
    await browser.setLocalDescription(await browser.createOffer())
    offer = browser.localDescription.sdp
    opus_pt = next(line.split(":", 1)[1].split()[0] for line in offer.splitlines()
                   if " opus/48000" in line)
    lines = offer.splitlines()
    lines = [f"{line} 63" if line.startswith("m=audio") else line for line in lines]
    at = next(i for i, line in enumerate(lines) if " opus/48000" in line) + 1
    lines[at:at] = ["a=rtpmap:63 red/48000/2", f"a=fmtp:63 {opus_pt}/{opus_pt}"]
    offer = "\r\n".join(lines) + "\r\n"
    red = offered_red(offer)
    assert red == (63, int(opus_pt))
    server = pc()
    await server.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
    server.addTrack(AudioStreamTrack())
    await server.setLocalDescription(await server.createAnswer())
    assert "red/48000" not in server.localDescription.sdp  # aiortc knows no RED
    answer, accepted = with_red(student_answer(server.localDescription.sdp), red)
    assert accepted
    m_line = next(line for line in answer.splitlines() if line.startswith("m=audio"))
    formats = m_line.split()[3:]
    assert formats[0] == opus_pt and formats[-1] == "63"  # Opus first: what the browser sends
    assert f"a=fmtp:63 {opus_pt}/{opus_pt}" in answer
    await browser.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    # an answer that changed the Opus payload type gets no RED
    assert with_red(answer, (63, 5))[1] is False
    await asyncio.gather(browser.close(), server.close())


def test_red_payload_carries_the_previous_packet_with_each_students_opus_type() -> None:
    first = red_payload(b"A" * 40, None, 2880)
    second = red_payload(b"B" * 50, b"A" * 40, 2880)
    assert first == b"\x00" + b"A" * 40  # nothing to repeat yet: one header byte
    mine = _red_for(second, 111)
    assert mine[0] == 0x80 | 111 and mine[4] == 111  # the block headers name Opus 111
    header = int.from_bytes(mine[:4], "big")
    assert (header >> 10) & 0x3FFF == 2880 and header & 0x3FF == 40  # offset and length
    assert mine[5:45] == b"A" * 40 and mine[45:] == b"B" * 50  # previous, then primary
    assert _red_for(first, 109) == bytes([109]) + b"A" * 40
    assert red_payload(b"C", b"B" * 50, 1 << 14)[0] == 0  # too old to repeat
