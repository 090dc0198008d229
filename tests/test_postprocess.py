"""Post-processing and the job queue: real ffmpeg, real databases, real Chromium on file://."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sys
import zipfile
from pathlib import Path
from typing import AsyncIterator

import asyncpg
import av
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

sys.path.insert(0, str(Path(__file__).parent))

from browser import available, chromium  # noqa: E402
from groom.core.config import WEB_DIR  # noqa: E402
from groom.core.db import make_engine, make_sessionmaker, migrate  # noqa: E402
from groom.core.models import Classroom, Job, JobState, Lesson, Recording, RecordingState, School, utcnow  # noqa: E402
from groom.recordings import offline_pack, playback, postprocess  # noqa: E402
from groom.recordings.ffmpeg_runner import ffmpeg_exe  # noqa: E402
from groom.recordings.jobs import JobWorker, enqueue  # noqa: E402
from groom.recordings.recorder import AUDIO, Recorder, recording_dir  # noqa: E402
from groom.recordings.video import make_video  # noqa: E402
from test_recorder import decoded_seconds, opus_packets, record, record_and_kill  # noqa: E402

PG_ADMIN = os.environ.get("GROOM_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1/test")
PG_DB = "groom_recordings_test"
COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
CHANGES_MS = [0, 12_300, 25_700]
LESSON_S = 40
# A thick red cross on slide 1 at 3 s; a shown poll result at 14 s, a hidden one at 20 s.
INK_EVENTS: list[tuple[int, str, dict[str, object]]] = [
    (3000, "ink", {"page": 1, "points": [100, 100, 900, 900], "color": 0, "width": 3}),
    (3100, "ink", {"page": 1, "points": [900, 100, 100, 900], "color": 0, "width": 3}),
    (14_000, "poll_result", {"id": "p1", "question": "2 + 2?", "choices": ["3", "4"],
                             "counts": [1, 3], "shown": True}),
    (20_000, "poll_result", {"id": "p2", "question": "Secret?", "choices": ["a", "b"],
                             "counts": [0, 0], "shown": False}),
]


async def _postgres_url() -> str | None:
    """A database of our own on the test server, so parallel suites never share a schema."""
    try:
        admin = await asyncpg.connect(PG_ADMIN, timeout=3)
    except (OSError, asyncpg.PostgresError):
        return None
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {PG_DB}")
    finally:
        await admin.close()
    return f"postgresql+asyncpg://postgres@127.0.0.1/{PG_DB}"


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request: pytest.FixtureRequest, tmp_path: Path
             ) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'groom.sqlite3'}"
    else:
        pg = await _postgres_url()
        if pg is None:
            pytest.skip("no PostgreSQL at " + PG_ADMIN)
        url = pg
    engine = make_engine(url)
    await migrate(engine)
    yield make_sessionmaker(engine)
    await engine.dispose()


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'groom.sqlite3'}")
    await migrate(engine)
    yield make_sessionmaker(engine)
    await engine.dispose()


async def make_lesson(session_maker: async_sessionmaker[AsyncSession]) -> int:
    async with session_maker.begin() as session:
        school = School(name="Ban Na")
        session.add(school)
        await session.flush()
        classroom = Classroom(school_id=school.id, name="P5",
                              join_code=f"J{os.urandom(4).hex()}")
        session.add(classroom)
        await session.flush()
        now = utcnow()
        lesson = Lesson(class_id=classroom.id, starts_at=now, ends_at=now + dt.timedelta(hours=1))
        session.add(lesson)
        await session.flush()
        return lesson.id


def make_slides(slides_dir: Path) -> list[str]:
    slides_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for i, color in enumerate(COLORS):
        name = f"{i:02d}{'ab' * 8}.webp"
        Image.new("RGB", (1280, 720), color).save(slides_dir / name, quality=80)
        names.append(name)
    return names


async def record_lesson(data_dir: Path, lesson_id: int, with_slides: bool = True,
                        recorder: Recorder | None = None) -> list[str]:
    names = make_slides(data_dir / "slides")
    events: list[tuple[int, str, dict[str, object]]] = [
        (at, "slide", {"deck_id": 1, "page": i + 1, "image": name})
        for i, (at, name) in enumerate(zip(CHANGES_MS, names))] if with_slides else []
    events.append((5000, "hand", {"student": "Noy"}))
    events += INK_EVENTS
    await record(recorder or recording_dir(data_dir, lesson_id), opus_packets(LESSON_S - 10),
                 ts_gaps={800: 10.0}, events=events)  # 10 s of silence at 16 s
    return names


async def recording_row(session_maker: async_sessionmaker[AsyncSession], lesson_id: int) -> Recording:
    async with session_maker() as session:
        row = await session.scalar(select(Recording).where(Recording.lesson_id == lesson_id))
        assert row is not None
        return row


async def job_rows(session_maker: async_sessionmaker[AsyncSession]) -> list[Job]:
    async with session_maker() as session:
        return list(await session.scalars(select(Job).order_by(Job.id)))


async def drain(worker: JobWorker) -> None:
    while await worker.run_one():
        pass


def frame_color_at(video: Path, t: float) -> np.ndarray:
    with av.open(str(video)) as container:
        for frame in container.decode(video=0):
            if frame.time is not None and frame.time >= t - 1e-6:
                rgb = frame.to_ndarray(format="rgb24")
                h, w = rgb.shape[0] // 4, rgb.shape[1] // 4
                color: np.ndarray = rgb[h:-h, w:-w].reshape(-1, 3).mean(axis=0)
                return color
    raise AssertionError(f"no frame at {t}")


# --- the whole path through the queue ----------------------------------------------------------

async def test_recording_processed_through_queue(db: async_sessionmaker[AsyncSession],
                                                 tmp_path: Path) -> None:
    lesson_id = await make_lesson(db)
    recorder = await postprocess.start_recording(db, tmp_path, lesson_id, started=0.0)
    await recorder.close()  # an empty one first: starting again must not overwrite it
    recorder = await postprocess.start_recording(db, tmp_path, lesson_id, started=1000.0)
    assert [p.name.startswith(f"{lesson_id}-part") for p in (tmp_path / "recordings").iterdir()
            ].count(True) == 1
    assert (await recording_row(db, lesson_id)).state == RecordingState.recording
    names = await record_lesson(tmp_path, lesson_id, recorder=recorder)
    await postprocess.stop_recording(db, lesson_id, recorder)
    worker = JobWorker(db, postprocess.job_handlers(db, tmp_path), backoff_s=0)
    await drain(worker)
    row = await recording_row(db, lesson_id)
    assert row.state == RecordingState.ready, row.error
    assert row.duration_s is not None and abs(row.duration_s - LESSON_S) < 1.0 and row.slide_count == 3
    directory = recording_dir(tmp_path, lesson_id)
    assert set(row.outputs) == {"listen.opus", "offline.zip", "listen.mp3"}
    assert not (directory / AUDIO).exists()  # the 32 kbps original is not kept
    assert abs(decoded_seconds(directory / "listen.opus") - LESSON_S) < 1.0
    with zipfile.ZipFile(directory / "offline.zip") as pack:
        assert sorted(pack.namelist()) == sorted(
            ["audio.mp3", "index.html", "timeline.json"] + [f"slides/{n}" for n in names])
        html = pack.read("index.html").decode()
        assert "__GROOM_DATA__" not in html and "slides/" + names[2] in html
        mp3 = tmp_path / "audio.mp3"
        mp3.write_bytes(pack.read("audio.mp3"))
    assert abs(decoded_seconds(mp3) - LESSON_S) < 1.0
    # listen.mp3 is not a file: it is read straight out of the (stored) pack
    assert not (directory / "listen.mp3").exists()
    offset, size = offline_pack.pack_member(directory / "offline.zip")
    assert size == row.outputs["listen.mp3"] == len(mp3.read_bytes())
    with open(directory / "offline.zip", "rb") as f:
        f.seek(offset)
        assert f.read(size) == mp3.read_bytes()
    # an hour at this rate stays within the 10 MB budget (these are tiny test slides)
    kept = sum(v for k, v in row.outputs.items() if k not in offline_pack.VIRTUAL)
    per_hour_mb = kept / LESSON_S * 3600 / 1e6
    assert per_hour_mb < 10, per_hour_mb

    async with db.begin() as session:  # what the admin's "make a video" queues
        await enqueue(session, "video", lesson_id)
    await drain(worker)
    row = await recording_row(db, lesson_id)
    assert row.outputs["video.webm"] == (directory / "video.webm").stat().st_size
    assert [j.state for j in await job_rows(db)] == [JobState.done, JobState.done]


async def test_video_changes_slides_on_time(tmp_path: Path) -> None:
    await record_lesson(tmp_path, 1)
    directory = recording_dir(tmp_path, 1)
    changes = playback.slide_changes(playback.read_timeline(directory))
    video = tmp_path / "v.webm"
    await make_video(directory / AUDIO, changes, tmp_path / "slides", LESSON_S, video, ffmpeg_exe())
    with av.open(str(video)) as container:
        assert [s.codec_context.name for s in container.streams] == ["vp9", "opus"]
        assert container.duration is not None and abs(container.duration / 1e6 - LESSON_S) < 1.0
    for at_ms, color in zip(CHANGES_MS, COLORS):
        # shown from the first whole second after the change, and not a second before it
        after = frame_color_at(video, np.ceil(at_ms / 1000))
        assert np.abs(after - color).max() < 12, (at_ms, after)
        if at_ms:
            before = frame_color_at(video, np.floor(at_ms / 1000) - 1)
            assert np.abs(before - color).max() > 100, (at_ms, before)


async def test_no_slides_gives_placeholder_video(tmp_path: Path) -> None:
    await record_lesson(tmp_path, 1, with_slides=False)
    directory = recording_dir(tmp_path, 1)
    result = await postprocess.process(directory, tmp_path / "slides", keep_original=True)
    assert result.slide_count == 0
    with zipfile.ZipFile(directory / "offline.zip") as pack:
        assert not [n for n in pack.namelist() if n.startswith("slides/")]
    await make_video(directory / AUDIO, [], tmp_path / "slides", result.duration_s,
                     tmp_path / "v.webm", ffmpeg_exe())
    assert abs(decoded_seconds(tmp_path / "v.webm") - LESSON_S) < 1.0


async def test_no_audio_is_a_state_not_a_failure(sqlite_db: async_sessionmaker[AsyncSession],
                                                 tmp_path: Path) -> None:
    lesson_id = await make_lesson(sqlite_db)
    recorder = await postprocess.start_recording(sqlite_db, tmp_path, lesson_id, 0.0)
    recorder.add_event(0, "slide", {"image": "x.webp"})
    await postprocess.stop_recording(sqlite_db, lesson_id, recorder)
    await drain(JobWorker(sqlite_db, postprocess.job_handlers(sqlite_db, tmp_path)))
    assert (await recording_row(sqlite_db, lesson_id)).state == RecordingState.no_audio
    assert [j.state for j in await job_rows(sqlite_db)] == [JobState.done]


@pytest.mark.parametrize("exe", ["real", "/nonexistent/ffmpeg"])
async def test_ffmpeg_failure_fails_job_after_retries(sqlite_db: async_sessionmaker[AsyncSession],
                                                      tmp_path: Path, exe: str) -> None:
    lesson_id = await make_lesson(sqlite_db)
    recorder = await postprocess.start_recording(sqlite_db, tmp_path, lesson_id, 0.0)
    await recorder.close()
    audio = recording_dir(tmp_path, lesson_id) / AUDIO
    audio.write_bytes(b"not an ogg file" * 100)  # ffmpeg cannot read this
    (audio.parent / "closed.json").write_text('{"has_audio": true, "duration_s": 5}')
    await postprocess.stop_recording(sqlite_db, lesson_id, recorder)
    handlers = postprocess.job_handlers(sqlite_db, tmp_path,
                                        exe=None if exe == "real" else exe)
    await drain(JobWorker(sqlite_db, handlers, backoff_s=0))
    [job] = await job_rows(sqlite_db)
    assert job.state == JobState.failed and job.attempts == job.max_attempts == 3
    expected = "ffmpeg exited with" if exe == "real" else "ffmpeg not found"
    assert job.error is not None and job.error.startswith("FfmpegError") and expected in job.error
    row = await recording_row(sqlite_db, lesson_id)
    assert row.state == RecordingState.failed and row.error and expected in row.error
    assert audio.read_bytes().startswith(b"not an ogg")  # the original is kept
    assert not (audio.parent / "work").exists()


async def test_crashed_recording_recovered_and_processed(sqlite_db: async_sessionmaker[AsyncSession],
                                                         tmp_path: Path) -> None:
    lesson_id = await make_lesson(sqlite_db)
    make_slides(tmp_path / "slides")
    record_and_kill(tmp_path, lesson_id, min_seconds=6)
    worker = JobWorker(sqlite_db, postprocess.job_handlers(sqlite_db, tmp_path))
    assert await postprocess.recover_recordings(sqlite_db, tmp_path, worker) == [lesson_id]
    row = await recording_row(sqlite_db, lesson_id)
    assert row.recovered and row.state == RecordingState.processing
    await drain(worker)
    row = await recording_row(sqlite_db, lesson_id)
    assert row.state == RecordingState.ready, row.error
    assert row.duration_s is not None and row.duration_s >= 6 and "offline.zip" in row.outputs


# --- the queue itself ------------------------------------------------------------------------

async def test_claim_is_exclusive_and_restart_requeues(db: async_sessionmaker[AsyncSession],
                                                       tmp_path: Path) -> None:
    lesson_id = await make_lesson(db)
    async with db.begin() as session:
        for _ in range(5):
            await enqueue(session, "noop", lesson_id)
    async def noop(job: Job) -> None:
        """Never run: the workers here only claim."""

    a, b = JobWorker(db, {"noop": noop}, name="a"), JobWorker(db, {"noop": noop}, name="b")
    claimed = await asyncio.gather(*[w.claim() for w in (a, b) * 5], a.claim())
    ids = [job.id for job in claimed if job is not None]
    assert len(ids) == len(set(ids)) == 5  # every job once, none twice
    assert await a.requeue_interrupted() == sum(1 for j in claimed if j and j.worker == "a")
    assert {j.state for j in await job_rows(db) if j.worker == "a"} == {JobState.queued}


async def test_worker_task_retries_with_backoff(sqlite_db: async_sessionmaker[AsyncSession]) -> None:
    calls: list[int] = []

    async def flaky(job: Job) -> None:
        calls.append(job.attempts)
        if job.attempts < 2:
            raise RuntimeError("transient")

    async def finished() -> None:
        while (await job_rows(sqlite_db))[0].state != JobState.done:
            await asyncio.sleep(0.05)

    worker = JobWorker(sqlite_db, {"flaky": flaky}, poll_interval=0.05, backoff_s=0.2)
    await worker.start()
    try:
        async with sqlite_db.begin() as session:
            await enqueue(session, "flaky")
        worker.wake()
        await asyncio.wait_for(finished(), 5)
    finally:
        await worker.stop()
    [job] = await job_rows(sqlite_db)
    assert calls == [1, 2] and job.state == JobState.done
    assert job.error is None


# --- ink and poll results in playback ------------------------------------------------------

def test_manifest_carries_ink_and_shown_polls(tmp_path: Path) -> None:
    """A synthetic timeline: two decks, going back to an inked slide, a clear, two polls."""
    directory = tmp_path / "rec"
    directory.mkdir()
    events = [
        (0, "slide", {"deck_id": 1, "page": 0, "image": "a.webp"}),
        (1000, "ink", {"page": 0, "points": [1, 2, 3, 4], "color": 1, "width": 2}),
        (2000, "slide", {"deck_id": 1, "page": 1, "image": "b.webp"}),
        (2500, "ink", {"page": 1, "points": [5, 6], "color": 0, "width": 1}),
        (2600, "ink", {"page": 1, "points": [5, 6, 7], "color": 0, "width": 1}),  # odd: dropped
        (2700, "ink", {"page": 1, "points": "junk", "color": 0, "width": 1}),
        (3000, "slide", {"deck_id": 1, "page": 0, "image": "a.webp"}),  # back: same ink key
        (3500, "ink", {"page": 0, "points": [7, 8, 9, 10], "color": 2, "width": 1}),
        (4000, "ink_clear", {"page": 0}),
        (5000, "poll", {"id": "p1", "question": "Q?", "choices": ["x", "y"], "open": True}),
        (6000, "poll_result", {"id": "p1", "question": "Q?", "choices": ["x", "y"],
                               "counts": [2, 5], "shown": True}),
        (7000, "poll_result", {"id": "p2", "question": "Hidden?", "choices": ["x"],
                               "counts": [1], "shown": False}),
        (8000, "slide", {"deck_id": 2, "page": 0, "image": "c.webp"}),  # another deck: ink reset
        (9000, "chat", {"text": "hi"}),
    ]
    lines = [json.dumps({"at_ms": at, "kind": kind, "data": data}) for at, kind, data in events]
    lines.insert(3, '{"at_ms": 1500, "kind": "ink", "da')  # a torn write is skipped
    (directory / "timeline.jsonl").write_text("\n".join(lines) + "\n")
    manifest = playback.playback_manifest(
        directory, 10.0, "/a.opus", lambda image: {"small": f"/s/{image}", "large": f"/l/{image}"})
    assert [s["small"] for s in manifest["slides"]] == ["/s/a.webp", "/s/b.webp", "/s/a.webp",
                                                        "/s/c.webp"]
    assert manifest["ink"] == [
        {"at_ms": 1000, "page": 0, "points": [1, 2, 3, 4], "color": 1, "width": 2},
        {"at_ms": 2500, "page": 1, "points": [5, 6], "color": 0, "width": 1},
        {"at_ms": 3500, "page": 0, "points": [7, 8, 9, 10], "color": 2, "width": 1},
        {"at_ms": 4000, "page": 0, "clear": True},
        {"at_ms": 8000, "page": 1, "clear": True},  # only slide b still had ink
    ]
    assert manifest["polls"] == [{"at_ms": 6000, "question": "Q?", "choices": ["x", "y"],
                                  "counts": [2, 5]}]


# --- the offline player in a real browser ----------------------------------------------------

# How many pixels of an ink canvas are painted (alpha > 0).
INKED_PIXELS = """(() => {
  const c = document.querySelector('SELECTOR');
  if (!c.width || !c.height) return 0;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 3; i < d.length; i += 4) if (d[i]) n++;
  return n;
})()"""


@pytest.mark.browser
@pytest.mark.skipif(not available(), reason="no chromium")
async def test_offline_player_plays_from_file_url(tmp_path: Path) -> None:
    names = await record_lesson(tmp_path, 1)
    directory = recording_dir(tmp_path, 1)
    await postprocess.process(directory, tmp_path / "slides")
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(directory / "offline.zip") as pack:
        pack.extractall(unpacked)
    async with chromium() as context:
        page = await context.new_page()
        await page.goto((unpacked / "index.html").as_uri())
        await page.evaluate("document.getElementById('audio').play()")
        await page.wait_for_function("document.getElementById('audio').currentTime > 0.5",
                                     timeout=10_000)
        assert (await page.get_attribute("#slide", "src")) == f"slides/{names[0]}"
        # The ink drawn at 3 s shows over slide 1 once played past; the shown poll at 14 s.
        assert await page.get_attribute("#ink", "data-strokes") == "0"
        await page.evaluate("document.getElementById('audio').currentTime = 5")
        await page.wait_for_function("document.getElementById('ink').dataset.strokes === '2'",
                                     timeout=5_000)
        assert await page.evaluate(INKED_PIXELS.replace("SELECTOR", "#ink")) > 100
        assert await page.is_hidden("#poll")
        await page.evaluate("document.getElementById('audio').currentTime = 15")
        await page.wait_for_function("!document.getElementById('poll').hidden", timeout=5_000)
        assert "2 + 2?" in (await page.text_content("#poll") or "")
        assert "4: 3 (75%)" in (await page.text_content("#poll") or "")
        await page.click("#list button:nth-child(3)")
        await page.wait_for_function("document.getElementById('audio').currentTime >= 25.7",
                                     timeout=5_000)
        assert (await page.get_attribute("#slide", "src")) == f"slides/{names[2]}"
        assert await page.text_content("#where") == "3 / 3"
        await page.click("#prev")  # within 3 s of slide 3's start: back to slide 2
        await page.wait_for_function(
            "Math.abs(document.getElementById('audio').currentTime - 12.3) < 1", timeout=5_000)
        assert (await page.get_attribute("#slide", "src")) == f"slides/{names[1]}"
        await page.click("#speeds button:nth-child(3)")
        assert await page.evaluate("document.getElementById('audio').playbackRate") == 1.5
        before = await page.evaluate("document.getElementById('audio').currentTime")
        await asyncio.sleep(1.0)
        after = await page.evaluate("document.getElementById('audio').currentTime")
        assert after - before > 1.2  # playing, and faster than real time


@pytest.mark.browser
@pytest.mark.skipif(not available(), reason="no chromium")
async def test_online_playback_page(tmp_path: Path) -> None:
    """playback.js against a real HTTP server: plays listen.opus, fetches slides lazily."""
    from aiohttp import web

    names = await record_lesson(tmp_path, 1)
    directory = recording_dir(tmp_path, 1)
    result = await postprocess.process(directory, tmp_path / "slides")
    manifest = playback.playback_manifest(
        directory, result.duration_s, "/rec/listen.opus",
        lambda image: {"small": f"/slides/{image}", "large": f"/slides/{image}?large"})
    requested: list[str] = []

    @web.middleware
    async def log_requests(request: web.Request, handler: object) -> web.StreamResponse:
        requested.append(request.path_qs)
        return await handler(request)  # type: ignore[operator, no-any-return]

    async def page(_request: web.Request) -> web.Response:
        return web.Response(content_type="text/html", text=(
            '<!doctype html><div id="pb" data-playback-manifest="/manifest"></div>'
            '<script src="/static/ink.js"></script>'
            '<script src="/static/playback.js"></script>'))

    async def manifest_json(_request: web.Request) -> web.Response:
        return web.json_response(manifest)

    app = web.Application(middlewares=[log_requests])
    app.router.add_get("/", page)
    app.router.add_get("/manifest", manifest_json)
    app.router.add_static("/static", WEB_DIR / "static")
    app.router.add_static("/rec", directory)
    app.router.add_static("/slides", tmp_path / "slides")
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with chromium(viewport={"width": 360, "height": 640}) as context:
            browser_page = await context.new_page()
            await browser_page.goto(f"http://127.0.0.1:{port}/")
            await browser_page.wait_for_selector(".pb-audio")
            await browser_page.evaluate("document.querySelector('.pb-audio').play()")
            await browser_page.wait_for_function(
                "document.querySelector('.pb-audio').currentTime > 0.5", timeout=10_000)
            slide_requests = [p for p in requested if p.startswith("/slides/")]
            assert slide_requests == [f"/slides/{names[0]}", f"/slides/{names[1]}"]  # + one ahead
            await browser_page.click(".pb-list button:nth-child(3)")
            await browser_page.wait_for_function(
                "document.querySelector('.pb-audio').currentTime >= 25.7", timeout=5_000)
            assert (await browser_page.get_attribute(".pb-slide", "src")) == f"/slides/{names[2]}"
            assert await browser_page.text_content(".pb-where") == "3 / 3"
            await browser_page.click(".pb-speeds button:nth-child(2)")
            assert await browser_page.evaluate(
                "document.querySelector('.pb-audio').playbackRate") == 1.25
            assert await browser_page.get_attribute(".pb-ink", "data-strokes") == "0"
            await browser_page.evaluate("document.querySelector('.pb-audio').currentTime = 4")
            await browser_page.wait_for_function(
                "document.querySelector('.pb-ink').dataset.strokes === '2'", timeout=5_000)
            assert await browser_page.evaluate(INKED_PIXELS.replace("SELECTOR", ".pb-ink")) > 100
            await browser_page.evaluate("document.querySelector('.pb-audio').currentTime = 14.5")
            await browser_page.wait_for_function(
                "!document.querySelector('.pb-poll').hidden", timeout=5_000)
            assert "4: 3" in (await browser_page.text_content(".pb-poll") or "")
    finally:
        await runner.cleanup()
