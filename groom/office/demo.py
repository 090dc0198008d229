"""The demo school: enough data to try every page within a minute of installing.

Running the demo again keeps the data, gives the demo accounts fresh passwords (printed, never
stored in clear) and makes sure a lesson is on today's schedule.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from groom.core.auth import hash_password
from groom.core.models import Classroom, Lesson, LessonState, Role, School, Student, User

from .codes import new_card_code, new_class_code
from .users import create_user, random_password

SCHOOL_NAME = "ໂຮງຮຽນປະຖົມບ້ານໜອງບົວ (Ban Nongbua Primary School)"
ADMIN, TEACHER = "demo-admin", "demo-teacher"
ROSTER = ["ສົມສັກ ພົມມະຈັນ", "ນ້ອຍ ສີສຸວັນ", "ບຸນມີ ແກ້ວມະນີ", "ຄຳແສງ ວົງສາ",
          "ວັນນາ ສຸລິຍະ", "ພອນສະຫວັນ ອິນທະວົງ"]


async def seed_demo(sessions: async_sessionmaker[AsyncSession], base_url: str) -> dict[str, Any]:
    """Create or refresh the demo school; its links (under ``base_url``) and logins."""
    admin_pw, teacher_pw = random_password(), random_password()
    async with sessions() as db:
        school = (await db.execute(select(School).where(School.name == SCHOOL_NAME))).scalar_one_or_none()
        if school is None:
            school = School(name=SCHOOL_NAME, timezone="Asia/Vientiane")
            db.add(school)
            await db.flush()
        users: dict[str, User] = {}
        for username, role, name, pw in ((ADMIN, Role.admin, "Demo admin", admin_pw),
                                         (TEACHER, Role.teacher, "ອາຈານ ມະນີວັນ", teacher_pw)):
            user = (await db.execute(select(User).where(User.username == username))).scalar_one_or_none()
            if user is None:
                user = await create_user(db, username=username, password=pw, display_name=name,
                                         role=role, school_id=school.id)
            else:
                user.password_hash = await hash_password(pw)
                user.session_version += 1
            users[username] = user
        classes = select(Classroom).where(Classroom.school_id == school.id)
        classroom = (await db.execute(classes)).scalars().first()
        if classroom is None:
            classroom = Classroom(school_id=school.id, name="ປ.4 ກ", subject="ພາສາລາວ (Lao language)",
                                  grade="4", teacher_id=users[TEACHER].id, join_code=new_class_code())
            db.add(classroom)
            await db.flush()
            db.add_all(Student(class_id=classroom.id, name=n, card_code=new_card_code()) for n in ROSTER)
        now = dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0)
        today_lesson = (await db.execute(
            select(Lesson).where(Lesson.class_id == classroom.id,
                                 Lesson.ends_at > now,
                                 Lesson.state.in_([LessonState.scheduled, LessonState.live]))
        )).scalars().first()
        if today_lesson is None:
            today_lesson = Lesson(class_id=classroom.id, teacher_id=users[TEACHER].id,
                                  title="ບົດທີ 5: ການອ່ານ (Reading)", starts_at=now,
                                  ends_at=now + dt.timedelta(minutes=45))
            db.add(today_lesson)
        await db.commit()
        code, lesson_id, class_id = classroom.join_code, today_lesson.id, classroom.id
    base = base_url.rstrip("/")
    return {
        "admin_url": f"{base}/login",
        "teacher_url": f"{base}/login",
        "student_url": f"{base}/join/{code}",
        "class_code": code,
        "lesson_id": lesson_id,
        "class_id": class_id,
        "teach_url": f"{base}/lessons/{lesson_id}/teach",
        "admin_login": {"username": ADMIN, "password": admin_pw},
        "teacher_login": {"username": TEACHER, "password": teacher_pw},
    }
