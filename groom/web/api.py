"""The school office's JSON API: thin handlers over ``office`` (schools, teachers, classes, rosters)
and ``joining``; the schedule's (lessons, week, agenda) is ``schedule_api.py``.

Each handler reads the viewer, opens one database session, calls one domain function (which
checks rights and commits) and turns rows into the response models of ``schemas.py``. Errors are
raised by the domain as ``AppError`` and shaped by the error middleware; nothing here decides who
may do what.
"""

from __future__ import annotations

from typing import Literal, Sequence

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from groom.core.auth import Viewer, require_viewer
from groom.core.errors import AppError, not_found
from groom.core.models import Classroom, LessonState, Role, School, Student, User
from groom.office import calendars as ical
from groom.office import lookup
from groom.office import schools as office

from . import calendar_feeds, joining, relay
from .openapi import endpoint, read_body
from .params import path_id
from .plumbing import SESSIONS, viewer
from .schemas import (
    ClassIn,
    ClassOut,
    ClassPatch,
    ClassQuery,
    FeedOut,
    JoinIn,
    JoinLesson,
    JoinOut,
    SchoolIn,
    SchoolOut,
    SchoolPatch,
    StudentIn,
    StudentOut,
    TeacherIn,
    TeacherOut,
    TeacherPatch,
    TeacherQuery,
)

CSV_TYPES = ("text/csv", "text/plain", "application/csv", "application/vnd.ms-excel")


async def _viewer(request: web.Request) -> Viewer:
    return require_viewer(await viewer(request))


# --- rows -> response models ---------------------------------------------------------------

def school_out(school: School) -> SchoolOut:
    return SchoolOut(id=school.id, name=school.name, timezone=school.timezone)


def teacher_out(user: User) -> TeacherOut:
    return TeacherOut(id=user.id, username=user.username, display_name=user.display_name,
                      role=user.role.value, school_id=user.school_id, active=user.active)


async def class_outs(db: AsyncSession, classes: Sequence[Classroom]) -> list[ClassOut]:
    counts = await office.class_counts(db, [c.id for c in classes])
    return [ClassOut(id=c.id, school_id=c.school_id, name=c.name, subject=c.subject,
                     grade=c.grade, teacher_id=c.teacher_id,
                     teacher_name=c.teacher.display_name if c.teacher is not None else None,
                     join_code=c.join_code, student_count=counts[c.id][0],
                     upcoming_lessons=counts[c.id][1])
            for c in classes]


def student_out(student: Student) -> StudentOut:
    return StudentOut(id=student.id, class_id=student.class_id, name=student.name,
                      card_code=student.card_code)


# --- schools -------------------------------------------------------------------------------------

@endpoint("GET", "/api/schools", summary="Schools I manage or belong to", tag="schools",
          response=list[SchoolOut])
async def list_schools(request: web.Request) -> list[SchoolOut]:
    v = await _viewer(request)
    async with request.app[SESSIONS]() as db:
        return [school_out(s) for s in await office.list_schools(db, v)]


@endpoint("POST", "/api/schools", summary="Open a school (admin of all schools)", tag="schools",
          body=SchoolIn, response=SchoolOut, status=201)
async def create_school(request: web.Request, body: SchoolIn) -> SchoolOut:
    v = await _viewer(request)
    async with request.app[SESSIONS]() as db:
        return school_out(await office.create_school(db, v, body.name, body.timezone))


@endpoint("GET", "/api/schools/{school_id}", summary="A school", tag="schools",
          response=SchoolOut)
async def get_school(request: web.Request) -> SchoolOut:
    v = await _viewer(request)
    async with request.app[SESSIONS]() as db:
        return school_out(await lookup.get_school(db, v, path_id(request, "school_id", "school")))


@endpoint("PATCH", "/api/schools/{school_id}", summary="Rename a school or change its time zone",
          tag="schools", body=SchoolPatch, response=SchoolOut)
async def update_school(request: web.Request, body: SchoolPatch) -> SchoolOut:
    v = await _viewer(request)
    async with request.app[SESSIONS]() as db:
        return school_out(await office.update_school(db, v, path_id(request, "school_id", "school"),
                                                      name=body.name, timezone=body.timezone))


# --- teachers ------------------------------------------------------------------------------------

@endpoint("GET", "/api/schools/{school_id}/teachers", summary="A school's teachers",
          tag="teachers", query=TeacherQuery, response=list[TeacherOut])
async def list_teachers(request: web.Request, query: TeacherQuery) -> list[TeacherOut]:
    v = await _viewer(request)
    async with request.app[SESSIONS]() as db:
        users = await office.list_teachers(db, v, path_id(request, "school_id", "school"),
                                           include_admins=query.include_admins)
        return [teacher_out(u) for u in users]


