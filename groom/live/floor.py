"""The floor: raised hands in the order they went up, and the one student who may speak.

Kept apart from the room's media so its rules are plain to read and test: a hand goes up once
(raising it again changes nothing), the queue is in the order hands went up, only one student
holds the floor at a time (giving it to another takes it from the previous holder), and the
teacher can take it back (give it to nobody). Who holds the floor decides whose microphone the
mixer hears; that renegotiation, and the messages telling people, stay with the room.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

COALESCE_SECONDS = 10.0  # the timeline keeps at most one hand change per student this often


class Floor:
    def __init__(self, changes_per_minute: int = 12) -> None:
        self.holder: Optional[str] = None  # participant id of the student speaking, if any
        self._hands: dict[str, None] = {}  # raised hands, oldest first
        self._per_minute = changes_per_minute
        self._changes: dict[str, list[float]] = {}  # a student's own hand changes in the last minute

    def may_change(self, pid: str, now: float) -> bool:
        """Whether a student may raise or lower their own hand now (and count it when they may):
        at most ``changes_per_minute`` in any minute, so toggling cannot flood the teacher."""
        times = [t for t in self._changes.get(pid, ()) if now - t < 60]
        if len(times) >= self._per_minute:
            self._changes[pid] = times
            return False
        times.append(now)
        self._changes[pid] = times
        return True

    def forget(self, pid: str) -> None:
        self._changes.pop(pid, None)

    def set_hand(self, pid: str, up: bool) -> bool:
        """Raise or lower a hand; False when nothing changed (already up, or already down)."""
        if up == (pid in self._hands):
            return False
        if up:
            self._hands[pid] = None
        else:
            del self._hands[pid]
        return True

    def has_hand(self, pid: str) -> bool:
        return pid in self._hands

    def queue(self) -> list[str]:
        """Raised hands, in the order they went up."""
        return list(self._hands)

    def holds(self, pid: str) -> bool:
        return self.holder is not None and self.holder == pid

    def give(self, pid: Optional[str]) -> Optional[str]:
        """Give the floor to ``pid`` (None: take it back); returns the previous holder."""
        previous, self.holder = self.holder, pid
        return previous


class HandRecords:
    """Which hand changes go into the lesson's timeline: quick toggles are coalesced.

    A student's first change is recorded at once; a change within ``COALESCE_SECONDS`` of the
    last one recorded waits, and only the final state is recorded when that time is up (``flush``,
    from the room's tick) and only if it differs from what was recorded. So a toggling student
    adds at most one event per ``COALESCE_SECONDS`` and a raise-lower-raise shows as one raise.
    """

    def __init__(self, record: Callable[[str, dict[str, Any]], None],
                 seconds: float = COALESCE_SECONDS) -> None:
        self._record = record
        self._seconds = seconds
        self._recorded: dict[str, tuple[float, bool]] = {}  # pid -> (when, up) last recorded
        self._pending: dict[str, tuple[str, bool]] = {}  # pid -> (name, up) waiting

    def changed(self, pid: str, name: str, up: bool, now: float) -> None:
        last = self._recorded.get(pid)
        if last is not None and now - last[0] < self._seconds:
            self._pending[pid] = (name, up)
            return
        self._pending.pop(pid, None)
        self._write(pid, name, up, now)

    def flush(self, now: float, *, everything: bool = False) -> None:
        for pid, (name, up) in list(self._pending.items()):
            when, last_up = self._recorded[pid]
            if everything or now - when >= self._seconds:
                del self._pending[pid]
                if up != last_up:
                    self._write(pid, name, up, now)

    def _write(self, pid: str, name: str, up: bool, now: float) -> None:
        self._recorded[pid] = (now, up)
        self._record("hand", {"id": pid, "name": name, "up": up})
