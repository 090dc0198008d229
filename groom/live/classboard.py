"""What the class shares besides audio: the deck and slide with its ink, the pointer, chat, polls.

``Board``, ``Chat`` and ``Polls`` each keep one kind of state; this part composes them for a
live room and decides what every change means for the people in it: which message goes to
everyone (or to the students only, or to the teacher only), what goes into the lesson's
timeline, and what a late joiner is sent at once (``snapshot``). It talks to the room only
through three callables, so it can be driven and checked without sockets, peer connections or
an event loop.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Protocol

from groom.board.board import Board
from groom.board.chat import CLASS_PER_MINUTE, Chat
from groom.board.polls import Polls
from groom.core.models import Slide

from .participant import Participant


class Broadcast(Protocol):
    def __call__(self, message: dict[str, Any], *, students_only: bool = False) -> None: ...


ToTeacher = Callable[[dict[str, Any]], None]
Record = Callable[[str, dict[str, Any]], None]  # (kind, data) into the lesson's timeline


class ClassBoard:
    def __init__(self, broadcast: Broadcast, to_teacher: ToTeacher, record: Record, *,
                 chat_per_minute: int = CLASS_PER_MINUTE) -> None:
        self.board = Board()
        self.chat = Chat(class_per_minute=chat_per_minute)
        self.polls = Polls()
        self._broadcast = broadcast
        self._to_teacher = to_teacher
        self._record = record

    def snapshot(self) -> dict[str, Any]:
        """What a (late) joiner needs at once: the deck, the slide and its ink, chat, the poll."""
        poll = self.polls.current
        return {"deck": self.board.deck(), "slide": self.board.current(),
                "chat": {"enabled": self.chat.enabled, "recent": self.chat.recent},
                "poll": poll.public() if poll is not None and poll.open else None}

    # ---- slides, ink, pointer ----------------------------------------------------------------

    def load_deck(self, deck_id: int, title: str, slides: list[Slide]) -> None:
        self.board.load_deck(deck_id, title, slides)
        self._broadcast({"type": "deck", "deck": self.board.deck()})
        if slides:
            self.show_slide(0)

    def show_slide(self, page: int) -> None:
        self.board.show(page)
        current = self.board.current()
        assert current is not None
        self._broadcast({"type": "slide", "slide": current})
        self._record("slide", {"deck_id": self.board.deck_id, "page": page,
                               "image": current["small"], "large": current["large"]})

    def add_ink(self, points: list[int], color: int, width: int) -> None:
        stroke = self.board.add_stroke(points, color, width)
        self._broadcast({"type": "ink", "page": self.board.page, "stroke": stroke},
                        students_only=True)
        self._record("ink", {"page": self.board.page, **stroke})

    def clear_ink(self) -> None:
        self.board.clear()
        self._broadcast({"type": "ink_clear", "page": self.board.page}, students_only=True)
        self._record("ink_clear", {"page": self.board.page})

    def point(self, x: Optional[int], y: Optional[int]) -> None:
        """The teacher's pointer: transient, not kept in the timeline."""
        self._broadcast({"type": "pointer", "x": x, "y": y}, students_only=True)

    # ---- chat ----------------------------------------------------------------------------------

    def post_chat(self, p: Participant, text: str) -> None:
        message = self.chat.post(p.id, p.name, text, teacher=p.role == "teacher")
        self._broadcast({"type": "chat", **message})
        self._record("chat", message)

    def set_chat(self, on: bool) -> None:
        self.chat.enabled = on
        self._broadcast({"type": "chat_enabled", "on": on})
        self._record("chat_enabled", {"on": on})

    # ---- polls ---------------------------------------------------------------------------------

    def ask_poll(self, question: str, choices: list[str]) -> None:
        poll = self.polls.ask(question, choices)
        self._broadcast({"type": "poll", "poll": poll.public()})
        self._record("poll", poll.public())
        self._poll_counts()

    def vote(self, p: Participant, poll_id: str, choice: int) -> None:
        self.polls.vote(p.key, poll_id, choice)
        p.send({"type": "voted", "poll_id": poll_id, "choice": choice})
        self._poll_counts()

    def close_poll(self, show: bool) -> None:
        poll = self.polls.close()
        result = {"type": "poll_result", "id": poll.id, "question": poll.question,
                  "choices": poll.choices, "counts": poll.counts(), "shown": show}
        if show:
            self._broadcast(result)
        else:
            self._to_teacher(result)
        self._record("poll_result", {k: v for k, v in result.items() if k != "type"})

    def _poll_counts(self) -> None:
        poll = self.polls.current
        if poll is not None:
            self._to_teacher({"type": "poll_counts", "id": poll.id, "counts": poll.counts(),
                              "voters": len(poll.votes)})