@endpoint("POST", "/api/schools/{school_id}/teachers",
          summary="Add a teacher (or an admin of this school)", tag="teachers", body=TeacherIn,
          response=TeacherOut, status=201, errors=(409,))
async def create_teacher(request: web.Request, body: TeacherIn) -> TeacherOut:
    v = await _viewer(request)
    async with request.app[SESSIONS]() as db:
        user = await office.create_teacher(db, v, path_id(request, "school_id", "school"),
                                           username=body.username, password=body.password,
                                           display_name=body.display_name, role=Role(body.role))
        return teacher_out(user)


@endpoint("GET", "/api/teachers/{teacher_id}", summary="A teacher", tag="teachers",
          response=TeacherOut)
async def get_teacher(request: web.Request) -> TeacherOut:
    v = await _viewer(request)
    async with request.app[SESSIONS]() as db:
        return teacher_out(await lookup.get_teacher(db, v, path_id(request, "teacher_id", "teacher")))


@endpoint("PATCH", "/api/teachers/{teacher_id}", summary="Rename or (de)activate a teacher",
          tag="teachers", body=TeacherPatch, response=TeacherOut)
async def update_teacher(request: web.Request, body: TeacherPatch) -> TeacherOut:
    v = await _viewer(request)
    async with request.app[SESSIONS]() as db:
        user = await office.update_teacher(db, v, path_id(request, "teacher_id", "teacher"),
                                           display_name=body.display_name, active=body.active)
    if not user.active:
        await relay.close_user(request.app, user.id)  # a deactivated teacher's live sockets close now
    return teacher_out(user)


@endpoint("GET", "/api/teachers/{teacher_id}/calendar",
          summary="The teacher's calendar feed URL (.ics, no login needed)", tag="teachers",
          response=FeedOut)
async def teacher_calendar(request: web.Request) -> FeedOut:
    v = await _viewer(request)
    async with request.app[SESSIONS]() as db:
        teacher = await lookup.get_teacher(db, v, path_id(request, "teacher_id", "teacher"))
    if teacher.role != Role.teacher:
        raise not_found("teacher")
    url = calendar_feeds.teacher_feed_url(request, teacher)
    return FeedOut(url=url, webcal_url=ical.webcal(url))


@endpoint("POST", "/api/teachers/{teacher_id}/calendar/rotate",
          summary="A new calendar feed URL for the teacher (the old one stops working)",
          tag="teachers", response=FeedOut)
async def rotate_teacher_calendar(request: web.Request) -> FeedOut:
    v = await _viewer(request)
    async with request.app[SESSIONS]() as db:
        teacher = await ical.rotate_teacher_feed(db, v, path_id(request, "teacher_id", "teacher"))
    url = calendar_feeds.teacher_feed_url(request, teacher)
    return FeedOut(url=url, webcal_url=ical.webcal(url))


# --- classes -------------------------------------------------------------------------------------

@endpoint("GET", "/api/classes", summary="Classes I manage (admins) or teach (teachers)",
          tag="classes", query=ClassQuery, response=list[ClassOut])
async def list_classes(request: web.Request, query: ClassQuery) -> list[ClassOut]:
    v = await _viewer(request)
    async with request.app[SESSIONS]() as db:
        return await class_outs(db, await office.list_classes(db, v, query.school_id))


@endpoint("POST", "/api/schools/{school_id}/classes", summary="Create a class", tag="classes",
          body=ClassIn, response=ClassOut, status=201)
async def create_class(request: web.Request, body: ClassIn) -> ClassOut:
    v = await _viewer(request)
    async with request.app[SESSIONS]() as db:
        classroom = await office.create_class(db, v, path_id(request, "school_id", "school"),
                                              name=body.name, subject=body.subject,
                                              grade=body.grade, teacher_id=body.teacher_id)
        return (await class_outs(db, [classroom]))[0]


@endpoint("GET", "/api/classes/{class_id}", summary="A class", tag="classes", response=ClassOut)
async def get_class(request: web.Request) -> ClassOut:
    v = await _viewer(request)
    async with request.app[SESSIONS]() as db:
        classroom = await lookup.get_class(db, v, path_id(request, "class_id", "class"))
        return (await class_outs(db, [classroom]))[0]


@endpoint("PATCH", "/api/classes/{class_id}",
          summary="Change a class (a new teacher takes over its upcoming lessons)",
          tag="classes", body=ClassPatch, response=ClassOut, errors=(409,))
async def update_class(request: web.Request, body: ClassPatch) -> ClassOut:
    v = await _viewer(request)
    clear = "teacher_id" in body.model_fields_set and body.teacher_id is None
    async with request.app[SESSIONS]() as db:
        classroom = await office.update_class(db, v, path_id(request, "class_id", "class"),
                                              name=body.name, subject=body.subject,
                                              grade=body.grade, teacher_id=body.teacher_id,
                                              clear_teacher=clear)
        return (await class_outs(db, [classroom]))[0]


