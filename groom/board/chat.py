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
KEEP = 50  # recent messages sent to a late joiner


def clean(text: str) -> str:
    text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch)[0] != "C")
    return text.strip()[:MAX_CHARS]


@dataclass
class Chat:
    enabled: bool = True
    recent: list[dict[str, object]] = field(default_factory=list)
    _sent: dict[str, list[float]] = field(default_factory=dict)

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
            times.append(now)
            self._sent[sender_id] = times
        message: dict[str, object] = {"from": name, "id": sender_id, "text": text,
                                      "teacher": teacher}
        self.recent = (self.recent + [message])[-KEEP:]
        return message
