"""Decode once, mix, clock: the one place where the room's audio timeline is made.

One module because its parts (the bounded sample buffer, the source readers, the floor's return
track) exist only for this clock and share its frame size and pacing rules, which read best in
one place: the clock rule below.

The teacher's decoded frames (and those of the student holding the floor) are resampled to
48 kHz mono s16, mixed, and handed to the tiers as exactly one 20 ms frame per 20 ms, with pts
on a 48 kHz clock that belongs to the mixer. Because the clock is ours, not the teacher's RTP
clock, the students' streams keep running across a teacher reconnect, a floor change, a DTX
pause or plain silence, and a student can switch tiers without a jump.

Clock rule (``_run``): a frame is due every 20 ms.
- A teacher frame goes out when it arrives, and the next one is due 20 ms after that arrival.
  So the output follows the teacher's own pace: no drift against the teacher's sound card.
- A frame may go out up to ``CATCH_UP`` (10 ms) before it is due: a backlog (a network stall
  released a bunch of frames; the teacher's clock runs fast) drains at twice real time, never
  as a burst, and the schedule slides back towards early arrivals after a late one instead of
  keeping the worst lateness as latency. Early delivery is paid from a token bucket
  (``CATCH_UP_BUDGET``, refilled at ``CATCH_UP_REFILL``), so even a source that sends faster
  than real time can push the output at most 5 % ahead of the wall clock; the rest is dropped
  by the bounded buffer. Delivering early does not speed the audio up, only its transport.
- When no teacher frame is there ``GRACE`` after it was due (the teacher's browser is in DTX,
  the network stalled, or there is no teacher), a frame of silence (plus the floor) goes out on
  the timer, with the next one due exactly 20 ms later, so timer mode does not drift either.
  The tiers' encoders then run in DTX and the silence costs next to nothing on the air.
- Whatever happens, two frames are never sent less than 10 ms apart. If the loop itself was
  held up for long (``RESYNC``), the missed frames are skipped rather than caught up; pts still
  advance by the skipped time so receivers see a gap, like DTX.

Every source buffer is bounded (``MAX_BUFFER``, drop oldest) and aiortc's unbounded remote-track
queue is drained by our reader as fast as it fills, so overload shows up as loss, never as
latency.
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import logging
import math
import time
import weakref
from collections.abc import Callable

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from groom.core.tasks import cancel

from .ingress import OpusIngress

log = logging.getLogger(__name__)

SAMPLE_RATE = 48_000
FRAME_SAMPLES = 960  # 20 ms
FRAME_SECONDS = FRAME_SAMPLES / SAMPLE_RATE
TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
MAX_BUFFER = 5 * FRAME_SAMPLES  # 100 ms per source
CATCH_UP = FRAME_SECONDS / 2  # a teacher frame may go out this early: at most 2x real time
CATCH_UP_BUDGET = 5 * FRAME_SECONDS  # at most 100 ms of early delivery at once ...
CATCH_UP_REFILL = 0.05  # ... earned back at 5 % of real time
GRACE = 0.060  # wait this long past due for a late teacher frame before sending silence
RESYNC = 0.200  # this far behind schedule, skip frames instead of catching up
LEVEL_FRAMES = 10  # teacher level every 200 ms (5x/s)
SILENCE_DBFS = -100.0
FLOOR_TRACK_FRAMES = 5  # the teacher's return stream holds at most 100 ms
# The floor is read at the teacher's pace, so nothing else drains a backlog of it (a burst after
# a stall, frames queued in aiortc before it got the floor, a faster sound card): when more than
# one packet plus FLOOR_SLACK is waiting, the oldest audio is dropped down to one packet, like a
# jitter buffer dropping late packets. (Students send 60 ms packets: see sdp.student_answer.)
FLOOR_SLACK = 2 * FRAME_SAMPLES

FrameSink = Callable[[av.AudioFrame, float], None]  # TierSet.feed(frame, created)


class SampleBuffer:
    """A bounded FIFO of mono s16 samples that drops the oldest when full.

    Each chunk keeps the ``time.monotonic()`` at which it entered the server, so the frame made
    from it can carry that moment downstream for latency measurement.
    """

    def __init__(self, capacity: int = MAX_BUFFER) -> None:
        self.capacity = capacity
        self._chunks: collections.deque[tuple[np.ndarray, float]] = collections.deque()
        self._size = 0
        self.dropped = 0  # samples thrown away because the buffer was full

    def __len__(self) -> int:
        return self._size

    def push(self, samples: np.ndarray, created: float) -> None:
        if len(samples) == 0:
            return
        self._chunks.append((samples, created))
        self._size += len(samples)
        self.discard(self._size - self.capacity)

    def discard(self, count: int) -> None:
        """Throw away the oldest ``count`` samples (counted in ``dropped``)."""
        excess = min(count, self._size)
        while excess > 0:
            head, head_created = self._chunks[0]
            if len(head) <= excess:
                self._chunks.popleft()
                cut = len(head)
            else:
                self._chunks[0] = (head[excess:], head_created)
                cut = excess
            self._size -= cut
            self.dropped += cut
            excess -= cut

    def pop(self, count: int) -> tuple[np.ndarray, float] | None:
        """The oldest ``count`` samples and the creation time of the first, or None if short."""
        if self._size < count:
            return None
        created = self._chunks[0][1]
        parts: list[np.ndarray] = []
        needed = count
        while needed:
            head, head_created = self._chunks[0]
            if len(head) <= needed:
                parts.append(head)
                self._chunks.popleft()
                needed -= len(head)
            else:
                parts.append(head[:needed])
                self._chunks[0] = (head[needed:], head_created)
                needed = 0
        self._size -= count
        return (parts[0] if len(parts) == 1 else np.concatenate(parts)), created


class Source:
    """One remote track read by one task into one bounded buffer, resampled to 48 kHz mono;
    or, without a track, a buffer that an ``OpusIngress`` fills as packets arrive (``push``).

    ``packet`` is the largest decoded frame seen (20 ms from a browser by default, 60 ms from
    a student page that honours our ``a=ptime:60``); the buffer always holds at least two.

    ``on_ready`` is called whenever a full 20 ms frame is buffered (and when the track ends),
    so the mixer can sleep until then instead of polling.
    """

    def __init__(self, track: MediaStreamTrack | None, name: str,
                 on_ready: Callable[[], None] | None = None) -> None:
        self.track = track
        self.name = name
        self.buffer = SampleBuffer()
        self.packet = FRAME_SAMPLES
        self.ended = False
        self._on_ready = on_ready
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.track is not None:
            self._task = asyncio.create_task(self._read(), name=f"mixer-source-{self.name}")

    def push(self, samples: np.ndarray, created: float) -> None:
        """Decoded mono 48 kHz samples, as they arrive (no task, no resampler in between)."""
        if len(samples) > self.packet:
            self.packet = len(samples)
            self.buffer.capacity = max(MAX_BUFFER, 2 * len(samples))
        self.buffer.push(samples, created)
        if self._on_ready is not None and len(self.buffer) >= FRAME_SAMPLES:
            self._on_ready()

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None

    def take(self) -> tuple[np.ndarray, float] | None:
        return self.buffer.pop(FRAME_SAMPLES)

    async def _read(self) -> None:
        assert self.track is not None
        try:
            while True:
                frame = await self.track.recv()
                created = time.monotonic()
                if not isinstance(frame, av.AudioFrame):
                    continue
                if frame.samples > self.packet:
                    self.packet = frame.samples
                    self.buffer.capacity = max(MAX_BUFFER, 2 * frame.samples)
                for out in self._resampler.resample(frame):
                    self.buffer.push(out.to_ndarray().reshape(-1), created)
                if self._on_ready is not None and len(self.buffer) >= FRAME_SAMPLES:
                    self._on_ready()
        except MediaStreamError:
            log.info("mixer source %s ended", self.name)
        finally:
            self.ended = True
            if self._on_ready is not None:
                self._on_ready()  # wake the mixer so it stops waiting for this source


class FloorTrack(MediaStreamTrack):
    """The floor student's audio as a track, for the teacher's return path.

    Frames come from the mixer's clock (so their pts are on the room timeline); the queue holds
    at most 100 ms and drops the oldest, so a teacher connection that cannot keep up loses audio
    instead of delaying it.
    """

    kind = "audio"

    def __init__(self, on_stop: Callable[[FloorTrack], None]) -> None:
        super().__init__()
        self._frames: collections.deque[av.AudioFrame] = collections.deque(
            maxlen=FLOOR_TRACK_FRAMES)
        self._ready = asyncio.Event()
        self._on_stop = on_stop

    def put(self, frame: av.AudioFrame) -> None:
        self._frames.append(frame)
        self._ready.set()

    async def recv(self) -> av.AudioFrame:
        while not self._frames:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        return self._frames.popleft()

    def stop(self) -> None:
        if self.readyState == "live":
            self._on_stop(self)
        super().stop()
        self._ready.set()  # let a pending recv() see the end


def _frame(samples: np.ndarray, pts: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = SAMPLE_RATE
    frame.pts = pts
    frame.time_base = TIME_BASE
    return frame


class Mixer:
    """Reads the teacher (and the floor student), emits one mixed 20 ms frame per 20 ms.

    ``sink`` (``TierSet.feed``) is called on the event loop as ``sink(frame, created)``: a
    48 kHz mono s16 ``av.AudioFrame`` whose ``pts`` is on the mixer's clock (time base
    1/48000), and the ``time.monotonic()`` at which its oldest source audio reached the server
    (the moment of emission for pure silence), so latency can be measured downstream.
    """

    def __init__(self, sink: FrameSink, on_level: Callable[[float], None] | None = None) -> None:
        self._sink = sink
        self._on_level = on_level
        self._teacher: Source | None = None
        self._floor: Source | None = None
        # weak: a teacher connection that closes without stopping its track must not leak it
        self._floor_tracks: weakref.WeakSet[FloorTrack] = weakref.WeakSet()
        self._task: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[None] | None = None  # the clock's sleep, cut short by _wake
        self._pts = 0
        self._budget = CATCH_UP_BUDGET  # seconds of early delivery still allowed
        self._level_sq = 0.0
        self._level_frames = 0
        self.teacher_level_dbfs: float | None = None  # None when there is no teacher
        self.frames_out = 0
        self.frames_skipped = 0
        self.silence_frames = 0  # timer-paced frames without teacher audio

    @property
    def pts(self) -> int:
        """The pts the next frame will carry."""
        return self._pts

    @property
    def dropped_samples(self) -> int:
        """Samples lost to full buffers on the current sources (drop oldest)."""
        return sum(s.buffer.dropped for s in (self._teacher, self._floor) if s is not None)

    # ---- sources -------------------------------------------------------------------------

    async def set_teacher(self, audio: MediaStreamTrack | OpusIngress | None) -> None:
        """Use ``audio`` as the teacher (None: no teacher; the clock keeps running on silence)."""
        old, self._teacher = self._teacher, self._new_source(audio, "teacher")
        self._level_sq, self._level_frames = 0.0, 0
        self.teacher_level_dbfs = None if audio is None else SILENCE_DBFS
        self._wake()
        if old is not None:
            await old.stop()

    async def set_floor(self, audio: MediaStreamTrack | OpusIngress | None) -> None:
        """Mix ``audio`` (the student holding the floor) in, or stop mixing one (None)."""
        old, self._floor = self._floor, self._new_source(audio, "floor")
        self._wake()
        if old is not None:
            await old.stop()

    def floor_track(self) -> FloorTrack:
        """A new track of the floor student's audio alone, for the teacher to hear."""
        track = FloorTrack(on_stop=self._floor_tracks.discard)
        self._floor_tracks.add(track)
        return track

    def _new_source(self, audio: MediaStreamTrack | OpusIngress | None, name: str) -> Source | None:
        """A buffer for ``audio``: an ``OpusIngress`` pushes into it as packets arrive (what
        a live room uses); a track (tests, files) is read by a task."""
        if audio is None:
            return None
        # only the teacher paces the clock; the floor is taken at whatever pace that is
        on_ready = self._wake if name == "teacher" else None
        if isinstance(audio, OpusIngress):
            source = Source(None, name, on_ready=on_ready)
            audio.attach(source.push)
            return source
        source = Source(audio, name, on_ready=on_ready)
        if self._task is not None:
            source.start()
        return source

    # ---- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        if self._task is not None:
            return
        for source in (self._teacher, self._floor):
            if source is not None:
                source.start()
        self._task = asyncio.create_task(self._run(), name="mixer")

    async def stop(self) -> None:
        """Stop the clock and the readers; end the teacher's floor tracks."""
        await cancel(self._task)
        self._task = None
        for source in (self._teacher, self._floor):
            if source is not None:
                await source.stop()
        for track in list(self._floor_tracks):
            track.stop()

    # ---- the clock -----------------------------------------------------------------------

    async def _run(self) -> None:
        due = last = time.monotonic()
        last_sent = -math.inf
        while True:
            teacher = self._teacher
            now = time.monotonic()
            self._budget = min(CATCH_UP_BUDGET, self._budget + (now - last) * CATCH_UP_REFILL)
            last = now
            if teacher is not None and len(teacher.buffer) >= FRAME_SAMPLES:
                lead = min(CATCH_UP, self._budget)
                # never two frames closer than 10 ms, even after the loop itself was held up
                send_at = max(due - lead, last_sent + FRAME_SECONDS - CATCH_UP)
                if now < send_at:
                    await asyncio.sleep(send_at - now)
                if self._teacher is not teacher:  # replaced while we slept
                    continue
                chunk = teacher.take()
                assert chunk is not None
                last_sent = time.monotonic()
                self._budget -= max(0.0, min(lead, due - last_sent))  # only earliness costs
                # Pace from when the frame arrived (or was allowed out), not from when this
                # loop woke up: wake-up delays would otherwise add up to a slow clock.
                due = max(chunk[1], send_at) + FRAME_SECONDS
                self._emit(chunk)
            else:
                live = teacher is not None and not teacher.ended
                deadline = max(due + (GRACE if live else 0.0),
                               last_sent + FRAME_SECONDS - CATCH_UP)
                if now < deadline:
                    await self._sleep(deadline - now)
                    if self._teacher is not teacher or time.monotonic() < deadline:
                        continue  # woken early: a teacher frame or a new source
                self.silence_frames += 1
                last_sent = time.monotonic()
                self._emit(None)
                due += FRAME_SECONDS
            behind = time.monotonic() - due
            if behind > RESYNC:
                skipped = int(behind / FRAME_SECONDS)
                self.frames_skipped += skipped
                self._pts += skipped * FRAME_SAMPLES
                due += skipped * FRAME_SECONDS
                log.warning("mixer fell %.0f ms behind; skipped %d frames", behind * 1000, skipped)

    async def _sleep(self, seconds: float) -> None:
        """Sleep up to ``seconds``; a source with a frame ready (or a new source) ends it early.

        One future and one timer per wait: this runs 50 times a second in every room.
        """
        waiter = asyncio.get_running_loop().create_future()
        handle = asyncio.get_running_loop().call_later(seconds, self._wake)
        self._waiter = waiter
        try:
            await waiter
        finally:
            handle.cancel()
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _emit(self, teacher_chunk: tuple[np.ndarray, float] | None) -> None:
        floor = self._floor
        floor_chunk = None
        if floor is not None:
            floor_chunk = floor.take()
            if len(floor.buffer) > floor.packet + FLOOR_SLACK:
                floor.buffer.discard(len(floor.buffer) - floor.packet)
        now = time.monotonic()
        if teacher_chunk is not None and floor_chunk is not None:
            mixed = teacher_chunk[0].astype(np.int32) + floor_chunk[0]
            samples = np.clip(mixed, -32768, 32767).astype(np.int16)
            created = min(teacher_chunk[1], floor_chunk[1])
        elif teacher_chunk is not None:
            samples, created = teacher_chunk
        elif floor_chunk is not None:
            samples, created = floor_chunk
        else:
            samples, created = np.zeros(FRAME_SAMPLES, dtype=np.int16), now
        pts = self._pts
        self._pts += FRAME_SAMPLES
        self.frames_out += 1
        if self._teacher is not None:
            self._update_level(teacher_chunk[0] if teacher_chunk is not None else None)
        if floor_chunk is not None and self._floor_tracks:
            back = _frame(floor_chunk[0], pts)
            for track in self._floor_tracks:
                track.put(back)
        try:
            self._sink(_frame(samples, pts), created)
        except Exception:  # a consumer bug must not stop the room's clock
            log.exception("mixer sink failed")

    def _update_level(self, samples: np.ndarray | None) -> None:
        if samples is not None:
            as_float = samples.astype(np.float32)
            self._level_sq += float(np.dot(as_float, as_float)) / FRAME_SAMPLES
        self._level_frames += 1
        if self._level_frames < LEVEL_FRAMES:
            return
        mean_sq = self._level_sq / self._level_frames
        self._level_sq, self._level_frames = 0.0, 0
        level = 10 * math.log10(mean_sq / 32768.0**2) if mean_sq > 0 else SILENCE_DBFS
        self.teacher_level_dbfs = max(level, SILENCE_DBFS)
        if self._on_level is not None:
            self._on_level(self.teacher_level_dbfs)
