"""A lesson recorded in several runs is one recording: its process was killed (-9) mid-lesson and
the lesson was reopened by another process, which keeps the first run as a part and, at the end,
processes both into one listen file, one timeline, one pack, one video.

Parts are made by the real ``Recorder`` (the killed one in a real subprocess, SIGKILLed), joined
by the real ffmpeg, measured by decoding with PyAV; the end-to-end test uses two real servers.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import zipfile
from pathlib import Path
from typing import Any

import asyncpg
import av
import numpy as np
import pytest
from PIL import Image
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

sys.path.insert(0, str(Path(__file__).parent))

from groom.audio.packets import SAMPLE_RATE  # noqa: E402
from groom.core.models import JobState, RecordingState  # noqa: E402
from groom.recordings import playback, postprocess  # noqa: E402
from groom.recordings.jobs import JobWorker, enqueue  # noqa: E402
from groom.recordings.recorder import (  # noqa: E402
    AUDIO,
    JOINED,
    TIMELINE,
    earlier_parts,
    keep_as_part,
    part_seconds,
    read_marker,
    recording_dir,
)
from peers import Peer, start_teacher  # noqa: E402
from servers import GroomServer, database_backends  # noqa: E402
from test_postprocess import (  # noqa: E402
    CHANGES_MS,
    COLORS,
    LESSON_S,
    db,
    drain,
    frame_color_at,
    job_rows,
    make_lesson,
    make_slides,
    record_lesson,
    recording_row,
    sqlite_db,
)
from test_recorder import decoded_seconds, opus_packets, record, record_and_kill  # noqa: E402
from test_recordings import _demo_line, audio_seconds, fetch, logged_in, wait_recording  # noqa: E402

__all__ = ["db", "sqlite_db"]  # fixtures, imported to be used here

PART1_SLIDES = ["a.png", "b.png"]  # what the killed recorder (test_recorder) shows, at 0 and 5 s


def decoded(path: Path) -> np.ndarray:
    """The samples, at 48 kHz (libopus decodes at that rate whatever the file was made from)."""
    with av.open(str(path)) as container:
        return np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])


def rms(pcm: np.ndarray, start_s: float, end_s: float) -> float:
    """Loudness from ``start_s`` to ``end_s`` (full scale 1.0)."""
    return float(np.sqrt(np.mean(pcm[round(start_s * SAMPLE_RATE):round(end_s * SAMPLE_RATE)] ** 2)))


def slide_events(events: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [(e["at_ms"], e["data"]["image"]) for e in events if e["kind"] == "slide"]


# --- killed, reopened, processed into one --------------------------------------------------

async def test_killed_and_reopened_lesson_is_one_recording(db: async_sessionmaker[AsyncSession],
                                                          tmp_path: Path) -> None:
    lesson_id = await make_lesson(db)
    names = make_slides(tmp_path / "slides")
    for name, color in zip(PART1_SLIDES, COLORS[::-1]):  # part 1's slides exist too
        Image.new("RGB", (640, 360), color).save(tmp_path / "slides" / name)
    record_and_kill(tmp_path, lesson_id, min_seconds=8)  # run 1: killed -9, no marker
    directory = recording_dir(tmp_path, lesson_id)
    assert read_marker(directory) is None

    # Run 2: the lesson reopens (another process, same data folder): run 1 is repaired, kept.
    recorder = await postprocess.start_recording(db, tmp_path, lesson_id, started=1000.0)
    [part] = earlier_parts(directory)
    assert part.name == f"{lesson_id}-part1"
    marker = read_marker(part)
    assert marker is not None and marker["recovered"] and marker["has_audio"]
    part1_s = marker["duration_s"]
    assert part1_s >= 8 and abs(decoded_seconds(part / AUDIO) - part1_s) < 0.05
    assert (await recording_row(db, lesson_id)).state == RecordingState.recording
    await record_lesson(tmp_path, lesson_id, recorder=recorder)  # 40 s, silent at 16-26 s
    await postprocess.stop_recording(db, lesson_id, recorder)
    row = await recording_row(db, lesson_id)
    assert row.state == RecordingState.processing and row.recovered  # run 1 was repaired
    assert row.duration_s is not None and abs(row.duration_s - (part1_s + LESSON_S)) < 0.1

    worker = JobWorker(db, postprocess.job_handlers(db, tmp_path), backoff_s=0)
    await drain(worker)
    row = await recording_row(db, lesson_id)
    assert row.state == RecordingState.ready, row.error
    total = part1_s + LESSON_S
    assert row.duration_s is not None and abs(row.duration_s - total) < 0.2, (row.duration_s, total)
    assert row.slide_count == 5

    # One listen file: run 1, then run 2 (its silence where it was, shifted by run 1's length).
    listen = directory / postprocess.LISTEN
    assert abs(decoded_seconds(listen) - total) < 0.2
    pcm = decoded(listen)
    # (a tenth of a second around each edge is left out: the 8 kbps encoder rings across it)
    loudness = [rms(pcm, s, s + 1) for s in range(int(total))]
    assert min(loudness[:int(part1_s) - 1]) > 0.05, loudness  # run 1: speech throughout
    assert rms(pcm, part1_s + 0.1, part1_s + 15.9) > 0.05  # run 2, before its gap
    assert rms(pcm, part1_s + 16.1, part1_s + 25.9) < 1e-3, loudness  # its gap, in its place
    assert rms(pcm, part1_s + 26.1, total - 0.1) > 0.05

    # One timeline: run 2's events after run 1's, moved by run 1's length.
    shift = round(part1_s * 1000)
    expected = [(0, PART1_SLIDES[0]), (5000, PART1_SLIDES[1])] + [
        (shift + at, name) for at, name in zip(CHANGES_MS, names)]
    assert slide_events(playback.read_timeline(directory)) == expected
    ink = [e for e in playback.read_timeline(directory) if e["kind"] == "ink"]
    assert [e["at_ms"] for e in ink] == [shift + 3000, shift + 3100]
    manifest = playback.playback_manifest(directory, row.duration_s, "/a.opus",
                                          lambda image: {"small": image, "large": image})
    assert [(s["at_ms"], s["small"]) for s in manifest["slides"]] == expected
    assert [p["at_ms"] for p in manifest["polls"]] == [shift + 14_000]

    # One offline pack: the MP3 is the whole, its player's slides are the joined timeline.
    with zipfile.ZipFile(directory / "offline.zip") as pack:
        data = json.loads(pack.read("timeline.json"))
        (tmp_path / "pack.mp3").write_bytes(pack.read("audio.mp3"))
        assert {f"slides/{n}" for n in PART1_SLIDES + names} <= set(pack.namelist())
    assert [(s["at_ms"], s["small"]) for s in data["slides"]] == [
        (at, f"slides/{n}") for at, n in expected]
    assert abs(data["duration_s"] - total) < 0.2
    assert abs(decoded_seconds(tmp_path / "pack.mp3") - total) < 0.3

    # The originals are gone (the outputs hold them); a part keeps its marker and timeline.
    assert not (directory / AUDIO).exists() and not (part / AUDIO).exists()
    assert (part / TIMELINE).exists() and read_marker(directory)[JOINED] == 1  # type: ignore[index]

    # One video: run 2's second slide shows at run 1's length + 12.3 s, with the whole audio.
    async with db.begin() as session:
        await enqueue(session, "video", lesson_id)
    await drain(worker)
    video = directory / "video.webm"
    with av.open(str(video)) as container:
        assert container.duration is not None and abs(container.duration / 1e6 - total) < 1.0
    after = frame_color_at(video, np.ceil((shift + CHANGES_MS[1]) / 1000))
    assert np.abs(after - COLORS[1]).max() < 12, after
    before = frame_color_at(video, np.floor((shift + CHANGES_MS[1]) / 1000) - 1)
    assert np.abs(before - COLORS[0]).max() < 12, before
    assert [j.state for j in await job_rows(db)] == [JobState.done, JobState.done]


async def test_one_part_is_processed_as_before(sqlite_db: async_sessionmaker[AsyncSession],
                                               tmp_path: Path) -> None:
    lesson_id = await make_lesson(sqlite_db)
    recorder = await postprocess.start_recording(sqlite_db, tmp_path, lesson_id, started=1000.0)
    await record_lesson(tmp_path, lesson_id, recorder=recorder)
    directory = recording_dir(tmp_path, lesson_id)
    marker_before = read_marker(directory)
    raw = [json.loads(line) for line in (directory / TIMELINE).read_text().splitlines()]
    await postprocess.stop_recording(sqlite_db, lesson_id, recorder)
    await drain(JobWorker(sqlite_db, postprocess.job_handlers(sqlite_db, tmp_path)))
    row = await recording_row(sqlite_db, lesson_id)
    assert row.state == RecordingState.ready and not row.recovered, row.error
    assert row.duration_s is not None and abs(row.duration_s - LESSON_S) < 1.0
    assert earlier_parts(directory) == [] and read_marker(directory) == marker_before  # no JOINED
    assert playback.read_timeline(directory) == sorted(raw, key=lambda e: e["at_ms"])
    assert abs(decoded_seconds(directory / postprocess.LISTEN) - LESSON_S) < 1.0


async def test_reopened_again_and_again(sqlite_db: async_sessionmaker[AsyncSession],
                                        tmp_path: Path) -> None:
    """Runs already processed when their lesson reopens (a restarted node processed them
    first), and a job that runs while its lesson is live again: still one recording."""
    lesson_id = await make_lesson(sqlite_db)
    worker = JobWorker(sqlite_db, postprocess.job_handlers(sqlite_db, tmp_path), backoff_s=0)
    directory = recording_dir(tmp_path, lesson_id)

    async def run(seconds: float, page: int) -> None:
        """One run of the lesson: a silent second, speech, a slide at 1.5 s."""
        recorder = await postprocess.start_recording(sqlite_db, tmp_path, lesson_id, 1000.0)
        await record(recorder, opus_packets(seconds - 1), start_delay_s=1.0,
                     events=[(1500, "slide", {"deck_id": 1, "page": page, "image": f"{page}.webp"})])
        await postprocess.stop_recording(sqlite_db, lesson_id, recorder)

    async def processed() -> float:
        await drain(worker)
        row = await recording_row(sqlite_db, lesson_id)
        assert row.state == RecordingState.ready and row.duration_s is not None, row.error
        return row.duration_s

    await run(6, 0)
    assert abs(await processed() - 6) < 0.2  # processed alone: listen.opus, no audio.ogg
    await run(4, 1)  # part 1 is that processed run
    await run(2, 2)  # reopened before run 1's job ran: run 1 is part 2, unprocessed
    assert abs(await processed() - 12) < 0.2
    await run(5, 3)  # part 3: the run that holds the three before it
    assert abs(await processed() - 17) < 0.2
    assert [p.name for p in earlier_parts(directory)] == [f"{lesson_id}-part{n}" for n in (1, 2, 3)]
    assert all(not (p / AUDIO).exists() and not (p / postprocess.LISTEN).exists()
               for p in earlier_parts(directory))
    assert [j.state for j in await job_rows(sqlite_db)] == [JobState.done] * 4

    starts = [0, 6, 10, 12]
    assert slide_events(playback.read_timeline(directory)) == [
        (start * 1000 + 1500, f"{page}.webp") for page, start in enumerate(starts)]
    listen = directory / postprocess.LISTEN
    assert abs(decoded_seconds(listen) - 17) < 0.2
    pcm = decoded(listen)
    for start in starts:  # each run's first second is silent, its next one is not
        assert rms(pcm, start + 0.1, start + 0.9) < 1e-3, (start, rms(pcm, start, start + 1))
        assert rms(pcm, start + 1.1, start + 1.9) > 0.05, (start, rms(pcm, start + 1, start + 2))


async def test_job_of_a_reopened_run_leaves_it_alone(sqlite_db: async_sessionmaker[AsyncSession],
                                                     tmp_path: Path) -> None:
    """The job queued when run 1 closed runs while run 2 records: nothing changes."""
    lesson_id = await make_lesson(sqlite_db)
    recorder = await postprocess.start_recording(sqlite_db, tmp_path, lesson_id, 1000.0)
    await record(recorder, opus_packets(3))
    await postprocess.stop_recording(sqlite_db, lesson_id, recorder)
    recorder = await postprocess.start_recording(sqlite_db, tmp_path, lesson_id, 1000.0)
    await drain(JobWorker(sqlite_db, postprocess.job_handlers(sqlite_db, tmp_path)))
    assert [j.state for j in await job_rows(sqlite_db)] == [JobState.done]
    row = await recording_row(sqlite_db, lesson_id)
    assert row.state == RecordingState.recording and row.error is None
    directory = recording_dir(tmp_path, lesson_id)
    assert not (directory / postprocess.LISTEN).exists() and (directory / AUDIO).exists()
    await recorder.close()


async def test_lesson_killed_twice_then_swept(sqlite_db: async_sessionmaker[AsyncSession],
                                             tmp_path: Path) -> None:
    """Both runs killed -9, nobody came back: the lesson's recording is repaired and processed
    whole when it is ended for its dead owner (``recover_lesson_recording``)."""
    lesson_id = await make_lesson(sqlite_db)
    directory = recording_dir(tmp_path, lesson_id)
    record_and_kill(tmp_path, lesson_id, min_seconds=6)
    part = keep_as_part(directory)  # what the second run's start does
    record_and_kill(tmp_path, lesson_id, min_seconds=6)
    assert read_marker(directory) is None
    worker = JobWorker(sqlite_db, postprocess.job_handlers(sqlite_db, tmp_path))
    assert await postprocess.recover_lesson_recording(sqlite_db, tmp_path, lesson_id, worker)
    lengths = [part_seconds(p) for p in (part, directory)]  # type: ignore[arg-type]
    assert min(lengths) >= 6
    row = await recording_row(sqlite_db, lesson_id)
    assert row.state == RecordingState.processing and row.recovered
    assert abs((row.duration_s or 0) - sum(lengths)) < 0.01
    await drain(worker)
    row = await recording_row(sqlite_db, lesson_id)
    assert row.state == RecordingState.ready, row.error
    assert abs((row.duration_s or 0) - sum(lengths)) < 0.2
    shift = round(lengths[0] * 1000)
    assert slide_events(playback.read_timeline(directory)) == [
        (0, "a.png"), (5000, "b.png"), (shift, "a.png"), (shift + 5000, "b.png")]
    assert not await postprocess.recover_lesson_recording(sqlite_db, tmp_path, lesson_id + 1)


# --- end to end: two servers, one data folder and database -----------------------------------

def _reopen_lesson(srv: GroomServer, lesson_id: int) -> None:
    """Mark the lesson live again, as it is while another node runs it.

    A server starting on this data folder ends the lessons left live and repairs and
    processes their recordings, as if no other node could run them: until the nodes tell each
    other (someone else's change to ``cli.py``), the test puts the lesson back as the second
    node would find it, live, with its first run recorded (here: already processed alone)."""
    if srv.backend == "sqlite":
        with sqlite3.connect(srv.data_dir / "groom.sqlite3") as conn:
            conn.execute("UPDATE lessons SET state = 'live', ended_at = NULL WHERE id = ?",
                         (lesson_id,))
        return

    async def update() -> None:
        conn = await asyncpg.connect(srv.database_url.replace("postgresql+asyncpg", "postgresql"))
        try:
            await conn.execute("UPDATE lessons SET state = 'live', ended_at = NULL WHERE id = $1",
                               lesson_id)
        finally:
            await conn.close()
    asyncio.run(update())


async def reconnect_teacher(srv: GroomServer, demo: dict[str, Any], lesson_id: int) -> Peer:
    """The teacher comes back to the lesson (now on ``srv``) and speaks again."""
    peer = Peer(srv.base_url)
    async with peer.http.post(srv.base_url + "/api/login", json=demo["teacher_login"]) as resp:
        assert resp.status == 200
    welcome = await peer.connect({"type": "hello", "role": "teacher", "lesson_id": lesson_id})
    assert welcome["type"] == "welcome", welcome
    await peer.negotiate(send_audio=True, receive_audio=True)
    return peer


@pytest.mark.timeout(180)
@pytest.mark.parametrize("backend", database_backends())
async def test_lesson_killed_and_reopened_on_another_server(backend: str, tmp_path: Path) -> None:
    first = GroomServer(tmp_path / "data", backend, pg_database="groom_recording_parts",
                        args=("--demo", "--json", "--join-attempts-per-minute", "1000"))
    first.start()
    second = GroomServer(tmp_path / "data", backend, pg_database="groom_recording_parts",
                         reset_database=False,
                         args=("--demo", "--json", "--join-attempts-per-minute", "1000"))
    try:
        demo = _demo_line(first)
        teacher = await start_teacher(first, demo)
        lesson_id = demo["lesson_id"]
        await asyncio.sleep(4)
        first.kill()  # mid-lesson, no goodbye
        await teacher.close()

        lines_before = len(first.log_lines())
        second.start()
        demo = {**demo, **_demo_line(second, lines_before)}  # fresh demo passwords
        admin = await logged_in(second, demo["admin_login"])
        try:
            part1 = await wait_recording(admin, lesson_id)  # repaired and processed by itself
            assert part1["state"] == "ready" and 2.5 < part1["duration_s"] < 6, part1
            await asyncio.get_running_loop().run_in_executor(None, _reopen_lesson, second,
                                                             lesson_id)
            teacher = await reconnect_teacher(second, demo, lesson_id)
            await asyncio.sleep(4)
            await teacher.send({"type": "end"})
            await teacher.expect("ended")
            await teacher.close()
            rec = await wait_recording(admin, lesson_id)
            assert rec["state"] == "ready" and rec["recovered"], rec
            total = rec["duration_s"]
            assert total - part1["duration_s"] > 3, (total, part1)
            status, opus, _ = await fetch(admin, f"/recordings/{lesson_id}/listen.opus")
            assert status == 200 and abs(audio_seconds(opus) - total) < 0.2
            status, page = await admin.call("GET", f"/recordings/{lesson_id}")
            assert status == 200 and "/static/playback.js" in page
            status, manifest = await admin.call("GET",
                                                f"/api/lessons/{lesson_id}/recording/manifest")
            assert status == 200 and abs(manifest["duration_s"] - total) < 0.01
            assert (tmp_path / "data" / "recordings" / f"{lesson_id}-part1").is_dir()
        finally:
            await admin.close()
    finally:
        first.kill()
        second.stop()
