"""Quick polls: a question with 2-6 choices (or true/false), one answer per student.

Answers are keyed by the participant's attendance key, so a student who reconnects cannot vote
twice. The teacher sees counts live; the class sees the result only when the teacher shows it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Optional

from groom.core.errors import AppError


@dataclass
class Poll:
    id: str
    question: str
    choices: list[str]
    votes: dict[str, int] = field(default_factory=dict)  # participant key -> choice
    open: bool = True

    def counts(self) -> list[int]:
        counts = [0] * len(self.choices)
        for choice in self.votes.values():
            counts[choice] += 1
        return counts

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "question": self.question, "choices": self.choices,
                "open": self.open}


class Polls:
    def __init__(self) -> None:
        self.current: Optional[Poll] = None

    def ask(self, question: str, choices: list[str]) -> Poll:
        question = question.strip()
        choices = [c.strip() for c in choices]
        if not question or not 2 <= len(choices) <= 6 or not all(choices):
            raise AppError("bad_poll", "A poll needs a question and 2 to 6 choices.", status=400)
        self.current = Poll(id=secrets.token_hex(4), question=question, choices=choices)
        return self.current

    def vote(self, key: str, poll_id: str, choice: int) -> Poll:
        poll = self.current
        if poll is None or poll.id != poll_id or not poll.open:
            raise AppError("poll_closed", "This poll is closed.", status=409)
        if not 0 <= choice < len(poll.choices):
            raise AppError("bad_choice", "There is no such choice.", status=400)
        if key in poll.votes:
            raise AppError("already_voted", "You have already answered.", status=409)
        poll.votes[key] = choice
        return poll

    def close(self) -> Poll:
        if self.current is None:
            raise AppError("no_poll", "There is no poll.", status=409)
        self.current.open = False
        return self.current
