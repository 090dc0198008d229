"""API clients' meetings as G-Room's own school office: which school, class and lesson a
BigBlueButton meeting is, and its recordings and webhooks.

Each API client (``settings.bbb_clients``) has a school set aside for it, made at first use.
Every ``meetingID`` it creates becomes a class of that school (one live lesson per class is
G-Room's rule, and a Moodle activity reuses its meetingID every session, so "one class per
meetingID" gives each activity its own class code, roster-free, and its own recordings page);
every ``create`` of a meeting that is not running is a new lesson of that class, starting now.
So API meetings show in the admin pages, attendance and recordings like any other lesson.

The asker here is the client itself (its checksum was checked by ``web/bbb_api.py``): every
function takes its ``ApiClientSpec`` and touches only rows of that client, so one client can
neither see nor end another's meetings, recordings or hooks. Errors are ``AppError`` whose code
is BBB's ``messageKey``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Optional, Sequence

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from groom.core.config import ApiClientSpec
from groom.core.errors import AppError
from groom.core.models import (
    ApiHook,
    ApiMeeting,
    Classroom,
    Lesson,
    LessonState,
    Recording,
    School,
    utcnow,
)

from .codes import new_class_code

# A meeting that nobody started is forgotten this long after its planned end (as the live layer
# refuses to start it then); ``duration`` 0 (unlimited in BBB) plans this long a lesson.
DEFAULT_MINUTES = 240
MAX_MINUTES = 24 * 60
NOT_STARTED_FOR = dt.timedelta(hours=2)  # live/rooms.py START_LATE
MAX_META = 50
MAX_HOOKS = 100  # per client: each event becomes one job per hook


def error(key: str, message: str) -> AppError:
    """A failure as BBB answers it: ``messageKey`` is the code, HTTP 200 (BBB's status)."""
    return AppError(key, message, status=200)


def not_found_meeting() -> AppError:
    return error("notFound", "We could not find a meeting with that meeting ID - perhaps the "
                 "meeting is not yet running?")


@dataclass
class MeetingParams:
    """What ``create`` keeps of BBB's parameters (the rest are accepted and ignored)."""

    meeting_id: str
    name: str
    attendee_pw: str = ""
    moderator_pw: str = ""
    welcome: str = ""
    logout_url: str = ""
    record: bool = False
    duration_minutes: int = 0
    meta: dict[str, str] = field(default_factory=dict)


def internal_id(client: str, meeting_id: str, created: dt.datetime) -> str:
    """BBB's internalMeetingID shape (sha1 hex, a dash, the creation time in ms); G-Room uses it
    as the recordID too, as BBB does."""
    digest = hashlib.sha1(f"{client}\0{meeting_id}".encode()).hexdigest()
    return f"{digest}-{int(created.timestamp() * 1000)}"


async def client_school(db: AsyncSession, spec: ApiClientSpec) -> School:
    """The school set aside for this client (by name), made the first time it is needed."""
    school = await db.scalar(select(School).where(School.name == spec.school).order_by(School.id)
                             .limit(1))
    if school is None:
        school = School(name=spec.school)
        db.add(school)
        await db.flush()
    return school


def _is_open(meeting: ApiMeeting, now: dt.datetime) -> bool:
    lesson = meeting.lesson
    if lesson.state == LessonState.live:
        return True
    return lesson.state == LessonState.scheduled and now <= lesson.ends_at + NOT_STARTED_FOR


async def current_meeting(db: AsyncSession, spec: ApiClientSpec,
                          meeting_id: str) -> Optional[ApiMeeting]:
    """The client's session of this meetingID that exists in BBB's sense: created and neither
    ended nor expired unstarted."""
    rows = (await db.scalars(select(ApiMeeting).where(
        ApiMeeting.client == spec.name, ApiMeeting.meeting_id == meeting_id)
        .order_by(ApiMeeting.id.desc()).limit(3))).unique().all()
    now = utcnow()
    return next((m for m in rows if _is_open(m, now)), None)


async def require_meeting(db: AsyncSession, spec: ApiClientSpec, meeting_id: str) -> ApiMeeting:
    meeting = await current_meeting(db, spec, meeting_id)
    if meeting is None:
        raise not_found_meeting()
    return meeting


async def open_meetings(db: AsyncSession, spec: ApiClientSpec) -> list[ApiMeeting]:
    """The client's meetings that exist now (``getMeetings``), oldest first."""
    rows = (await db.scalars(
        select(ApiMeeting).join(Lesson, Lesson.id == ApiMeeting.lesson_id)
        .where(ApiMeeting.client == spec.name,
               Lesson.state.in_([LessonState.scheduled, LessonState.live]))
        .order_by(ApiMeeting.id))).unique().all()
    now = utcnow()
    return [m for m in rows if _is_open(m, now)]


async def _meeting_class(db: AsyncSession, school: School, spec: ApiClientSpec,
                         params: MeetingParams) -> Classroom:
    """The class of this meetingID: the one its earlier sessions used, else a new one."""
    class_id = await db.scalar(
        select(Lesson.class_id).join(ApiMeeting, ApiMeeting.lesson_id == Lesson.id)
        .where(ApiMeeting.client == spec.name, ApiMeeting.meeting_id == params.meeting_id)
        .order_by(ApiMeeting.id.desc()).limit(1))
    classroom = await db.get(Classroom, class_id) if class_id is not None else None
    if classroom is not None:
        classroom.name = params.name  # the LMS renames its activity: the class follows
        return classroom
    for _ in range(10):
        code = new_class_code()
        if not await db.scalar(select(func.count()).where(Classroom.join_code == code)):
            break
    else:
        raise error("internalError", "No free class code; try again.")
    classroom = Classroom(school_id=school.id, name=params.name, join_code=code,
                          subject=spec.name)
    db.add(classroom)
    await db.flush()
    return classroom


async def create_meeting(db: AsyncSession, spec: ApiClientSpec,
                         params: MeetingParams) -> tuple[ApiMeeting, bool]:
    """``create``: the running session of this meetingID (and True: BBB's duplicateWarning), or
    a new lesson starting now. The same meetingID with other passwords is BBB's idNotUnique.
    Commits."""
    existing = await current_meeting(db, spec, params.meeting_id)
    if existing is not None:
        if ((params.attendee_pw and params.attendee_pw != existing.attendee_pw)
                or (params.moderator_pw and params.moderator_pw != existing.moderator_pw)):
            raise error("idNotUnique", "A meeting already exists with that meeting ID. Please "
                        "use a different meeting ID.")
        return existing, True
    school = await client_school(db, spec)
    classroom = await _meeting_class(db, school, spec, params)
    now = utcnow()
    minutes = params.duration_minutes if 0 < params.duration_minutes <= MAX_MINUTES \
        else DEFAULT_MINUTES
    lesson = Lesson(class_id=classroom.id, teacher_id=None, title=params.name, starts_at=now,
                    ends_at=now + dt.timedelta(minutes=minutes), state=LessonState.scheduled)
    db.add(lesson)
    await db.flush()
    meeting = ApiMeeting(
        client=spec.name, meeting_id=params.meeting_id,
        internal_id=internal_id(spec.name, params.meeting_id, now), lesson_id=lesson.id,
        name=params.name, attendee_pw=params.attendee_pw or secrets.token_urlsafe(6),
        moderator_pw=params.moderator_pw or secrets.token_urlsafe(6), welcome=params.welcome,
        logout_url=params.logout_url, record=params.record, meta=dict(params.meta),
        published=True, forcibly_ended=False, created_at=now)
    db.add(meeting)
    await db.commit()
    return await _reload(db, meeting.id), False


async def _reload(db: AsyncSession, meeting_id: int) -> ApiMeeting:
    meeting = (await db.scalars(select(ApiMeeting).where(ApiMeeting.id == meeting_id)
                                .execution_options(populate_existing=True))).unique().one()
    return meeting


async def end_unstarted(db: AsyncSession, meeting: ApiMeeting) -> None:
    """``end`` of a meeting nobody started: its lesson is over without a room. Commits."""
    meeting.forcibly_ended = True
    if meeting.lesson.state == LessonState.scheduled:
        meeting.lesson.state = LessonState.ended
        meeting.lesson.ended_at = utcnow()
    await db.commit()


async def mark_forcibly_ended(db: AsyncSession, meeting: ApiMeeting) -> None:
    meeting.forcibly_ended = True
    await db.commit()


async def set_deck(db: AsyncSession, meeting_row_id: int, deck_id: int) -> None:
    """The deck a slide URL became: the presentation the moderator's room opens with."""
    meeting = await db.get(ApiMeeting, meeting_row_id)
    if meeting is not None:
        meeting.deck_id = deck_id
        await db.commit()


async def meeting_of_lesson(db: AsyncSession, lesson_id: int) -> Optional[ApiMeeting]:
    """The API meeting a lesson is, if any (webhooks, the published flag of its recording)."""
    found: Optional[ApiMeeting] = (await db.scalars(
        select(ApiMeeting).where(ApiMeeting.lesson_id == lesson_id))).unique().one_or_none()
    return found


# --- recordings --------------------------------------------------------------------------------

async def recordings(db: AsyncSession, spec: ApiClientSpec, *, meeting_ids: Sequence[str] = (),
                     record_ids: Sequence[str] = ()) -> list[tuple[ApiMeeting, Recording]]:
    """The client's recordings, newest first, of these meetings or with these ids (BBB lets
    ``recordID`` be a prefix-free list of ids; both filters empty means all)."""
    query = (select(ApiMeeting, Recording).join(Recording, Recording.lesson_id == ApiMeeting.lesson_id)
             .where(ApiMeeting.client == spec.name).order_by(ApiMeeting.id.desc()))
    if meeting_ids:
        query = query.where(ApiMeeting.meeting_id.in_(list(meeting_ids)))
    if record_ids:
        query = query.where(ApiMeeting.internal_id.in_(list(record_ids)))
    rows = (await db.execute(query)).unique().tuples().all()
    return [(m, r) for m, r in rows]


async def require_recordings(db: AsyncSession, spec: ApiClientSpec,
                             record_ids: Sequence[str]) -> list[tuple[ApiMeeting, Recording]]:
    if not record_ids:
        raise error("missingParamRecordID", "You must specify one or more a record IDs.")
    found = await recordings(db, spec, record_ids=record_ids)
    if len({m.internal_id for m, _ in found}) != len(set(record_ids)):
        raise error("notFound", "We could not find recordings")
    return found


async def publish(db: AsyncSession, spec: ApiClientSpec, record_ids: Sequence[str],
                  published: bool) -> None:
    for meeting, _ in await require_recordings(db, spec, record_ids):
        meeting.published = published
    await db.commit()


async def update_meta(db: AsyncSession, spec: ApiClientSpec, record_ids: Sequence[str],
                      meta: dict[str, str]) -> None:
    """``updateRecordings``: set each ``meta_x``; an empty value removes the key (as BBB)."""
    for meeting, _ in await require_recordings(db, spec, record_ids):
        merged = dict(meeting.meta or {})
        for key, value in meta.items():
            if value:
                merged[key] = value
            else:
                merged.pop(key, None)
        if len(merged) > MAX_META:
            raise error("invalidMeta", "Too many metadata values.")
        meeting.meta = merged
    await db.commit()


# --- hooks -------------------------------------------------------------------------------------

async def create_hook(db: AsyncSession, spec: ApiClientSpec, callback_url: str,
                      meeting_id: Optional[str], raw: bool) -> tuple[ApiHook, bool]:
    """``hooks/create``: idempotent as BBB's (the same URL and meeting give the same hook, and
    True). Commits."""
    same = await db.scalar(select(ApiHook).where(
        ApiHook.client == spec.name, ApiHook.callback_url == callback_url,
        ApiHook.meeting_id.is_(None) if meeting_id is None else ApiHook.meeting_id == meeting_id))
    if same is not None:
        return same, True
    count = await db.scalar(select(func.count()).where(ApiHook.client == spec.name)) or 0
    if count >= MAX_HOOKS:
        raise error("createHookError", "Too many hooks; destroy some first.")
    hook = ApiHook(client=spec.name, callback_url=callback_url, meeting_id=meeting_id, raw=raw,
                   created_at=utcnow())
    db.add(hook)
    await db.commit()
    return hook, False


async def destroy_hook(db: AsyncSession, spec: ApiClientSpec, hook_id: int) -> None:
    result = await db.execute(delete(ApiHook).where(ApiHook.client == spec.name,
                                                    ApiHook.id == hook_id))
    if not result.rowcount:  # type: ignore[attr-defined]
        raise error("destroyMissingHook", "The hook informed was not found.")
    await db.commit()


async def list_hooks(db: AsyncSession, spec: ApiClientSpec,
                     meeting_id: Optional[str] = None) -> list[ApiHook]:
    query = select(ApiHook).where(ApiHook.client == spec.name).order_by(ApiHook.id)
    if meeting_id is not None:
        query = query.where((ApiHook.meeting_id == meeting_id) | ApiHook.meeting_id.is_(None))
    return list((await db.scalars(query)).all())
