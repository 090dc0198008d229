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
    set_opus_params,
    student_answer,
    teacher_answer,
)

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
