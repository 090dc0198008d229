"""Durable state: the school office (schools, people, classes, rosters, lessons, attendance).

Live state (who is in a room right now, tiers, queues) lives in memory in ``room.py``; only what
must survive a restart is here. All times are stored in UTC; the school's time zone is applied
when a time is shown or entered.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any, Optional

from sqlalchemy import (
    JSON,
    BigInteger,
    Date,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    Time,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite forgets the zone otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Optional[dt.datetime], dialect: Any) -> Optional[dt.datetime]:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.timezone.utc)

    def process_result_value(self, value: Optional[dt.datetime], dialect: Any) -> Optional[dt.datetime]:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Base(DeclarativeBase):
    pass


class Role(str, enum.Enum):
    admin = "admin"
    teacher = "teacher"


class LessonState(str, enum.Enum):
    scheduled = "scheduled"
    live = "live"
    ended = "ended"
    cancelled = "cancelled"


class School(Base):
    __tablename__ = "schools"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64), default="Asia/Vientiane")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class User(Base):
    """An admin (of one school, or of all when ``school_id`` is NULL) or a teacher."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    display_name: Mapped[str] = mapped_column(String(200))
    role: Mapped[Role] = mapped_column(Enum(Role, native_enum=False, length=16))
    school_id: Mapped[Optional[int]] = mapped_column(ForeignKey("schools.id", ondelete="CASCADE"),
                                                     index=True)
    active: Mapped[bool] = mapped_column(default=True)
    # Bumped on password change so that older session cookies stop working.
    session_version: Mapped[int] = mapped_column(Integer, default=1)
    # Part of the teacher's calendar feed token: a new random salt is a new feed URL.
    calendar_salt: Mapped[str] = mapped_column(String(32), default="", server_default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    school: Mapped[Optional[School]] = relationship(lazy="joined")


class UserSession(Base):
    """One logged-in browser: the session cookie names it, logging out deletes it.

    Only a hash of the cookie's session key is stored, so a database copy (a backup) cannot be
    turned into working cookies."""

    __tablename__ = "user_sessions"

    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class Classroom(Base):
    """A class: a group of students taught by one teacher, joined with a short code."""

    __tablename__ = "classes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    school_id: Mapped[int] = mapped_column(ForeignKey("schools.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    subject: Mapped[str] = mapped_column(String(200), default="")
    grade: Mapped[str] = mapped_column(String(32), default="")
    teacher_id: Mapped[Optional[int]] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"),
                                                      index=True)
    join_code: Mapped[str] = mapped_column(String(16), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    teacher: Mapped[Optional[User]] = relationship(lazy="joined")


class Student(Base):
    """A roster entry. Students have no account; ``card_code`` is their personal join card."""

    __tablename__ = "students"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    class_id: Mapped[int] = mapped_column(ForeignKey("classes.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    card_code: Mapped[str] = mapped_column(String(16), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Series(Base):
    """A weekly series: the rule; its lessons are stored as rows of their own."""

    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    class_id: Mapped[int] = mapped_column(ForeignKey("classes.id", ondelete="CASCADE"), index=True)
    title: Mapped[str] = mapped_column(String(200), default="")
    weekdays: Mapped[str] = mapped_column(String(20))  # "0,2,4": Monday=0
    start_time: Mapped[dt.time] = mapped_column(Time)  # local to the school
    duration_minutes: Mapped[int] = mapped_column(Integer)
    first_date: Mapped[dt.date] = mapped_column(Date)
    last_date: Mapped[dt.date] = mapped_column(Date)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Lesson(Base):
    __tablename__ = "lessons"
    __table_args__ = (Index("ix_lessons_class_start", "class_id", "starts_at"),
                      Index("ix_lessons_teacher_start", "teacher_id", "starts_at"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    class_id: Mapped[int] = mapped_column(ForeignKey("classes.id", ondelete="CASCADE"))
    teacher_id: Mapped[Optional[int]] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    series_id: Mapped[Optional[int]] = mapped_column(ForeignKey("series.id", ondelete="SET NULL"),
                                                     index=True)
    title: Mapped[str] = mapped_column(String(200), default="")
    starts_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    ends_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    state: Mapped[LessonState] = mapped_column(Enum(LessonState, native_enum=False, length=16),
                                               default=LessonState.scheduled)
    started_at: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime)
    ended_at: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    classroom: Mapped[Classroom] = relationship(lazy="joined")


class Attendance(Base):
    """One student's presence in one lesson, filled by the live room."""

    __tablename__ = "attendance"
    __table_args__ = (UniqueConstraint("lesson_id", "participant_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    lesson_id: Mapped[int] = mapped_column(ForeignKey("lessons.id", ondelete="CASCADE"), index=True)
    student_id: Mapped[Optional[int]] = mapped_column(ForeignKey("students.id", ondelete="SET NULL"))
    # Stable across reconnects: "student:<id>" for card holders, "guest:<token>" otherwise.
    participant_key: Mapped[str] = mapped_column(String(80))
    name: Mapped[str] = mapped_column(String(200))
    joined_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    left_at: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime)
    seconds_present: Mapped[float] = mapped_column(default=0.0)
    bytes_sent: Mapped[int] = mapped_column(BigInteger, default=0)
    tier_seconds: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)


class LessonEvent(Base):
    """The lesson's timeline: everything the class saw (slides, ink, polls, hands, chat)."""

    __tablename__ = "lesson_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    lesson_id: Mapped[int] = mapped_column(ForeignKey("lessons.id", ondelete="CASCADE"), index=True)
    at_ms: Mapped[int] = mapped_column(BigInteger)  # since the lesson started
    kind: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)



class JobState(str, enum.Enum):
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"


class Job(Base):
    """Background work that must survive a restart (post-processing a recording, making a video).

    Kept in the database rather than in memory so a crash or restart resumes the queue, and so
    several processes sharing PostgreSQL can split it: a job is claimed by a conditional UPDATE.
    """

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state_run_after", "state", "run_after"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    lesson_id: Mapped[Optional[int]] = mapped_column(ForeignKey("lessons.id", ondelete="CASCADE"),
                                                     index=True)
    state: Mapped[JobState] = mapped_column(Enum(JobState, native_enum=False, length=16),
                                            default=JobState.queued)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    error: Mapped[Optional[str]] = mapped_column(Text)
    worker: Mapped[Optional[str]] = mapped_column(String(100))  # who claimed it last
    run_after: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime)
    finished_at: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime)
    # What a job needs beyond its lesson (a webhook's URL and body); None for recording jobs.
    payload: Mapped[Optional[dict[str, Any]]] = mapped_column(JSON)


