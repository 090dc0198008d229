"""The school office: schools, teachers, classes and rosters (domain functions).

Every function takes the database session and the ``Viewer`` and checks permissions itself, so the
JSON API (``api.py``) and the pages call the same code and cannot disagree about who may do what:

- the admin of all schools (``school_id`` NULL) manages everything;
- a school's admin manages that school only;
- a teacher reads their own school and their own classes (and their rosters), and changes nothing
  here.

Ids of another school answer exactly like unknown ids (404 ``not_found``): a stranger cannot tell
"exists but not yours" from "does not exist". Functions that change something commit before they
return (one request, one unit of work), and check everything before writing, so a refused request
changes nothing. Errors are ``AppError`` with fixed English templates (the translation msgids).
Loading one school, teacher, class or student by id for a viewer is ``lookup.py``'s.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from typing import Optional, Sequence

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from groom.core.auth import Viewer, end_all_sessions
from groom.core.db import load
from groom.core.errors import AppError, forbidden, not_found
from groom.core.models import Classroom, Lesson, LessonState, Role, School, Student, User, utcnow

from .codes import new_card_code, new_class_code
from .lookup import (
    DEFAULT_TIMEZONE,
    check_timezone,
    clean_text,
    get_class,
    get_school,
    get_student,
    get_teacher,
    manage_class,
)
from .scheduling import reassign_teacher, schedule_lock
from .users import create_user

MAX_GRADE = 32

MAX_CSV_BYTES = 256 * 1024
MAX_CSV_ROWS = 2000
MAX_ROSTER = 2000

# Header cells that mean "this column holds the student's name" (English, Lao, and common words).
_NAME_HEADERS = {"name", "names", "student", "student name", "full name", "fullname", "ຊື່",
                 "ຊື່ ແລະ ນາມສະກຸນ", "ຊື່ນັກຮຽນ", "ຊື່ ນັກຮຽນ", "ນັກຮຽນ"}
_SPACES = re.compile(r"\s+")


# --- schools -------------------------------------------------------------------------------------

async def list_schools(db: AsyncSession, viewer: Viewer) -> list[School]:
    """The schools the viewer belongs to or manages, by name."""
    query = select(School).order_by(School.name, School.id)
    if not viewer.is_global_admin:
        query = query.where(School.id == viewer.user.school_id)
    return list((await db.execute(query)).scalars())


async def create_school(db: AsyncSession, viewer: Viewer, name: str,
                        timezone: str = DEFAULT_TIMEZONE) -> School:
    """Only the admin of all schools (the district office) opens a new school."""
    if not viewer.is_global_admin:
        raise forbidden()
    school = School(name=clean_text(name, field="school name"), timezone=check_timezone(timezone))
    db.add(school)
    await db.commit()
    return school


async def update_school(db: AsyncSession, viewer: Viewer, school_id: int, *,
                        name: Optional[str] = None, timezone: Optional[str] = None) -> School:
    """Rename a school or change its time zone. Lessons are stored in UTC, so a new time zone
    keeps every lesson at the same instant (the local clock time shown changes)."""
    school = await get_school(db, viewer, school_id)
    viewer.require_school(school.id)
    if name is not None:
        school.name = clean_text(name, field="school name")
    if timezone is not None:
        school.timezone = check_timezone(timezone)
    await db.commit()
    return school


# --- teachers (and school admins) ---------------------------------------------------------------

async def list_teachers(db: AsyncSession, viewer: Viewer, school_id: int, *,
                        include_admins: bool = False) -> list[User]:
    """A school's teachers (and, when asked, its admins), by name. Admins of the school only."""
    school = await get_school(db, viewer, school_id)
    viewer.require_school(school.id)
    roles = [Role.teacher, Role.admin] if include_admins else [Role.teacher]
    query = (select(User).where(User.school_id == school.id, User.role.in_(roles))
             .order_by(User.display_name, User.id))
    return list((await db.execute(query)).scalars())


