"""The lesson schedule: one-off lessons, weekly series, clashes, changes, week views, agendas.

Stays one module: every change and every view here rests on the same two rules (local wall-clock
times of the school's zone, and clashes checked as a whole under ``schedule_lock``).

Times are entered and shown in the school's time zone (Asia/Vientiane unless the school says
otherwise) and stored in UTC, so a lesson stays at the same instant whatever the server's clock
zone. A weekly series repeats a *local* start time: "Monday 08:00" stays 08:00 on the wall clock
even across a daylight-saving change, which a fixed UTC step would not.

A clash is two lessons that overlap in time and share the teacher or the class; cancelled lessons
never clash. Every change is checked as a whole before anything is written: a series, or a
reschedule of "the rest of the series", with one clash is refused entirely, and the error names
the first clashing lesson (title, class and local time) so the office knows what to move.

Like ``schools.py``, every function checks the viewer's rights itself (through ``lookup.py``)
and commits on success.
Scheduling is the office's job: admins of the school change the schedule; teachers read their
own lessons (week view, agenda, attendance).
"""

from __future__ import annotations

import asyncio
import bisect
import datetime as dt
from dataclasses import dataclass, field
from typing import Literal, Optional, Sequence
from zoneinfo import ZoneInfo

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from groom.core.auth import Viewer
from groom.core.errors import AppError
from groom.core.models import Attendance, Classroom, Lesson, LessonState, Role, School, Series, User, utcnow

from .lookup import (
    DEFAULT_TIMEZONE,
    clean_text,
    get_class,
    get_lesson,
    get_school,
    get_teacher,
    manage_class,
    manage_lesson,
    school_of,
)

Scope = Literal["one", "rest"]

MIN_DURATION, MAX_DURATION = 5, 600  # minutes
MAX_SERIES_DAYS = 366
MAX_SERIES_LESSONS = 400
MAX_AGENDA_DAYS = 62
# Dates outside this range are typing mistakes (and years like 9999 overflow once converted).
MIN_YEAR, MAX_YEAR = 2000, 2100
UTC = dt.timezone.utc

# Checking for a clash and writing the lesson must not interleave with another booking. On
# PostgreSQL, ``find_clash`` locks the class and teacher rows (which also covers several server
# processes); SQLite's driver runs the check's SELECTs outside the write transaction, so within
# the one process that owns a SQLite file, bookings also take this lock. Office writes are rare
# and short, so serializing them costs nothing noticeable.
schedule_lock = asyncio.Lock()


# --- time zones ----------------------------------------------------------------------------------

def zone(school: School) -> ZoneInfo:
    return ZoneInfo(school.timezone)


