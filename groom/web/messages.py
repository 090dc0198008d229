"""What a client may send on ``/ws``: one pydantic model per message type (``docs/protocol.md``).

Why a module of its own: the protocol is a contract, read by the connection handler
(``signaling.py``) and by the documentation test; keeping it apart from the sockets, outboxes and
rate limits makes it readable in one place. Every field is bounded (lengths, ranges, ids through
``params.Id``), and unknown fields are refused, before anything acts on a message.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from groom.board.board import COLORS, MAX_POINTS, WIDTHS

from .params import Id

MAX_MESSAGE = 16 * 1024


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Hello(_Msg):
    type: Literal["hello"]
    role: Literal["student", "teacher"]
    code: Optional[str] = Field(default=None, max_length=32)
    card: Optional[str] = Field(default=None, max_length=32)
    name: Optional[str] = Field(default=None, max_length=80)
    lesson_id: Optional[Id] = None
    resume: Optional[str] = Field(default=None, max_length=64)
    # A teacher without a login: the lesson pass of a BBB-API moderator (``bbb_join.py``).
    lesson_pass: Optional[str] = Field(default=None, max_length=400, alias="pass")


class Offer(_Msg):
    type: Literal["offer"]
    sdp: str = Field(max_length=MAX_MESSAGE)


# Cumulative getStats counters: finite (no Infinity/NaN, which the room turns into ints) and
# far above any lesson's (48 kHz samples for 10 hours are 1.7e9).
MAX_COUNT = 1e12
Count = Annotated[float, Field(ge=0, le=MAX_COUNT, allow_inf_nan=False)]


class Stats(_Msg):
    type: Literal["stats"]
    packets_received: Count = 0
    packets_lost: Annotated[float, Field(ge=-1e9, le=MAX_COUNT, allow_inf_nan=False)] = 0
    jitter: Optional[Annotated[float, Field(ge=0, le=60, allow_inf_nan=False)]] = None
    concealed_samples: Count = 0
    silent_concealed_samples: Count = 0
    total_samples: Count = 0
    bytes_received: Count = 0
    # A slide image finished since the last stats: its bytes x 8 / the seconds from its first
    # byte to its last, in kbit/s (the page's Resource Timing): what the link carried beside
    # the voice, whichever server process sent it.
    slide_kbps: Optional[Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)]] = None


class DataSaver(_Msg):
    type: Literal["data_saver"]
    on: bool


class Hand(_Msg):
    type: Literal["hand"]
    up: bool


class Floor(_Msg):
    type: Literal["floor"]
    participant_id: Optional[str] = Field(default=None, max_length=40)


class Kick(_Msg):
    type: Literal["kick"]
    participant_id: str = Field(max_length=40)


class End(_Msg):
    type: Literal["end"]


class Ping(_Msg):
    type: Literal["ping"]


class DeckMsg(_Msg):
    type: Literal["deck"]
    deck_id: Id


class SlideMsg(_Msg):
    type: Literal["slide"]
    page: int = Field(ge=0, le=10_000)


Coord = Annotated[int, Field(ge=0, le=1000)]


class Ink(_Msg):
    type: Literal["ink"]
    points: list[Coord] = Field(min_length=2, max_length=2 * MAX_POINTS)
    color: int = Field(default=0, ge=0, lt=COLORS)
    width: int = Field(default=1, ge=1, le=WIDTHS)


class InkClear(_Msg):
    type: Literal["ink_clear"]


class Pointer(_Msg):
    type: Literal["pointer"]
    x: Optional[Coord] = None
    y: Optional[Coord] = None


class ChatMsg(_Msg):
    type: Literal["chat"]
    text: str = Field(min_length=1, max_length=1000)


class ChatEnabled(_Msg):
    type: Literal["chat_enabled"]
    on: bool


class PollMsg(_Msg):
    type: Literal["poll"]
    question: str = Field(min_length=1, max_length=200)
    choices: list[Annotated[str, Field(min_length=1, max_length=80)]] = Field(min_length=2, max_length=6)


class PollClose(_Msg):
    type: Literal["poll_close"]
    show: bool = True


class Vote(_Msg):
    type: Literal["vote"]
    poll_id: str = Field(max_length=16)
    choice: int = Field(ge=0, le=5)


Message = Annotated[Union[Hello, Offer, Stats, DataSaver, Hand, Floor, Kick, End, Ping, DeckMsg,
                          SlideMsg, Ink, InkClear, Pointer, ChatMsg, ChatEnabled, PollMsg,
                          PollClose, Vote],
                    Field(discriminator="type")]
parse = TypeAdapter(Message)
TEACHER_ONLY = (Floor, Kick, End, DeckMsg, SlideMsg, Ink, InkClear, Pointer, ChatEnabled, PollMsg,
                PollClose)
STUDENT_ONLY = (Stats, DataSaver, Hand, Vote)