async def create_teacher(db: AsyncSession, viewer: Viewer, school_id: int, *, username: str,
                         password: str, display_name: str, role: Role = Role.teacher) -> User:
    """A teacher (or, with ``role=Role.admin``, an admin of this one school)."""
    school = await get_school(db, viewer, school_id)
    viewer.require_school(school.id)
    user = await create_user(db, username=username, password=password,
                             display_name=clean_text(display_name, field="name", required=False),
                             role=role, school_id=school.id)
    await db.commit()
    return user


async def update_teacher(db: AsyncSession, viewer: Viewer, teacher_id: int, *,
                         display_name: Optional[str] = None,
                         active: Optional[bool] = None) -> User:
    """Rename, or deactivate a teacher who has left (their lessons and history stay; they can no
    longer log in). Admins of the school only; nobody deactivates themselves."""
    user = await get_teacher(db, viewer, teacher_id)
    assert user.school_id is not None
    viewer.require_school(user.school_id)
    if display_name is not None:
        user.display_name = clean_text(display_name, field="name")
    if active is not None:
        if not active and user.id == viewer.user.id:
            raise AppError("invalid", "You cannot deactivate your own account.", status=422)
        if user.active != active:
            user.active = active
            user.session_version += 1  # a deactivated teacher's open sessions end now
            await end_all_sessions(db, user.id)
    await db.commit()
    return user


# --- classes -------------------------------------------------------------------------------------

async def list_classes(db: AsyncSession, viewer: Viewer,
                       school_id: Optional[int] = None) -> list[Classroom]:
    """Admins: the classes of their schools (optionally one school). Teachers: their own."""
    query = select(Classroom).order_by(Classroom.name, Classroom.id)
    if school_id is not None:
        await get_school(db, viewer, school_id)
        query = query.where(Classroom.school_id == school_id)
    if viewer.is_global_admin:
        pass
    elif viewer.is_admin:
        query = query.where(Classroom.school_id == viewer.user.school_id)
    else:
        query = query.where(Classroom.teacher_id == viewer.user.id)
    return list((await db.execute(query)).unique().scalars())


async def _teacher_in_school(db: AsyncSession, teacher_id: int, school_id: int) -> User:
    teacher = await load(db, User, teacher_id)
    if teacher is None or teacher.school_id != school_id or teacher.role != Role.teacher:
        raise not_found("teacher")
    if not teacher.active:
        raise AppError("inactive_teacher", "{name} is deactivated and cannot teach a class.",
                       status=422, name=teacher.display_name)
    return teacher


async def _unused_code(db: AsyncSession, column: InstrumentedAttribute[str],
                       make: Callable[[], str]) -> str:
    """A fresh random code; collisions are astronomically rare, but checked all the same."""
    for _ in range(10):
        code = make()
        if (await db.execute(select(func.count()).where(column == code))).scalar_one() == 0:
            return code
    raise AppError("internal", "Something went wrong on the server.", status=500)


async def create_class(db: AsyncSession, viewer: Viewer, school_id: int, *, name: str,
                       subject: str = "", grade: str = "",
                       teacher_id: Optional[int] = None) -> Classroom:
    school = await get_school(db, viewer, school_id)
    viewer.require_school(school.id)
    name = clean_text(name, field="class name")
    subject = clean_text(subject, field="subject", required=False)
    grade = clean_text(grade, field="grade", max_length=MAX_GRADE, required=False)
    if teacher_id is not None:
        await _teacher_in_school(db, teacher_id, school.id)
    classroom = Classroom(school_id=school.id, name=name, subject=subject, grade=grade,
                          teacher_id=teacher_id,
                          join_code=await _unused_code(db, Classroom.join_code, new_class_code))
    db.add(classroom)
    await db.commit()
    await db.refresh(classroom)  # loads ``teacher`` too, ready for the caller
    return classroom


