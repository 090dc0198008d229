"""The lesson recorder: the teacher's Opus packets to an Ogg file, plus the event timeline.

Like Galène's disk writer, the recorder is just another listener: a ``PacketSink`` subscribed to
the room's recording tier (16 kbit/s wideband Opus). It never re-encodes. ``push`` only appends
to a list (it runs on the hot path); a flusher task owned by the recorder turns the list into Ogg
pages and writes and fsyncs them in a thread every ``flush_interval`` seconds, so a crash or power
cut loses at most about that much audio.

Position in the file is lesson time: sample 0 is the moment given as ``started`` (the lesson's
start), and gaps (DTX, the teacher away, a late first packet) are filled with 3-byte-per-frame
Opus silence, so the Ogg granule positions, the audio duration and the timeline's ``at_ms`` all
share one clock. A recording directory holds::

    audio.ogg       Ogg Opus, mono header, pre-skip 0
    timeline.jsonl  one {"at_ms", "kind", "data"} per line, written and flushed per event
    closed.json     written last; its absence means the recording was interrupted

``recover`` repairs interrupted directories at server start.

A lesson recorded in several runs (its process was killed and the lesson reopened, maybe on
another node) is ONE recording in several parts, folders side by side::

    recordings/<id>-part1/   the first run, closed (repaired if it was left open)
    recordings/<id>-part2/   the next one, and so on: numbered in the order they were recorded
    recordings/<id>/         the last run: the one being written, and where the outputs go

``keep_as_part`` moves the folder of the run before aside when a new run starts (never over
another part); ``earlier_parts`` lists them oldest first. Each part keeps its own clock (sample 0
is the start of its run), so a part is exactly what one recorder wrote; post-processing
(``postprocess.py``) plays them one after the other, notes in the last folder's marker how many
parts it joined (``JOINED``, read back by ``joined_parts``), and ``playback.read_timeline``
shifts each part's events by the length of the parts before it. The time the lesson was down
between two runs is not in the recording. Once joined, a part keeps only its marker and its
timeline (its audio is in the outputs); deleting a recording deletes its parts
(``web/recordings.py`` ``remove_files``).

A write that fails (a full disk) stops the recording there, never the lesson: ``push`` and
``add_event`` keep returning at once, the error is logged once and kept in ``error``, and
``close`` cuts the files back to their last whole page and line, as ``repair`` does, and writes
the marker with the error. The marker's space is reserved when the recording opens, so it can be
written on a disk that is full.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import struct
from pathlib import Path
from typing import IO, Any, Optional

from groom.audio.ogg import FLAG_EOS, ogg_crc, ogg_page, opus_head, opus_tags, scan_pages
from groom.audio.packets import SAMPLE_RATE, EncodedPacket
from groom.core.tasks import cancel

log = logging.getLogger(__name__)

AUDIO = "audio.ogg"
TIMELINE = "timeline.jsonl"
CLOSED = "closed.json"

FRAME = SAMPLE_RATE // 50  # 20 ms, the unit silence is filled in
# Opus code-3 packet of n CELT 20 ms frames, each the 2-byte silent frame FF FE (RFC 6716 3.2.5).
_SILENCE_TOC = 0xFB
MAX_SILENCE_FRAMES = 6  # 120 ms, the longest an Opus packet may be
# Timestamps are trusted first; the wall clock only fills gaps the timestamps do not show
# (e.g. an encoder that stops counting while the teacher is away). Below this, arrival jitter.
WALL_SLACK_S = 2.0
_SERIAL = 0x67526F6D  # "gRom": one logical stream per file, any constant will do


PART = "-part"  # recordings/<id>-part<n>: an earlier part of the lesson's recording


def recording_dir(data_dir: Path, lesson_id: int) -> Path:
    return data_dir / "recordings" / str(lesson_id)


def _numbered_parts(directory: Path) -> list[tuple[int, Path]]:
    if not directory.parent.is_dir():
        return []
    prefix = directory.name + PART
    found = [(int(p.name[len(prefix):]), p) for p in directory.parent.iterdir()
             if p.name.startswith(prefix) and p.name[len(prefix):].isdigit() and p.is_dir()]
    return sorted(found)


def earlier_parts(directory: Path) -> list[Path]:
    """The folders of a recording's earlier parts, oldest first (blocking: lists the folder).

    Parts moved aside before they were numbered from 1 carry a Unix time instead; larger than
    any count, it sorts them the same way."""
    return [p for _, p in _numbered_parts(directory)]


JOINED = "joined_parts"  # in a marker: how many earlier parts this folder's recording is made of


def joined_parts(directory: Path) -> list[Path]:
    """The earlier parts the recording in ``directory`` is made of, oldest first (blocking).

    Post-processing joins every earlier part there is and says how many in the folder's marker
    (``JOINED``), so a recording processed alone stays alone for its readers even if an older
    version left a folder beside it; an unprocessed one is its own part only."""
    count = int((read_marker(directory) or {}).get(JOINED, 0))
    return earlier_parts(directory)[-count:] if count else []


def part_seconds(part: Path) -> float:
    """How long a closed part lasts on the recording's clock (its audio, by the marker)."""
    return float((read_marker(part) or {}).get("duration_s", 0.0))


