"""Chat: short text messages to the class, limited in length and rate, switchable by the teacher.

Text is stored and relayed as plain text; pages show it with ``textContent``, never as HTML, so
script in a message or a name is shown, not run. Control characters are removed here.
"""

from __future__ import annotations

import time
import unicodedata
from dataclasses import dataclass, field

from groom.core.errors import AppError

MAX_CHARS = 300
PER_MINUTE = 12  # messages per student per minute
CLASS_PER_MINUTE = 60  # messages per minute from all students together (settings.chat_class_per_minute)
KEEP = 50  # recent messages sent to a late joiner


def clean(text: str) -> str:
    text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch)[0] != "C")
    return text.strip()[:MAX_CHARS]


@dataclass
class Chat:
    enabled: bool = True
    class_per_minute: int = CLASS_PER_MINUTE
    recent: list[dict[str, object]] = field(default_factory=list)
    _sent: dict[str, list[float]] = field(default_factory=dict)
    _class_sent: list[float] = field(default_factory=list)  # every student's message, last minute

    def post(self, sender_id: str, name: str, text: str, *, teacher: bool) -> dict[str, object]:
        if not self.enabled and not teacher:
            raise AppError("chat_off", "The teacher has turned chat off.", status=403)
        text = clean(text)
        if not text:
            raise AppError("empty_message", "The message is empty.", status=400)
        if not teacher:
            now = time.monotonic()
            times = [t for t in self._sent.get(sender_id, []) if now - t < 60]
            if len(times) >= PER_MINUTE:
                raise AppError("chat_too_fast", "Too many messages; wait a little.", status=429)
            # The class's budget: every message goes to every phone, so 500 students at their
            # own limit would be 100 messages a second on 2G. Over it, nothing is sent.
            self._class_sent = [t for t in self._class_sent if now - t < 60]
            if len(self._class_sent) >= self.class_per_minute:
                raise AppError("chat_busy", "The class chat is busy; wait a little and send "
                               "again.", status=429)
            self._class_sent.append(now)
            times.append(now)
            self._sent[sender_id] = times
        message: dict[str, object] = {"from": name, "id": sender_id, "text": text,
                                      "teacher": teacher}
        self.recent = (self.recent + [message])[-KEEP:]
        return message
