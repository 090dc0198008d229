"""The office pages: dashboard, schools, classes and rosters, the schedule, lessons, cards.

Stays one module (about 400 lines): every page here is the same pattern over the same form
parsing (a form in, a domain call, re-render with the error or redirect), one handler per URL.

Handlers turn forms into calls of ``schools.py`` / ``scheduling.py`` (which check role and school)
and results into templates; nothing here decides who may do what. See ``pages.py`` for the
conventions (errors re-render with the user's input and a 4xx status; success redirects).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from groom.core.auth import Viewer
from groom.core.errors import AppError
from groom.core.models import LessonState, Role
from groom.office import cards, lookup, scheduling
from groom.office import schools as office
from groom.office.codes import pretty

from . import proxy, relay
from .calendar_feeds import class_feed_url
from .pages import Clock, done, error_text, page, page_viewer, parse_week, text_fields
from .params import optional_id, path_id
from .plumbing import SESSIONS

MAX_PASTE_CHARS = 256 * 1024
WEEKDAY_KEYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _db(request: web.Request) -> AsyncSession:
    return request.app[SESSIONS]()


# --- form parsing (text -> values; the domain checks the meaning) ---------------------------------

def _date(raw: str, what: str) -> dt.date:
    try:
        return dt.date.fromisoformat(raw.strip())
    except ValueError:
        raise AppError("bad_date", "Enter the {what} as a date.", status=422, what=what) from None


def _time(raw: str) -> dt.time:
    try:
        return dt.time.fromisoformat(raw.strip()[:5])
    except ValueError:
        raise AppError("bad_time", "Enter the start time as hours and minutes.",
                       status=422) from None


def _minutes(raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise AppError("bad_duration", "Enter the duration in minutes.", status=422) from None


# --- the dashboard -------------------------------------------------------------------------------

async def admin_home(request: web.Request) -> web.StreamResponse:
    v = await page_viewer(request)
    if not v.is_admin:
        raise web.HTTPFound("/teacher")
    return await _show_admin(request, v)


async def _show_admin(request: web.Request, v: Viewer, status: int = 200,
                      **context: Any) -> web.StreamResponse:
    async with _db(request) as db:
        schools = await office.list_schools(db, v)
        today = await scheduling.agenda(db, v, days=1)
        zones = await scheduling.zones_of(db, today)
        clocks = {lesson.id: Clock(str(zones[lesson.id])) for lesson in today}
        live = [lesson for lesson in today if lesson.state == LessonState.live]
        return page(request, "admin.html", status=status, schools=schools, today=today,
                    live=live, clocks=clocks, **context)


async def school_create(request: web.Request) -> web.StreamResponse:
    v = await page_viewer(request)
    form = text_fields(await request.post())
    try:
        async with _db(request) as db:
            school = await office.create_school(db, v, form.get("name", ""),
                                                form.get("timezone") or lookup.DEFAULT_TIMEZONE)
    except AppError as exc:
        return await _show_admin(request, v, status=exc.status, error=error_text(request, exc),
                                 failed="school", form=form)
    raise done(f"/schools/{school.id}", "school_added")


# --- a school ------------------------------------------------------------------------------------

async def school_page(request: web.Request) -> web.StreamResponse:
    v = await page_viewer(request)
    return await _show_school(request, v, path_id(request, "id", "school"))


async def _show_school(request: web.Request, v: Viewer, school_id: int, status: int = 200,
                       **context: Any) -> web.StreamResponse:
    async with _db(request) as db:
        school = await lookup.get_school(db, v, school_id)
        v.require_school(school.id)
        teachers = await office.list_teachers(db, v, school.id, include_admins=True)
        classes = await office.list_classes(db, v, school.id)
        counts = await office.class_counts(db, [c.id for c in classes])
        zones = sorted(z for z in lookup.timezones() if z.startswith(("Asia/", "UTC")))
        return page(request, "school.html", status=status, school=school, teachers=teachers,
                    classes=classes, counts=counts, zones=zones, Role=Role, **context)


async def _school_form(request: web.Request, action: str) -> web.StreamResponse:
    v = await page_viewer(request)
    school_id = path_id(request, "id", "school")
    form = text_fields(await request.post())
    try:
        async with _db(request) as db:
            if action == "school":
                await office.update_school(db, v, school_id, name=form.get("name"),
                                           timezone=form.get("timezone"))
                what = "school_saved"
            elif action == "teacher":
                role = Role.admin if form.get("role") == "admin" else Role.teacher
                await office.create_teacher(db, v, school_id, username=form.get("username", ""),
                                            password=form.get("password", ""),
                                            display_name=form.get("display_name", ""), role=role)
                what = "teacher_added"
            else:
                classroom = await office.create_class(
                    db, v, school_id, name=form.get("name", ""), subject=form.get("subject", ""),
                    grade=form.get("grade", ""),
                    teacher_id=optional_id(form.get("teacher_id", ""), "teacher"))
                raise done(f"/classes/{classroom.id}", "class_added")
    except AppError as exc:
        form.pop("password", None)
        return await _show_school(request, v, school_id, status=exc.status,
                                  error=error_text(request, exc), failed=action, form=form)
    raise done(f"/schools/{school_id}", what)


async def school_update(request: web.Request) -> web.StreamResponse:
    return await _school_form(request, "school")


async def teacher_create(request: web.Request) -> web.StreamResponse:
    return await _school_form(request, "teacher")


async def class_create(request: web.Request) -> web.StreamResponse:
    return await _school_form(request, "class")


async def teacher_active(request: web.Request) -> web.StreamResponse:
    """Deactivate a teacher who left (or bring them back)."""
    v = await page_viewer(request)
    form = text_fields(await request.post())
    async with _db(request) as db:
        user = await office.update_teacher(db, v, path_id(request, "id", "teacher"),
                                           active=form.get("active") == "1")
    if not user.active:
        await relay.close_user(request.app, user.id)  # a deactivated teacher's live sockets close now
    raise done(f"/schools/{user.school_id}", "teacher_saved")


# --- a class -------------------------------------------------------------------------------------

async def class_page(request: web.Request) -> web.StreamResponse:
    v = await page_viewer(request)
    return await _show_class(request, v, path_id(request, "id", "class"))


async def _show_class(request: web.Request, v: Viewer, class_id: int, status: int = 200,
                      **context: Any) -> web.StreamResponse:
    async with _db(request) as db:
        classroom = await lookup.get_class(db, v, class_id)
        school = await lookup.school_of(db, classroom.school_id)
        students = await office.list_students(db, v, classroom.id)
        lessons = await scheduling.upcoming(db, v, classroom.id)
        can_manage = v.can_manage_school(classroom.school_id)
        teachers = await office.list_teachers(db, v, school.id) if can_manage else []
        clock = Clock(school.timezone)
        form = {"date": clock.today().isoformat(), "first_date": clock.today().isoformat(),
                "duration": "45", "start_time": "08:00", "repeat": "once"}
        context["form"] = {**form, **context.get("form", {})}
        context.setdefault("days", [])
        return page(request, "class.html", status=status, classroom=classroom, school=school,
                    students=students, lessons=lessons, teachers=teachers, t=clock,
                    can_manage=can_manage, weekday_keys=WEEKDAY_KEYS,
                    ics=class_feed_url(request, classroom),
                    join_link=f"{proxy.public_base(request)}/join/{classroom.join_code}",
                    pretty=pretty, **context)


async def _roster_upload(form: Any) -> bytes:
    upload = form.get("file")
    data = b""
    if isinstance(upload, web.FileField):
        data = upload.file.read(office.MAX_CSV_BYTES + 1)
    elif isinstance(upload, (bytes, bytearray)):  # a file part without a file name
        data = bytes(upload[:office.MAX_CSV_BYTES + 1])
    pasted = form.get("names")
    if not data and isinstance(pasted, str) and pasted.strip():
        data = pasted[:MAX_PASTE_CHARS + 1].encode("utf-8")
    if not data:
        raise AppError("bad_csv", "Choose a CSV file or type the names, one per line.",
                       status=422)
    return data


async def _class_form(request: web.Request, action: str) -> web.StreamResponse:
    v = await page_viewer(request)
    class_id = path_id(request, "id", "class")
    raw = await request.post()
    form = text_fields(raw)
    extra: dict[str, Any] = {}
    try:
        async with _db(request) as db:
            if action == "class":
                teacher = form.get("teacher_id", "")
                await office.update_class(db, v, class_id, name=form.get("name"),
                                          subject=form.get("subject"), grade=form.get("grade"),
                                          teacher_id=optional_id(teacher, "teacher"),
                                          clear_teacher=teacher == "")
                what = "class_saved"
            elif action == "student":
                await office.add_student(db, v, class_id, form.get("name", ""))
                what = "student_added"
            elif action == "import":
                added = await office.import_roster_csv(db, v, class_id, await _roster_upload(raw))
                what, extra = "imported", {"n": len(added)}
            elif action == "code":
                await office.new_join_code(db, v, class_id)
                what = "code_renewed"
            else:
                what = await _schedule(db, v, class_id, form, raw.getall("day", []))
    except AppError as exc:
        return await _show_class(request, v, class_id, status=exc.status,
                                 error=error_text(request, exc), failed=action,
                                 form=form, days=[d for d in raw.getall("day", [])
                                                  if isinstance(d, str)])
    raise done(f"/classes/{class_id}", what, **extra)


async def _schedule(db: AsyncSession, v: Viewer, class_id: int, form: dict[str, str],
                    days: list[Any]) -> str:
    title = form.get("title", "")
    start = _time(form.get("start_time", ""))
    minutes = _minutes(form.get("duration", ""))
    if form.get("repeat") == "weekly":
        weekdays = [WEEKDAY_KEYS.index(d) for d in days if d in WEEKDAY_KEYS]
        first = _date(form.get("first_date", ""), "first date")
        last = _date(form.get("last_date", ""), "last date")
        await scheduling.create_series(db, v, class_id, title, weekdays, start, minutes,
                                       first, last)
        return "series_added"
    day = _date(form.get("date", ""), "lesson date")
    await scheduling.create_lesson(db, v, class_id, title, dt.datetime.combine(day, start),
                                   minutes)
    return "lesson_added"


async def class_update(request: web.Request) -> web.StreamResponse:
    return await _class_form(request, "class")


async def student_add(request: web.Request) -> web.StreamResponse:
    return await _class_form(request, "student")


async def roster_import(request: web.Request) -> web.StreamResponse:
    return await _class_form(request, "import")


async def join_code_renew(request: web.Request) -> web.StreamResponse:
    return await _class_form(request, "code")


async def lesson_schedule(request: web.Request) -> web.StreamResponse:
    return await _class_form(request, "schedule")


async def student_remove(request: web.Request) -> web.StreamResponse:
    v = await page_viewer(request)
    async with _db(request) as db:
        student = await lookup.get_student(db, v, path_id(request, "id", "student"))
        class_id = student.class_id
        await office.remove_student(db, v, student.id)
    raise done(f"/classes/{class_id}", "student_removed")


async def student_card_renew(request: web.Request) -> web.StreamResponse:
    v = await page_viewer(request)
    async with _db(request) as db:
        student = await office.new_card(db, v, path_id(request, "id", "student"))
    raise done(f"/classes/{student.class_id}", "card_renewed")


async def cards_sheet(request: web.Request) -> web.StreamResponse:
    """The printable A4 sheet: the class-code card, then one card per student."""
    v = await page_viewer(request)
    async with _db(request) as db:
        classroom = await lookup.get_class(db, v, path_id(request, "id", "class"))
        school = await lookup.school_of(db, classroom.school_id)
        students = await office.list_students(db, v, classroom.id)
    sheet = cards.class_sheet(proxy.public_base(request), school.name, classroom.name,
                              classroom.join_code, [(s.name, s.card_code) for s in students])
    return page(request, "cards.html", classroom=classroom, school=school, cards=sheet)


# --- week views ----------------------------------------------------------------------------------

async def _week(request: web.Request, kind: str) -> web.StreamResponse:
    v = await page_viewer(request)
    ident = path_id(request, "id", kind)
    async with _db(request) as db:
        if kind == "school":
            subject: Any = await lookup.get_school(db, v, ident)
            tz = subject.timezone
        elif kind == "teacher":
            subject = await lookup.get_teacher(db, v, ident)
            tz = (await lookup.school_of(db, subject.school_id)).timezone
        else:
            subject = await lookup.get_class(db, v, ident)
            tz = (await lookup.school_of(db, subject.school_id)).timezone
        clock = Clock(tz)
        start = parse_week(request.query.get("week"), clock.today())
        week = await scheduling.week(db, v, start, **{f"{kind}_id": ident})
        return page(request, "week.html", kind=kind, subject=subject, week=week, t=clock,
                    base=request.path, prev=(start - dt.timedelta(days=7)).isoformat(),
                    next=(start + dt.timedelta(days=7)).isoformat(),
                    this=(clock.today() - dt.timedelta(days=clock.today().weekday())).isoformat(),
                    today=clock.today(), end=start + dt.timedelta(days=6))


async def school_week(request: web.Request) -> web.StreamResponse:
    return await _week(request, "school")


async def teacher_week(request: web.Request) -> web.StreamResponse:
    return await _week(request, "teacher")


async def class_week(request: web.Request) -> web.StreamResponse:
    return await _week(request, "class")


# --- a lesson ------------------------------------------------------------------------------------

async def lesson_page(request: web.Request) -> web.StreamResponse:
    v = await page_viewer(request)
    return await _show_lesson(request, v, path_id(request, "id", "lesson"))


async def _show_lesson(request: web.Request, v: Viewer, lesson_id: int, status: int = 200,
                       **context: Any) -> web.StreamResponse:
    async with _db(request) as db:
        lesson = await lookup.get_lesson(db, v, lesson_id)
        school = await lookup.school_of(db, lesson.classroom.school_id)
        present = await scheduling.attendance(db, v, lesson.id)
        clock = Clock(school.timezone)
        form = {"date": clock.iso_date(lesson.starts_at),
                "start_time": clock.time(lesson.starts_at),
                "duration": str(clock.minutes(lesson.starts_at, lesson.ends_at))}
        context["form"] = {**form, **context.get("form", {})}
        can_manage = v.can_manage_school(school.id)
        teaches = lesson.teacher_id == v.user.id
        return page(request, "lesson.html", status=status, lesson=lesson, school=school,
                    attendance=present, t=clock, can_manage=can_manage, teaches=teaches,
                    total_bytes=sum(a.bytes_sent for a in present), **context)


async def _lesson_form(request: web.Request, action: str) -> web.StreamResponse:
    v = await page_viewer(request)
    lesson_id = path_id(request, "id", "lesson")
    form = text_fields(await request.post())
    scope: scheduling.Scope = "rest" if form.get("scope") == "rest" else "one"
    try:
        async with _db(request) as db:
            if action == "reschedule":
                start = dt.datetime.combine(_date(form.get("date", ""), "lesson date"),
                                            _time(form.get("start_time", "")))
                await scheduling.reschedule(db, v, lesson_id, start,
                                            _minutes(form.get("duration", "")), scope)
                what = "rescheduled"
            else:
                await scheduling.cancel(db, v, lesson_id, scope)
                what = "cancelled"
    except AppError as exc:
        return await _show_lesson(request, v, lesson_id, status=exc.status,
                                  error=error_text(request, exc), failed=action, form=form)
    raise done(f"/lessons/{lesson_id}", what)


async def lesson_reschedule(request: web.Request) -> web.StreamResponse:
    return await _lesson_form(request, "reschedule")


async def lesson_cancel(request: web.Request) -> web.StreamResponse:
    return await _lesson_form(request, "cancel")