async def update_class(db: AsyncSession, viewer: Viewer, class_id: int, *,
                       name: Optional[str] = None, subject: Optional[str] = None,
                       grade: Optional[str] = None, teacher_id: Optional[int] = None,
                       clear_teacher: bool = False) -> Classroom:
    """Change a class. A new teacher also takes over the class's upcoming scheduled lessons, which
    is refused (409, naming the lesson) if one of them clashes with the new teacher's timetable."""
    async with schedule_lock:
        classroom = await manage_class(db, viewer, class_id)
        if name is not None:
            classroom.name = clean_text(name, field="class name")
        if subject is not None:
            classroom.subject = clean_text(subject, field="subject", required=False)
        if grade is not None:
            classroom.grade = clean_text(grade, field="grade", max_length=MAX_GRADE,
                                         required=False)
        new_teacher: Optional[int] = classroom.teacher_id
        if clear_teacher:
            new_teacher = None
        elif teacher_id is not None:
            await _teacher_in_school(db, teacher_id, classroom.school_id)
            new_teacher = teacher_id
        if new_teacher != classroom.teacher_id:
            await reassign_teacher(db, classroom, new_teacher)
            classroom.teacher_id = new_teacher
        await db.commit()
        await db.refresh(classroom)  # ``teacher`` follows the new ``teacher_id``
        return classroom


async def new_join_code(db: AsyncSession, viewer: Viewer, class_id: int) -> Classroom:
    """Replace a class code that leaked (the old one stops working, and so does the class's
    calendar feed link, which is derived from it)."""
    classroom = await manage_class(db, viewer, class_id)
    classroom.join_code = await _unused_code(db, Classroom.join_code, new_class_code)
    await db.commit()
    return classroom


# --- rosters -------------------------------------------------------------------------------------

async def list_students(db: AsyncSession, viewer: Viewer, class_id: int) -> list[Student]:
    """The roster, by name (teachers of the class may read it: they print the cards)."""
    classroom = await get_class(db, viewer, class_id)
    query = (select(Student).where(Student.class_id == classroom.id)
             .order_by(Student.name, Student.id))
    return list((await db.execute(query)).scalars())


async def _roster_size(db: AsyncSession, class_id: int) -> int:
    return (await db.execute(select(func.count()).select_from(Student)
                             .where(Student.class_id == class_id))).scalar_one()


async def add_student(db: AsyncSession, viewer: Viewer, class_id: int, name: str) -> Student:
    classroom = await manage_class(db, viewer, class_id)
    name = clean_text(name, field="student name")
    if await _roster_size(db, classroom.id) >= MAX_ROSTER:
        raise AppError("roster_full", "A class can have at most {max} students.", status=422,
                       max=MAX_ROSTER)
    student = Student(class_id=classroom.id, name=name,
                      card_code=await _unused_code(db, Student.card_code, new_card_code))
    db.add(student)
    await db.commit()
    return student


async def remove_student(db: AsyncSession, viewer: Viewer, student_id: int) -> None:
    """Take a student off the roster; their card stops working. Past attendance keeps the name."""
    student = await get_student(db, viewer, student_id)
    await manage_class(db, viewer, student.class_id)
    await db.delete(student)
    await db.commit()


async def new_card(db: AsyncSession, viewer: Viewer, student_id: int) -> Student:
    """A new personal code for a lost card; the old card stops working."""
    student = await get_student(db, viewer, student_id)
    await manage_class(db, viewer, student.class_id)
    student.card_code = await _unused_code(db, Student.card_code, new_card_code)
    await db.commit()
    return student


