"""The thing with this id that this viewer may see: schools, teachers, classes, students, lessons.

Why a module of its own: ``schools.py`` (the office's rosters) and ``scheduling.py`` (lessons)
both need "load this row by id and check the viewer may read it", and ``schools.update_class``
needs scheduling in turn. With the lookups here, below both, neither imports the other in a loop,
and the web layer (API, pages, recordings, decks) answers every id the same way:

- an id no row can have, an unknown id and another school's id all answer 404 ``not_found``, so a
  stranger cannot tell "exists but not yours" from "does not exist";
- ``manage_*`` is the same lookup for a change: those who may only read get 403.

The small input checks both office modules share (names typed by people, time zones) live here
too, for the same reason.
"""

from __future__ import annotations

from functools import lru_cache
from zoneinfo import available_timezones

from sqlalchemy.ext.asyncio import AsyncSession

from groom.core import text
from groom.core.auth import Viewer
from groom.core.db import load
from groom.core.errors import AppError, not_found
from groom.core.models import Classroom, Lesson, School, Student, User

DEFAULT_TIMEZONE = "Asia/Vientiane"
MAX_NAME = 200


# --- input shared by the office modules ----------------------------------------------------------

@lru_cache(maxsize=1)
def timezones() -> frozenset[str]:
    """IANA zone names this machine knows (from ``tzdata``); read once, it scans the disk."""
    return frozenset(available_timezones())


def check_timezone(name: str) -> str:
    if name not in timezones():
        raise AppError("bad_timezone", "Unknown time zone: {timezone}", status=422, timezone=name)
    return name


def clean_text(value: str, *, field: str, max_length: int = MAX_NAME, required: bool = True) -> str:
    """Normalize a name typed by a person (``core/text.py``, shared with the live room's names):
    NFC, no bidi/zero-width characters, single spaces; control characters are refused here
    (PostgreSQL refuses NUL; the others are never meant)."""
    if text.has_control(value):
        raise AppError("invalid", "The {field} contains control characters.", status=422,
                       field=field)
    value = text.clean(value)
    if required and not value:
        raise AppError("invalid", "The {field} must not be empty.", status=422, field=field)
    if len(value) > max_length:
        raise AppError("invalid", "The {field} is longer than {max} characters.", status=422,
                       field=field, max=max_length)
    return value


# --- schools -------------------------------------------------------------------------------------

def can_read_school(viewer: Viewer, school_id: int) -> bool:
    return viewer.can_manage_school(school_id) or viewer.user.school_id == school_id


async def get_school(db: AsyncSession, viewer: Viewer, school_id: int) -> School:
    school = await load(db, School, school_id)
    if school is None or not can_read_school(viewer, school.id):
        raise not_found("school")
    return school


async def school_of(db: AsyncSession, school_id: int) -> School:
    """The school row without a permission check (callers have checked the class/lesson)."""
    school = await load(db, School, school_id)
    if school is None:
        raise not_found("school")
    return school


# --- teachers ------------------------------------------------------------------------------------

async def get_teacher(db: AsyncSession, viewer: Viewer, teacher_id: int) -> User:
    """A teacher or school admin: visible to the admins of their school and to themselves."""
    user = await load(db, User, teacher_id)
    if user is None or user.school_id is None:
        raise not_found("teacher")
    if not (viewer.can_manage_school(user.school_id) or viewer.user.id == user.id):
        raise not_found("teacher")
    return user


# --- classes and their students ------------------------------------------------------------------

async def get_class(db: AsyncSession, viewer: Viewer, class_id: int) -> Classroom:
    classroom = await load(db, Classroom, class_id)
    if classroom is None:
        raise not_found("class")
    viewer.require_class(classroom)
    return classroom


async def manage_class(db: AsyncSession, viewer: Viewer, class_id: int) -> Classroom:
    """The class, if the viewer may change it (admins of its school). A teacher of the class gets
    403 (they can see it), anybody else 404."""
    classroom = await get_class(db, viewer, class_id)
    viewer.require_school(classroom.school_id)
    return classroom


async def get_student(db: AsyncSession, viewer: Viewer, student_id: int) -> Student:
    student = await load(db, Student, student_id)
    if student is None:
        raise not_found("student")
    classroom = await db.get(Classroom, student.class_id)
    if classroom is None or not viewer.can_see_class(classroom):
        raise not_found("student")
    return student


# --- lessons -------------------------------------------------------------------------------------

async def get_lesson(db: AsyncSession, viewer: Viewer, lesson_id: int) -> Lesson:
    lesson = await load(db, Lesson, lesson_id)
    if lesson is None or not viewer.can_see_class(lesson.classroom):
        raise not_found("lesson")
    return lesson


async def manage_lesson(db: AsyncSession, viewer: Viewer, lesson_id: int) -> Lesson:
    """The lesson, if the viewer may change it (admins of its school): 403 for its teacher."""
    lesson = await get_lesson(db, viewer, lesson_id)
    viewer.require_school(lesson.classroom.school_id)
    return lesson