class RecordingState(str, enum.Enum):
    recording = "recording"
    processing = "processing"
    ready = "ready"
    failed = "failed"
    no_audio = "no_audio"


class Recording(Base):
    """A lesson's recording: its files live in ``data_dir/recordings/<lesson_id>/``.

    ``outputs`` maps each kept file name to its size in bytes, so the admin pages can show what
    a lesson costs to keep without touching the disk.
    """

    __tablename__ = "recordings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    lesson_id: Mapped[int] = mapped_column(ForeignKey("lessons.id", ondelete="CASCADE"),
                                           unique=True)
    state: Mapped[RecordingState] = mapped_column(
        Enum(RecordingState, native_enum=False, length=16), default=RecordingState.recording)
    duration_s: Mapped[Optional[float]] = mapped_column()
    slide_count: Mapped[int] = mapped_column(Integer, default=0)
    recovered: Mapped[bool] = mapped_column(default=False)  # repaired after a crash
    outputs: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    error: Mapped[Optional[str]] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    processed_at: Mapped[Optional[dt.datetime]] = mapped_column(UTCDateTime)


class Deck(Base):
    """A class's slide deck, kept for reuse across lessons.

    A row exists only once every page has been drawn (``groom.slides`` writes deck and slides in
    one transaction), so a deck is always complete: there is no half-converted state to show.
    """

    __tablename__ = "decks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    class_id: Mapped[int] = mapped_column(ForeignKey("classes.id", ondelete="CASCADE"), index=True)
    title: Mapped[str] = mapped_column(String(200))
    filename: Mapped[str] = mapped_column(String(255), default="")
    pages: Mapped[int] = mapped_column(Integer)
    # What a student downloads to see every slide at the small size: shown to the teacher.
    small_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Slide(Base):
    """One page of a deck as image files in ``data_dir/slides/``, named by content hash.

    ``small`` (854x480 WebP) is what phones fetch, ``large`` (1280x720) the teacher's screen,
    ``thumb`` the slide strip, ``jpeg`` the small size for browsers without WebP, ``phone``
    (600 px wide, few colours) the first image on a thin or unmeasured link; null for decks
    imported before it existed (migration 0007): ``small`` stands in (``phone_name``). ``width``
    and ``height`` are the large image's pixels (the page's aspect ratio).
    """

    __tablename__ = "slides"
    __table_args__ = (UniqueConstraint("deck_id", "index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deck_id: Mapped[int] = mapped_column(ForeignKey("decks.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)  # 0-based page number
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    small: Mapped[str] = mapped_column(String(40))
    small_bytes: Mapped[int] = mapped_column(Integer)
    large: Mapped[str] = mapped_column(String(40))
    large_bytes: Mapped[int] = mapped_column(Integer)
    thumb: Mapped[str] = mapped_column(String(40))
    thumb_bytes: Mapped[int] = mapped_column(Integer)
    jpeg: Mapped[str] = mapped_column(String(40))
    jpeg_bytes: Mapped[int] = mapped_column(Integer)
    phone: Mapped[Optional[str]] = mapped_column(String(40), nullable=True)
    phone_bytes: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)

    @property
    def phone_name(self) -> str:
        """The image a thin link gets first: ``phone``, or ``small`` for an older deck."""
        return self.phone or self.small


