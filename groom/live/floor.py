"""The floor: raised hands in the order they went up, and the one student who may speak.

Kept apart from the room's media so its rules are plain to read and test: a hand goes up once
(raising it again changes nothing), the queue is in the order hands went up, only one student
holds the floor at a time (giving it to another takes it from the previous holder), and the
teacher can take it back (give it to nobody). Who holds the floor decides whose microphone the
mixer hears; that renegotiation, and the messages telling people, stay with the room.
"""

from __future__ import annotations

from typing import Optional


class Floor:
    def __init__(self) -> None:
        self.holder: Optional[str] = None  # participant id of the student speaking, if any
        self._hands: dict[str, None] = {}  # raised hands, oldest first

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