@endpoint("POST", "/api/classes/{class_id}/join-code",
          summary="Give the class a new join code (the old code and feed URL stop working)",
          tag="classes", response=ClassOut)
async def new_join_code(request: web.Request) -> ClassOut:
    v = await _viewer(request)
    async with request.app[SESSIONS]() as db:
        classroom = await office.new_join_code(db, v, path_id(request, "class_id", "class"))
        return (await class_outs(db, [classroom]))[0]


@endpoint("GET", "/api/classes/{class_id}/calendar",
          summary="The class's calendar feed URL (.ics, no login needed)", tag="classes",
          response=FeedOut)
async def class_calendar(request: web.Request) -> FeedOut:
    v = await _viewer(request)
    async with request.app[SESSIONS]() as db:
        classroom = await lookup.get_class(db, v, path_id(request, "class_id", "class"))
    url = calendar_feeds.class_feed_url(request, classroom)
    return FeedOut(url=url, webcal_url=ical.webcal(url))


# --- rosters -------------------------------------------------------------------------------------

@endpoint("GET", "/api/classes/{class_id}/students", summary="A class's roster", tag="rosters",
          response=list[StudentOut])
async def list_students(request: web.Request) -> list[StudentOut]:
    v = await _viewer(request)
    async with request.app[SESSIONS]() as db:
        return [student_out(s) for s in await office.list_students(
            db, v, path_id(request, "class_id", "class"))]


@endpoint("POST", "/api/classes/{class_id}/students", summary="Add a student to the roster",
          tag="rosters", body=StudentIn, response=StudentOut, status=201)
async def add_student(request: web.Request, body: StudentIn) -> StudentOut:
    v = await _viewer(request)
    async with request.app[SESSIONS]() as db:
        return student_out(await office.add_student(db, v, path_id(request, "class_id", "class"),
                                                    body.name))


@endpoint("POST", "/api/classes/{class_id}/students/import",
          summary="Import a CSV of names (UTF-8; a 'name' column or the first column; at most "
                  "256 KB and 2000 rows; names already on the roster are skipped)",
          tag="rosters", raw_body="text/csv", response=list[StudentOut], status=201,
          errors=(400, 413, 415, 422))
async def import_students(request: web.Request) -> list[StudentOut]:
    v = await _viewer(request)
    class_id = path_id(request, "class_id", "class")
    if request.content_type not in CSV_TYPES:
        raise AppError("unsupported_media_type", "Send the CSV file as text/csv.", status=415)
    data = await read_body(request, office.MAX_CSV_BYTES)
    async with request.app[SESSIONS]() as db:
        return [student_out(s) for s in await office.import_roster_csv(db, v, class_id, data)]


@endpoint("DELETE", "/api/students/{student_id}", summary="Remove a student from the roster",
          tag="rosters", response=None, status=204)
async def remove_student(request: web.Request) -> None:
    v = await _viewer(request)
    async with request.app[SESSIONS]() as db:
        await office.remove_student(db, v, path_id(request, "student_id", "student"))


@endpoint("POST", "/api/students/{student_id}/card",
          summary="Give a student a new card code (the old card stops working)", tag="rosters",
          response=StudentOut)
async def new_card(request: web.Request) -> StudentOut:
    v = await _viewer(request)
    async with request.app[SESSIONS]() as db:
        return student_out(await office.new_card(db, v, path_id(request, "student_id", "student")))


# --- joining ---------------------------------------------------------------------------------

@endpoint("POST", "/api/join",
          summary="Check a class or card code: the class, the student and the lesson to join",
          tag="joining", body=JoinIn, response=JoinOut, auth=False, errors=(404, 429))
async def join(request: web.Request, body: JoinIn) -> web.StreamResponse | JoinOut:
    try:
        target = await joining.check_code(request, body.code)
    except AppError as exc:
        if exc.status != 429:
            raise
        return web.json_response(exc.to_json(), status=429,
                                 headers=joining.retry_after_header(exc))
    lesson = None
    if target.lesson is not None:
        x = target.lesson
        # live_or_next finds only a live or a scheduled lesson
        state: Literal["scheduled", "live"] = "live" if x.state == LessonState.live else "scheduled"
        lesson = JoinLesson(id=x.id, title=x.title, state=state, starts_at=x.starts_at,
                            ends_at=x.ends_at,
                            local_start=joining.lesson_local_start(x, target.school))
    return JoinOut(kind=target.kind, code=target.code, class_id=target.classroom.id,
                   class_name=target.classroom.name, subject=target.classroom.subject,
                   school_name=target.school.name, timezone=target.school.timezone,
                   student_id=target.student.id if target.student else None,
                   student_name=target.student.name if target.student else None, lesson=lesson)