def keep_as_part(directory: Path) -> Optional[Path]:
    """Move the folder of the lesson's previous run aside as the recording's next part, after
    repairing it if its process was killed while writing it (blocking). ``None``: no earlier run.

    Only the lesson's owner calls this, before its recorder opens, so nothing writes there: a
    process that was writing it is dead (its marker is missing: repaired here) or has closed it.
    """
    if not directory.exists():
        return None
    if read_marker(directory) is None:
        marker = repair(directory)
        log.warning("recording %s was interrupted; repaired %.1f s of audio",
                    directory, marker["duration_s"])
    numbered = _numbered_parts(directory)
    part = directory.with_name(f"{directory.name}{PART}{numbered[-1][0] + 1 if numbered else 1}")
    directory.rename(part)  # one past the last part: never over another
    return part


def _silence(frames: int) -> bytes:
    return bytes([_SILENCE_TOC, frames]) + b"\xff\xfe" * frames


# --- the recorder ----------------------------------------------------------------------------

class Recorder:
    """Writes one lesson's recording; a ``PacketSink`` for the recording tier's packets."""

    def __init__(self, directory: Path, started: float, *, flush_interval: float = 1.0) -> None:
        """``started`` is the lesson start on the ``time.monotonic()`` clock used by
        ``EncodedPacket.created``; audio position 0 is that moment."""
        self.directory = directory
        self.started = started
        self.flush_interval = flush_interval
        self.packets = 0  # real packets kept
        self.silence_samples = 0  # samples filled with silence (gaps, late start)
        self.dropped = 0  # duplicate or overlapping packets
        self._pending: list[tuple[bytes, int]] = []  # (payload, granule at its end)
        self._pos = 0  # samples pushed so far = granule of the last pending packet
        self._next_ts: Optional[int] = None
        self._written = 0  # granule of the last page written
        self._page_seq = 0
        self._audio: Optional[IO[bytes]] = None
        self._timeline: Optional[IO[str]] = None
        self._flusher: Optional[asyncio.Task[None]] = None
        self._writing: Optional[asyncio.Future[None]] = None  # the one write in a thread, if any
        self._closed = False
        self.error: Optional[str] = None  # why the recording stopped before the lesson did

    @property
    def duration_s(self) -> float:
        return self._pos / SAMPLE_RATE

    def _failed(self, exc: OSError) -> None:
        """Stop recording after a failed write (a full disk): logged once, kept in ``error``."""
        if self.error is not None:
            return
        what = "disk full" if exc.errno == errno.ENOSPC else "write failed"
        self.error = (f"{what} at {self._written / SAMPLE_RATE:.1f} s: the rest of the lesson "
                      f"was not recorded ({exc.strerror or exc})")
        self._pending.clear()
        log.error("recording %s stopped: %s", self.directory, self.error)

    async def start(self) -> None:
        try:
            await asyncio.to_thread(self._open)
        except OSError as exc:  # a lesson goes live even when its recording cannot
            self._failed(exc)
            return
        self._flusher = asyncio.create_task(self._flush_loop(), name=f"recorder {self.directory}")

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._audio = open(self.directory / AUDIO, "wb")
        self._timeline = open(self.directory / TIMELINE, "a", encoding="utf-8")
        # Pre-skip 0: sample 0 of the file is lesson time 0.
        self._audio.write(ogg_page([opus_head(pre_skip=0)], 0, _SERIAL, 0, first=True))
        self._audio.write(ogg_page([opus_tags()], 0, _SERIAL, 1))
        self._page_seq = 2
        self._sync()
        reserve_marker(self.directory)

    def push(self, packet: EncodedPacket) -> None:
        """Queue one packet; O(1) except when a gap is filled with silence."""
        if self._closed or self.error is not None:
            return
        if self._next_ts is None:
            self._next_ts = packet.timestamp
        gap = packet.timestamp - self._next_ts
        if gap < 0:
            self.dropped += 1
            return
        wall_gap = round((packet.created - self.started) * SAMPLE_RATE) - self._pos
        if wall_gap > WALL_SLACK_S * SAMPLE_RATE or self.packets == 0:
            gap = max(gap, wall_gap)
        if gap >= FRAME:
            self._fill_silence(round(gap / FRAME))
        self._pos += packet.duration
        self._pending.append((packet.payload, self._pos))
        self._next_ts = packet.timestamp + packet.duration
        self.packets += 1

    def _fill_silence(self, frames: int) -> None:
        while frames > 0:
            n = min(frames, MAX_SILENCE_FRAMES)
            self._pos += n * FRAME
            self.silence_samples += n * FRAME
            self._pending.append((_silence(n), self._pos))
            frames -= n

    def add_event(self, at_ms: int, kind: str, data: dict[str, Any]) -> None:
        """Append one timeline event (lesson time in ms); one small write, flushed to the OS."""
        if self._closed or self._timeline is None or self.error is not None:
            return
        try:
            self._timeline.write(json.dumps({"at_ms": at_ms, "kind": kind, "data": data},
                                            separators=(",", ":")) + "\n")
            self._timeline.flush()
        except OSError as exc:
            self._failed(exc)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            await self._flush(final=False)

    async def _flush(self, final: bool) -> None:
        # Keep the newest packet back until close so the EOS page is never empty.
        cut = len(self._pending) if final else len(self._pending) - 1
        if cut <= 0 or self.error is not None:
            return
        batch, self._pending = self._pending[:cut], self._pending[cut:]
        # One writer: cancelling the flusher (the close) while a write runs in its thread does
        # not stop that write, so ``close`` waits for it (``_settle``) before its own.
        self._writing = asyncio.ensure_future(asyncio.to_thread(self._write_pages, batch, final))
        await asyncio.wait({self._writing})  # neither raises its error nor cancels it
        await self._settle()

    async def _settle(self) -> None:
        """Wait for the write in flight, if any (a failed one stops the recording)."""
        writing, self._writing = self._writing, None
        if writing is None:
            return
        try:
            await writing
        except OSError as exc:
            self._failed(exc)

    def _write_pages(self, batch: list[tuple[bytes, int]], final: bool) -> None:
        assert self._audio is not None
        pages: list[bytes] = []
        start = 0
        while start < len(batch):
            end, segments = start, 0
            while end < len(batch) and segments + len(batch[end][0]) // 255 + 1 <= 255:
                segments += len(batch[end][0]) // 255 + 1
                end += 1
            last = end == len(batch)
            pages.append(ogg_page([p for p, _ in batch[start:end]], batch[end - 1][1],
                                  _SERIAL, self._page_seq, last=final and last))
            self._page_seq += 1
            start = end
        self._audio.write(b"".join(pages))
        self._sync()
        self._written = batch[-1][1]

    def _sync(self) -> None:
        for f in (self._audio, self._timeline):
            if f is not None:
                f.flush()
                os.fsync(f.fileno())

    async def close(self) -> None:
        """Stop the flusher, write the last page (EOS) and the ``closed.json`` marker."""
        if self._closed:
            return
        self._closed = True
        await cancel(self._flusher)
        await self._settle()  # the last periodic write, still in its thread, goes first
        if self._audio is None and self.error is None:
            return
        await self._flush(final=True)
        marker = {"has_audio": self.packets > 0, "duration_s": self.duration_s,
                  "packets": self.packets, "silence_s": self.silence_samples / SAMPLE_RATE,
                  "dropped": self.dropped, "recovered": False}
        try:
            await asyncio.to_thread(self._finish, marker)
        except OSError as exc:  # e.g. the last page did not fit
            self._failed(exc)
        if self.error is not None:
            try:
                marker = await asyncio.to_thread(self._finish_failed, marker)
            except OSError as exc:  # left without a marker: ``recover`` will repair it
                log.error("recording %s not closed: %s", self.directory, exc)
                return
            self._pos = round(marker["duration_s"] * SAMPLE_RATE)  # what the file holds

    def _finish(self, marker: dict[str, Any]) -> None:
        for f in (self._audio, self._timeline):
            if f is not None:
                f.close()
        if self.error is None:
            write_marker(self.directory, marker)

    def _finish_failed(self, marker: dict[str, Any]) -> dict[str, Any]:
        for f in (self._audio, self._timeline):
            if f is not None:
                try:
                    f.close()  # flushes what is buffered, which may fail again
                except OSError:
                    pass
        return repair(self.directory, {**marker, "error": self.error})


