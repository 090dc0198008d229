"""The office API's request and response models (pydantic).

These models are the contract: ``@endpoint`` validates requests with them and builds
``/api/openapi.json`` from them, so every limit written here (lengths, ranges) is both enforced and
documented. Checks that need the database or a time zone (clashes, dates in the school's zone,
control characters in names) happen in the domain modules and answer 4xx ``AppError``s.

Times: fields named ``starts_at``/``ends_at`` in answers are UTC; ``local_start``/``local_end``
are the same instants with the school's offset. In requests, a time without an offset is the
school's wall-clock time (what an office types), and a time with an offset is taken as given.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from .params import Id

Name = Annotated[str, Field(min_length=1, max_length=200)]
OptionalText = Annotated[str, Field(max_length=200)]
Grade = Annotated[str, Field(max_length=32)]
TimeZoneName = Annotated[str, Field(min_length=1, max_length=64,
                                    description="IANA time zone, e.g. Asia/Vientiane")]
Minutes = Annotated[int, Field(ge=5, le=600, description="Length of a lesson in minutes")]
Scope = Literal["one", "rest"]


class Input(BaseModel):
    """Request bodies refuse unknown fields: a typo must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


# --- schools -------------------------------------------------------------------------------

class SchoolIn(Input):
    name: Name
    timezone: TimeZoneName = "Asia/Vientiane"


class SchoolPatch(Input):
    name: Optional[Name] = None
    timezone: Optional[TimeZoneName] = None


class SchoolOut(BaseModel):
    id: int
    name: str
    timezone: str


# --- teachers ------------------------------------------------------------------------------------

class TeacherIn(Input):
    username: Annotated[str, Field(min_length=1, max_length=64,
                                   description="Letters, digits, '.', '_' and '-'")]
    password: Annotated[str, Field(min_length=8, max_length=200)]
    display_name: OptionalText = ""
    role: Literal["teacher", "admin"] = Field("teacher", description="admin: an admin of this "
                                              "school only")


class TeacherPatch(Input):
    display_name: Optional[Name] = None
    active: Optional[bool] = Field(None, description="false: can no longer log in")


class TeacherOut(BaseModel):
    id: int
    username: str
    display_name: str
    role: Literal["teacher", "admin"]
    school_id: Optional[int]
    active: bool


class TeacherQuery(Input):
    include_admins: bool = False


# --- classes and rosters ---------------------------------------------------------------------

class ClassIn(Input):
    name: Name
    subject: OptionalText = ""
    grade: Grade = ""
    teacher_id: Optional[Id] = None


class ClassPatch(Input):
    name: Optional[Name] = None
    subject: Optional[OptionalText] = None
    grade: Optional[Grade] = None
    teacher_id: Optional[Id] = Field(None, description="null removes the teacher; leave the "
                                     "field out to keep the current one")


class ClassOut(BaseModel):
    id: int
    school_id: int
    name: str
    subject: str
    grade: str
    teacher_id: Optional[int]
    teacher_name: Optional[str]
    join_code: str
    student_count: int
    upcoming_lessons: int


class ClassQuery(Input):
    school_id: Optional[Id] = None


class StudentIn(Input):
    name: Name


class StudentOut(BaseModel):
    id: int
    class_id: int
    name: str
    card_code: str


# --- lessons -----------------------------------------------------------------------------------

class LessonIn(Input):
    title: OptionalText = Field("", description="Empty: the class name")
    starts_at: dt.datetime = Field(description="School's local time if no offset is given")
    duration_minutes: Minutes


class SeriesIn(Input):
    title: OptionalText = ""
    weekdays: Annotated[list[Annotated[int, Field(ge=0, le=6)]],
                        Field(min_length=1, max_length=7, description="0 = Monday ... 6 = Sunday")]
    start_time: dt.time = Field(description="School's local time")
    duration_minutes: Minutes
    first_date: dt.date
    last_date: dt.date


class LessonOut(BaseModel):
    id: int
    class_id: int
    class_name: str
    teacher_id: Optional[int]
    teacher_name: Optional[str]
    series_id: Optional[int]
    title: str
    state: Literal["scheduled", "live", "ended", "cancelled"]
    starts_at: dt.datetime = Field(description="UTC")
    ends_at: dt.datetime = Field(description="UTC")
    local_start: dt.datetime = Field(description="The same instant in the school's time zone")
    local_end: dt.datetime
    timezone: str
    duration_minutes: int


class SeriesOut(BaseModel):
    id: int
    class_id: int
    title: str
    weekdays: list[int]
    start_time: str = Field(description="HH:MM, school's local time")
    duration_minutes: int
    first_date: dt.date
    last_date: dt.date
    lessons: list[LessonOut]


class RescheduleIn(Input):
    starts_at: dt.datetime = Field(description="New start, school's local time if no offset")
    duration_minutes: Optional[Minutes] = Field(None, description="null: keep each lesson's")
    scope: Scope = Field("one", description="one: this lesson; rest: it and the later lessons "
                         "of its series")


class CancelIn(Input):
    scope: Scope = "one"


class WeekQuery(Input):
    week_start: Optional[dt.date] = Field(None, description="First day; default: this Monday")
    school_id: Optional[Id] = None
    teacher_id: Optional[Id] = None
    class_id: Optional[Id] = None


class DayOut(BaseModel):
    date: dt.date
    lessons: list[LessonOut]


class WeekOut(BaseModel):
    week_start: dt.date
    timezone: str
    days: list[DayOut]


class AgendaQuery(Input):
    days: int = Field(7, ge=1, le=62)


class AttendanceOut(BaseModel):
    id: int
    student_id: Optional[int]
    name: str
    joined_at: dt.datetime
    left_at: Optional[dt.datetime]
    seconds_present: float
    bytes_sent: int


# --- joining and feeds -------------------------------------------------------------------------

class JoinIn(Input):
    code: Annotated[str, Field(min_length=1, max_length=64,
                               description="A class code or a personal card code")]


class JoinLesson(BaseModel):
    id: int
    title: str
    state: Literal["scheduled", "live"]
    starts_at: dt.datetime
    ends_at: dt.datetime
    local_start: dt.datetime


class JoinOut(BaseModel):
    kind: Literal["class", "student"]
    code: str
    class_id: int
    class_name: str
    subject: str
    school_name: str
    timezone: str
    student_id: Optional[int]
    student_name: Optional[str]
    lesson: Optional[JoinLesson] = Field(description="The live lesson, else the next one")


class FeedOut(BaseModel):
    url: str = Field(description="https:// or http:// address of the .ics feed (no login)")
    webcal_url: str = Field(description="The same feed as webcal://, which phones subscribe to")