class ApiMeeting(Base):
    """One meeting created through the BigBlueButton-compatible API: one lesson of the API
    client's class for that ``meeting_id`` (``office/api_clients.py``).

    A client reuses its meeting ids (a Moodle activity creates the same id every session), so a
    row is one *session*: ``internal_id`` (BBB's internalMeetingID, also the recordID) is unique,
    ``(client, meeting_id)`` is not."""

    __tablename__ = "api_meetings"
    __table_args__ = (Index("ix_api_meetings_client_meeting", "client", "meeting_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    client: Mapped[str] = mapped_column(String(64))
    meeting_id: Mapped[str] = mapped_column(String(256))
    internal_id: Mapped[str] = mapped_column(String(80), unique=True)
    lesson_id: Mapped[int] = mapped_column(ForeignKey("lessons.id", ondelete="CASCADE"), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    attendee_pw: Mapped[str] = mapped_column(String(128), default="")
    moderator_pw: Mapped[str] = mapped_column(String(128), default="")
    welcome: Mapped[str] = mapped_column(Text, default="")
    logout_url: Mapped[str] = mapped_column(String(1000), default="")
    record: Mapped[bool] = mapped_column(default=False)
    meta: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    deck_id: Mapped[Optional[int]] = mapped_column(ForeignKey("decks.id", ondelete="SET NULL"))
    published: Mapped[bool] = mapped_column(default=True)  # the recording's, as BBB's publish
    forcibly_ended: Mapped[bool] = mapped_column(default=False)  # ended by the ``end`` call
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    lesson: Mapped[Lesson] = relationship(lazy="joined")


class ApiHook(Base):
    """A webhook an API client registered (``hooks/create``): events of its meetings (or of one
    ``meeting_id``) are POSTed, signed, to ``callback_url`` from the job queue."""

    __tablename__ = "api_hooks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    client: Mapped[str] = mapped_column(String(64), index=True)
    callback_url: Mapped[str] = mapped_column(String(1000))
    meeting_id: Mapped[Optional[str]] = mapped_column(String(256))
    raw: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