def local(when: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    """A stored UTC time as the school's wall clock (aware, in ``tz``)."""
    return when.astimezone(tz)


def check_date(day: dt.date, what: str = "date") -> dt.date:
    if not MIN_YEAR <= day.year <= MAX_YEAR:
        raise AppError("bad_date", "The {what} must be between the years {min} and {max}.",
                       status=422, what=what, min=MIN_YEAR, max=MAX_YEAR)
    return day


def to_utc(when: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    """Local wall-clock time (naive) in ``tz`` -> UTC. An aware time keeps its own offset.

    A wall-clock time skipped by a daylight-saving jump does not exist and is refused rather than
    silently moved by an hour.
    """
    check_date(when.date(), "lesson date")
    if when.tzinfo is not None:
        return when.astimezone(UTC)
    aware = when.replace(tzinfo=tz)
    if aware.astimezone(UTC).astimezone(tz).replace(tzinfo=None) != when:
        raise AppError("bad_time", "{time} does not exist in {timezone} (the clocks change "
                       "then).", status=422, time=when.strftime("%Y-%m-%d %H:%M"),
                       timezone=str(tz))
    return aware.astimezone(UTC)


def today(tz: ZoneInfo) -> dt.date:
    return utcnow().astimezone(tz).date()


def describe(lesson: Lesson, tz: ZoneInfo) -> str:
    """How a lesson is named in messages: its local date and times, e.g. ``2026-11-26 08:00-08:45``.

    No day or month names: the text goes into translated messages, so it must read the same in
    every language.
    """
    start, end = local(lesson.starts_at, tz), local(lesson.ends_at, tz)
    return f"{start:%Y-%m-%d %H:%M}-{end:%H:%M}"


async def zones_of(db: AsyncSession, lessons: Sequence[Lesson]) -> dict[int, ZoneInfo]:
    """Lesson id -> its school's time zone, for showing lessons of possibly several schools."""
    school_ids = {lesson.classroom.school_id for lesson in lessons}
    if not school_ids:
        return {}
    schools = {s.id: zone(s) for s in (await db.execute(
        select(School).where(School.id.in_(school_ids)))).scalars()}
    return {lesson.id: schools[lesson.classroom.school_id] for lesson in lessons}


# --- checks shared by every change ---------------------------------------------------------------

def _check_duration(minutes: int) -> dt.timedelta:
    if not MIN_DURATION <= minutes <= MAX_DURATION:
        raise AppError("bad_duration", "A lesson lasts from {min} to {max} minutes.", status=422,
                       min=MIN_DURATION, max=MAX_DURATION)
    return dt.timedelta(minutes=minutes)


def _check_future(end: dt.datetime, tz: ZoneInfo) -> None:
    if end <= utcnow():
        raise AppError("in_the_past", "The lesson at {time} would already be over.", status=422,
                       time=local(end, tz).strftime("%Y-%m-%d %H:%M"))


async def find_clash(db: AsyncSession, slots: Sequence[tuple[dt.datetime, dt.datetime]], *,
                     class_id: int, teacher_id: Optional[int],
                     ignore: Sequence[int] = ()) -> Optional[Lesson]:
    """The first existing lesson that overlaps one of ``slots`` and shares the class or the
    teacher (cancelled lessons and the lessons in ``ignore`` left out), or None."""
    if not slots:
        return None
    # On PostgreSQL, lock the class and teacher rows until commit so that two offices scheduling
    # at the same moment cannot both pass the check (SQLite has one writer at a time anyway).
    await db.execute(select(Classroom.id).where(Classroom.id == class_id).with_for_update())
    if teacher_id is not None:
        await db.execute(select(User.id).where(User.id == teacher_id).with_for_update())
    ordered = sorted(slots)
    who = [Lesson.class_id == class_id]
    if teacher_id is not None:
        who.append(Lesson.teacher_id == teacher_id)
    query = (select(Lesson).where(or_(*who), Lesson.state != LessonState.cancelled,
                                  Lesson.starts_at < max(end for _, end in ordered),
                                  Lesson.ends_at > ordered[0][0])
             .order_by(Lesson.starts_at, Lesson.id))
    if ignore:
        query = query.where(Lesson.id.not_in(list(ignore)))
    existing = list((await db.execute(query)).scalars())
    if not existing:
        return None
    starts = [lesson.starts_at for lesson in existing]
    for start, end in ordered:
        # Lessons starting before ``end`` are the candidates; the earliest one still running
        # at ``start`` is the clash to report.
        for lesson in existing[:bisect.bisect_left(starts, end)]:
            if lesson.ends_at > start:
                return lesson
    return None


async def _refuse_clash(db: AsyncSession, slots: Sequence[tuple[dt.datetime, dt.datetime]], *,
                        class_id: int, teacher_id: Optional[int], ignore: Sequence[int] = ()
                        ) -> None:
    clash = await find_clash(db, slots, class_id=class_id, teacher_id=teacher_id, ignore=ignore)
    if clash is None:
        return
    tz = zone(await school_of(db, clash.classroom.school_id))
    reason = "the same class" if clash.class_id == class_id else "the same teacher"
    raise AppError("clash", "This clashes with \"{title}\" ({class_name}) on {when}: {reason}.",
                   status=409, title=clash.title, class_name=clash.classroom.name,
                   when=describe(clash, tz), reason=reason, lesson_id=clash.id)


# --- reading -------------------------------------------------------------------------------------

async def attendance(db: AsyncSession, viewer: Viewer, lesson_id: int) -> list[Attendance]:
    """Who came to a lesson (filled by the live room), in the order they joined."""
    lesson = await get_lesson(db, viewer, lesson_id)
    query = (select(Attendance).where(Attendance.lesson_id == lesson.id)
             .order_by(Attendance.joined_at, Attendance.id))
    return list((await db.execute(query)).scalars())


@dataclass
class Day:
    date: dt.date
    lessons: list[Lesson] = field(default_factory=list)


@dataclass
class Week:
    """Seven days from ``start`` in one school's time zone, each with its lessons (cancelled ones
    included, so the office sees what was called off)."""

    start: dt.date
    timezone: str
    days: list[Day]

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


async def week(db: AsyncSession, viewer: Viewer, week_start: Optional[dt.date] = None, *,
               school_id: Optional[int] = None, teacher_id: Optional[int] = None,
               class_id: Optional[int] = None) -> Week:
    """The week view of a school, a teacher or a class (exactly one; with none: a teacher's own
    week, or a school admin's school). ``week_start`` defaults to this week's Monday."""
    chosen = sum(x is not None for x in (school_id, teacher_id, class_id))
    if chosen > 1:
        raise AppError("invalid", "Choose one of school, teacher or class.", status=422)
    if chosen == 0:
        if viewer.user.role == Role.teacher:
            teacher_id = viewer.user.id
        elif viewer.user.school_id is not None:
            school_id = viewer.user.school_id
        else:
            raise AppError("invalid", "Choose one of school, teacher or class.", status=422)
    query = select(Lesson)
    if school_id is not None:
        school = await get_school(db, viewer, school_id)
        viewer.require_school(school.id)  # a teacher sees only their own classes
        query = query.join(Classroom, Lesson.class_id == Classroom.id).where(
            Classroom.school_id == school.id)
    elif teacher_id is not None:
        teacher = await get_teacher(db, viewer, teacher_id)
        assert teacher.school_id is not None
        school = await school_of(db, teacher.school_id)
        query = query.where(Lesson.teacher_id == teacher.id)
    else:
        assert class_id is not None
        classroom = await get_class(db, viewer, class_id)
        school = await school_of(db, classroom.school_id)
        query = query.where(Lesson.class_id == classroom.id)
    tz = zone(school)
    if week_start is None:
        now = today(tz)
        week_start = now - dt.timedelta(days=now.weekday())
    check_date(week_start, "week")
    days = [Day(week_start + dt.timedelta(days=i)) for i in range(7)]
    begin = to_utc(dt.datetime.combine(week_start, dt.time()), tz)
    end = to_utc(dt.datetime.combine(days[-1].date + dt.timedelta(days=1), dt.time()), tz)
    query = (query.where(Lesson.starts_at < end, Lesson.ends_at > begin)
             .order_by(Lesson.starts_at, Lesson.id))
    by_date = {d.date: d for d in days}
    for lesson in (await db.execute(query)).unique().scalars():
        day = by_date.get(local(lesson.starts_at, tz).date(), days[0])
        day.lessons.append(lesson)
    return Week(week_start, school.timezone, days)


async def agenda(db: AsyncSession, viewer: Viewer, days: int = 7) -> list[Lesson]:
    """Today's and the coming days' lessons, not cancelled, for the teacher's home page (a
    teacher: their own; an admin: their schools'). "Today" is the school's today."""
    if not 1 <= days <= MAX_AGENDA_DAYS:
        raise AppError("invalid", "Choose from 1 to {max} days.", status=422, max=MAX_AGENDA_DAYS)
    tz = ZoneInfo(DEFAULT_TIMEZONE)  # the admin of all schools: the district's own day
    if viewer.user.school_id is not None:
        tz = zone(await school_of(db, viewer.user.school_id))
    start = to_utc(dt.datetime.combine(today(tz), dt.time()), tz)
    query = (select(Lesson).where(Lesson.ends_at > start,
                                  Lesson.starts_at < start + dt.timedelta(days=days),
                                  Lesson.state != LessonState.cancelled)
             .order_by(Lesson.starts_at, Lesson.id))
    if viewer.user.role == Role.teacher:
        query = query.where(Lesson.teacher_id == viewer.user.id)
    elif not viewer.is_global_admin:
        query = query.join(Classroom, Lesson.class_id == Classroom.id).where(
            Classroom.school_id == viewer.user.school_id)
    return list((await db.execute(query)).unique().scalars())


async def upcoming(db: AsyncSession, viewer: Viewer, class_id: int,
                   limit: int = 50) -> list[Lesson]:
    """A class's lessons that are not over yet, scheduled or live, soonest first."""
    classroom = await get_class(db, viewer, class_id)
    query = (select(Lesson).where(Lesson.class_id == classroom.id, Lesson.ends_at > utcnow(),
                                  Lesson.state.in_([LessonState.scheduled, LessonState.live]))
             .order_by(Lesson.starts_at, Lesson.id).limit(limit))
    return list((await db.execute(query)).unique().scalars())


# --- creating ------------------------------------------------------------------------------------

async def _create_lesson(db: AsyncSession, viewer: Viewer, class_id: int, title: str,
                        starts_at: dt.datetime, duration_minutes: int) -> Lesson:
    """A one-off lesson taught by the class's teacher. ``starts_at`` is the school's local time
    (naive) or an aware time."""
    classroom = await manage_class(db, viewer, class_id)
    tz = zone(await school_of(db, classroom.school_id))
    start = to_utc(starts_at, tz)
    end = start + _check_duration(duration_minutes)
    _check_future(end, tz)
    title = clean_text(title, field="title", required=False) or classroom.name
    await _refuse_clash(db, [(start, end)], class_id=classroom.id,
                        teacher_id=classroom.teacher_id)
    lesson = Lesson(class_id=classroom.id, teacher_id=classroom.teacher_id, title=title,
                    starts_at=start, ends_at=end, state=LessonState.scheduled)
    db.add(lesson)
    await db.commit()
    await db.refresh(lesson)
    return lesson


def series_dates(weekdays: Sequence[int], first_date: dt.date, last_date: dt.date) -> list[dt.date]:
    """The dates of a weekly series (Monday = 0), checking the limits."""
    days = set(weekdays)
    if not days:
        raise AppError("no_weekdays", "Choose at least one day of the week.", status=422)
    if not days <= set(range(7)):
        raise AppError("invalid", "Days of the week are numbered 0 (Monday) to 6 (Sunday).",
                       status=422)
    check_date(first_date, "first date")
    check_date(last_date, "last date")
    if last_date < first_date:
        raise AppError("bad_dates", "The last date is before the first date.", status=422)
    if (last_date - first_date).days >= MAX_SERIES_DAYS:
        raise AppError("series_too_long", "A series can last at most {max} days.", status=422,
                       max=MAX_SERIES_DAYS)
    dates = [first_date + dt.timedelta(days=i) for i in range((last_date - first_date).days + 1)]
    dates = [d for d in dates if d.weekday() in days]
    if len(dates) > MAX_SERIES_LESSONS:
        raise AppError("series_too_long", "A series can have at most {max} lessons.", status=422,
                       max=MAX_SERIES_LESSONS)
    if not dates:
        raise AppError("empty_series", "No chosen day of the week falls between the first and "
                       "the last date.", status=422)
    return dates


async def _create_series(db: AsyncSession, viewer: Viewer, class_id: int, title: str,
                        weekdays: Sequence[int], start_time: dt.time, duration_minutes: int,
                        first_date: dt.date, last_date: dt.date) -> tuple[Series, list[Lesson]]:
    """A weekly series: every chosen weekday from ``first_date`` to ``last_date`` at the local
    ``start_time``. All or nothing: one clash refuses the whole series. On the first day, a
    lesson whose time has already passed is left out."""
    classroom = await manage_class(db, viewer, class_id)
    tz = zone(await school_of(db, classroom.school_id))
    length = _check_duration(duration_minutes)
    start_time = start_time.replace(second=0, microsecond=0, tzinfo=None)
    now = utcnow()
    slots = []
    for day in series_dates(weekdays, first_date, last_date):
        start = to_utc(dt.datetime.combine(day, start_time), tz)
        if start + length > now:
            slots.append((start, start + length))
    if not slots:
        raise AppError("in_the_past", "Every lesson of this series would already be over.",
                       status=422)
    title = clean_text(title, field="title", required=False) or classroom.name
    await _refuse_clash(db, slots, class_id=classroom.id, teacher_id=classroom.teacher_id)
    series = Series(class_id=classroom.id, title=title,
                    weekdays=",".join(str(d) for d in sorted(set(weekdays))),
                    start_time=start_time, duration_minutes=duration_minutes,
                    first_date=first_date, last_date=last_date)
    db.add(series)
    await db.flush()
    lessons = [Lesson(class_id=classroom.id, teacher_id=classroom.teacher_id, series_id=series.id,
                      title=title, starts_at=start, ends_at=end, state=LessonState.scheduled)
               for start, end in slots]
    db.add_all(lessons)
    await db.commit()
    for lesson in lessons:
        await db.refresh(lesson)
    return series, lessons


# --- changing ------------------------------------------------------------------------------------

async def _scope(db: AsyncSession, lesson: Lesson, scope: Scope) -> list[Lesson]:
    """The lesson alone, or it and the later lessons of its series that are still scheduled."""
    if lesson.state != LessonState.scheduled:
        raise AppError("not_scheduled", "Only a scheduled lesson can be changed; this one is "
                       "{state}.", status=409, state=lesson.state.value)
    if scope not in ("one", "rest"):
        raise AppError("invalid", "The scope is \"one\" or \"rest\".", status=422)
    if scope == "one" or lesson.series_id is None:
        return [lesson]
    query = (select(Lesson).where(Lesson.series_id == lesson.series_id,
                                  Lesson.starts_at >= lesson.starts_at,
                                  Lesson.state == LessonState.scheduled)
             .order_by(Lesson.starts_at, Lesson.id))
    return list((await db.execute(query)).unique().scalars())


async def _reschedule(db: AsyncSession, viewer: Viewer, lesson_id: int, starts_at: dt.datetime,
                     duration_minutes: Optional[int] = None, scope: Scope = "one") -> list[Lesson]:
    """Move a lesson (``scope="one"``), or it and the rest of its series (``"rest"``), to a new
    local start time, optionally with a new duration. For the rest of a series, each later lesson
    moves by the same wall-clock shift (e.g. every lesson from 08:00 to 09:30, or one day
    later). Refused as a whole if any moved lesson would clash or be over already."""
    lesson = await manage_lesson(db, viewer, lesson_id)
    tz = zone(await school_of(db, lesson.classroom.school_id))
    lessons = await _scope(db, lesson, scope)
    new_start = to_utc(starts_at, tz)
    shift = (local(new_start, tz).replace(tzinfo=None)
             - local(lesson.starts_at, tz).replace(tzinfo=None))
    length = _check_duration(duration_minutes) if duration_minutes is not None else None
    moves = []
    for item in lessons:
        start = to_utc(local(item.starts_at, tz).replace(tzinfo=None) + shift, tz)
        end = start + (length if length is not None else item.ends_at - item.starts_at)
        _check_future(end, tz)
        moves.append((item, start, end))
    await _refuse_clash(db, [(s, e) for _, s, e in moves], class_id=lesson.class_id,
                        teacher_id=lesson.teacher_id, ignore=[item.id for item in lessons])
    for item, start, end in moves:
        item.starts_at, item.ends_at = start, end
    await db.commit()
    return lessons


async def cancel(db: AsyncSession, viewer: Viewer, lesson_id: int,
                 scope: Scope = "one") -> list[Lesson]:
    """Cancel a lesson, or it and the rest of its series. Cancelled lessons stay in the schedule
    (and in calendar feeds, marked cancelled, so phones remove them) and no longer clash."""
    lesson = await manage_lesson(db, viewer, lesson_id)
    lessons = await _scope(db, lesson, scope)
    for item in lessons:
        item.state = LessonState.cancelled
    await db.commit()
    return lessons


async def reassign_teacher(db: AsyncSession, classroom: Classroom,
                           teacher_id: Optional[int]) -> None:
    """A class changes teacher: its upcoming scheduled lessons go to the new teacher, unless one
    clashes with the new teacher's own lessons (then nothing changes). Called by
    ``office.update_class``, which has checked the rights and commits."""
    query = select(Lesson).where(Lesson.class_id == classroom.id, Lesson.ends_at > utcnow(),
                                 Lesson.state == LessonState.scheduled)
    lessons = list((await db.execute(query)).unique().scalars())
    if teacher_id is not None and lessons:
        teacher = await db.get(User, teacher_id)
        assert teacher is not None
        clash = await find_clash(db, [(x.starts_at, x.ends_at) for x in lessons],
                                 class_id=-1, teacher_id=teacher_id,
                                 ignore=[x.id for x in lessons])
        if clash is not None:
            tz = zone(await school_of(db, clash.classroom.school_id))
            raise AppError("clash", "{teacher} already teaches \"{title}\" ({class_name}) on "
                           "{when}.", status=409, teacher=teacher.display_name,
                           title=clash.title, class_name=clash.classroom.name,
                           when=describe(clash, tz), lesson_id=clash.id)
    for lesson in lessons:
        lesson.teacher_id = teacher_id



# --- the public changes, one booking at a time --------------------------------------------------

async def create_lesson(db: AsyncSession, viewer: Viewer, class_id: int, title: str,
                        starts_at: dt.datetime, duration_minutes: int) -> Lesson:
    async with schedule_lock:
        return await _create_lesson(db, viewer, class_id, title, starts_at, duration_minutes)


async def create_series(db: AsyncSession, viewer: Viewer, class_id: int, title: str,
                        weekdays: Sequence[int], start_time: dt.time, duration_minutes: int,
                        first_date: dt.date, last_date: dt.date) -> tuple[Series, list[Lesson]]:
    async with schedule_lock:
        return await _create_series(db, viewer, class_id, title, weekdays, start_time,
                                    duration_minutes, first_date, last_date)


async def reschedule(db: AsyncSession, viewer: Viewer, lesson_id: int, starts_at: dt.datetime,
                     duration_minutes: Optional[int] = None, scope: Scope = "one") -> list[Lesson]:
    async with schedule_lock:
        return await _reschedule(db, viewer, lesson_id, starts_at, duration_minutes, scope)


create_lesson.__doc__ = _create_lesson.__doc__
create_series.__doc__ = _create_series.__doc__
reschedule.__doc__ = _reschedule.__doc__