def parse_roster_csv(data: bytes) -> list[str]:
    """Names from a CSV file as a school office has it (usually saved from Excel or LibreOffice).

    UTF-8 (with or without the BOM Excel writes), comma, semicolon or tab separated. If the first
    row is a header, the column called "name" (or "ຊື່"...) holds the names, else the first
    column. Blank rows are skipped; a row with an empty name or a name over 200 characters is an
    error naming the line, and nothing is imported.
    """
    if len(data) > MAX_CSV_BYTES:
        raise AppError("too_large", "The CSV file is larger than {max_kb} KB.", status=413,
                       max_kb=MAX_CSV_BYTES // 1024)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise AppError("bad_csv", "The CSV file is not UTF-8 text. In Excel, save it as "
                       "\"CSV UTF-8\".", status=422) from None
    if "\x00" in text:
        raise AppError("bad_csv", "The CSV file is not UTF-8 text. In Excel, save it as "
                       "\"CSV UTF-8\".", status=422)
    first_line = text.split("\n", 1)[0]
    delimiter = max((",", ";", "\t"), key=first_line.count) if first_line else ","
    try:
        rows = [row for row in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)]
    except csv.Error as exc:
        raise AppError("bad_csv", "The CSV file cannot be read: {problem}", status=422,
                       problem=str(exc)) from None
    rows_with_lines = [(n, row) for n, row in enumerate(rows, start=1)
                       if any(cell.strip() for cell in row)]
    if not rows_with_lines:
        raise AppError("bad_csv", "The CSV file has no names.", status=422)
    column = 0
    header = [_SPACES.sub(" ", c).strip().lower() for c in rows_with_lines[0][1]]
    if any(cell in _NAME_HEADERS for cell in header):
        column = next(i for i, cell in enumerate(header) if cell in _NAME_HEADERS)
        rows_with_lines = rows_with_lines[1:]
    if len(rows_with_lines) > MAX_CSV_ROWS:
        raise AppError("too_large", "The CSV file has more than {max} rows.", status=413,
                       max=MAX_CSV_ROWS)
    names = []
    for line, row in rows_with_lines:
        raw = row[column] if column < len(row) else ""
        try:
            names.append(clean_text(raw, field="student name"))
        except AppError as exc:
            raise AppError("bad_csv", "Line {line} of the CSV file: {problem}", status=422,
                           line=line, problem=str(exc)) from None
    if not names:
        raise AppError("bad_csv", "The CSV file has no names.", status=422)
    return names


async def import_roster_csv(db: AsyncSession, viewer: Viewer, class_id: int,
                            data: bytes) -> list[Student]:
    """Add the students named in a CSV file; returns the students added.

    Importing the same file twice adds nobody twice: names already on the roster (and repeats
    within the file) are skipped, so an office can re-import an updated list. Two students with
    the very same name can still be added one by one. All or nothing: a bad row imports nothing.
    """
    classroom = await manage_class(db, viewer, class_id)
    names = parse_roster_csv(data)
    existing = set((await db.execute(select(Student.name)
                                     .where(Student.class_id == classroom.id))).scalars())
    fresh: list[str] = []
    for name in names:
        if name not in existing:
            existing.add(name)
            fresh.append(name)
    if len(existing) > MAX_ROSTER:
        raise AppError("roster_full", "A class can have at most {max} students.", status=422,
                       max=MAX_ROSTER)
    students = [Student(class_id=classroom.id, name=name, card_code=new_card_code())
                for name in fresh]
    taken = set((await db.execute(select(Student.card_code).where(
        Student.card_code.in_([s.card_code for s in students])))).scalars()) if students else set()
    for student in students:
        while student.card_code in taken:  # practically never
            student.card_code = new_card_code()
    db.add_all(students)
    await db.commit()
    return students


# --- what a class is worth showing ---------------------------------------------------------------

async def class_counts(db: AsyncSession, class_ids: Sequence[int]) -> dict[int, tuple[int, int]]:
    """Per class: (students on the roster, upcoming scheduled lessons), for lists."""
    if not class_ids:
        return {}
    students = dict((await db.execute(
        select(Student.class_id, func.count()).where(Student.class_id.in_(class_ids))
        .group_by(Student.class_id))).tuples().all())
    upcoming = dict((await db.execute(
        select(Lesson.class_id, func.count()).where(
            Lesson.class_id.in_(class_ids), Lesson.state == LessonState.scheduled,
            Lesson.ends_at > utcnow()).group_by(Lesson.class_id))).tuples().all())
    return {cid: (students.get(cid, 0), upcoming.get(cid, 0)) for cid in class_ids}