MARKER_RESERVE = 4096  # bytes; a marker is ~200


def reserve_marker(directory: Path) -> None:
    """Take the marker's disk space now, so that it can be written once the disk is full."""
    with open(directory / (CLOSED + ".tmp"), "wb") as f:
        f.write(b" " * MARKER_RESERVE)
        f.flush()
        os.fsync(f.fileno())


def write_marker(directory: Path, marker: dict[str, Any]) -> None:
    """Write ``closed.json`` atomically, over the reserved space when there is some."""
    tmp = directory / (CLOSED + ".tmp")
    data = json.dumps(marker).encode()
    with open(tmp, "r+b" if tmp.exists() else "wb") as f:
        f.write(data)
        f.truncate(len(data))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / CLOSED)


def read_marker(directory: Path) -> Optional[dict[str, Any]]:
    try:
        return json.loads((directory / CLOSED).read_text())  # type: ignore[no-any-return]
    except FileNotFoundError:
        return None


# --- crash recovery --------------------------------------------------------------------------

def repair(directory: Path, marker: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Make an interrupted recording playable and mark it closed; returns the marker (``marker``
    updated with what the file now holds, by default a recovered one).

    The Ogg file is cut after its last complete page (whose flags get EOS and a new CRC), and a
    torn last line of the timeline is dropped. Nothing already on disk is re-encoded.
    """
    audio = directory / AUDIO
    data = audio.read_bytes() if audio.exists() else b""
    pages = scan_pages(data)
    audio_pages = [p for p in pages if p.seq >= 2]
    duration_s = 0.0
    if audio_pages:
        last = audio_pages[-1]
        page = bytearray(data[last.offset:last.offset + last.length])
        page[5] |= FLAG_EOS
        page[22:26] = b"\0\0\0\0"
        page[22:26] = struct.pack("<I", ogg_crc(bytes(page)))
        with open(audio, "r+b") as f:
            f.seek(last.offset)
            f.write(page)
            f.truncate(last.offset + last.length)
            f.flush()
            os.fsync(f.fileno())
        duration_s = last.granule / SAMPLE_RATE
    timeline = directory / TIMELINE
    if timeline.exists():
        raw = timeline.read_bytes()
        if raw and not raw.endswith(b"\n"):
            timeline.write_bytes(raw[:raw.rfind(b"\n") + 1])
    marker = {**(marker or {"recovered": True}), "has_audio": bool(audio_pages),
              "duration_s": duration_s}
    write_marker(directory, marker)
    return marker


def _recover_sync(data_dir: Path) -> list[int]:
    root = data_dir / "recordings"
    repaired: list[int] = []
    if not root.is_dir():
        return repaired
    for directory in sorted(root.iterdir()):
        if not directory.name.isdigit() or read_marker(directory) is not None:
            continue
        marker = repair(directory)
        log.warning("recording %s was interrupted; repaired %.1f s of audio",
                    directory.name, marker["duration_s"])
        repaired.append(int(directory.name))
    return repaired


async def recover(data_dir: Path) -> list[int]:
    """Repair every recording left open by a crash; returns their lesson ids (to be processed).

    Call at server start, before any room opens a recorder (an open one has no marker either).
    """
    return await asyncio.to_thread(_recover_sync, data_dir)
