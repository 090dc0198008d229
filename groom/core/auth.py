"""Who is asking: passwords, session cookies, CSRF tokens and the role/school checks.

- Passwords are hashed with argon2 in a thread (hashing takes ~50 ms of CPU on purpose, which
  must not stall live rooms on the event loop).
- The session is a signed cookie (itsdangerous) holding the user id, the user's
  ``session_version`` (bumped on password change, which logs out every other session) and a
  CSRF token. Unsafe requests must echo that token: forms in a hidden field, the API in the
  ``X-CSRF-Token`` header. A SameSite=Lax cookie alone is not enough on shared school networks.
- ``Viewer`` answers "may this user see/change that school/class?", in one place.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from dataclasses import dataclass
from typing import Any, Optional

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy.ext.asyncio import AsyncSession

from .errors import AppError, forbidden, unauthorized
from .models import Classroom, Role, User

COOKIE = "groom_session"
SESSION_MAX_AGE = 14 * 24 * 3600
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"

_hasher = PasswordHasher()
# Checked against when a username does not exist, so a wrong username costs as long as a wrong
# password and usernames cannot be probed by timing.
DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


async def hash_password(password: str) -> str:
    return await asyncio.get_running_loop().run_in_executor(None, _hasher.hash, password)


async def verify_password(password_hash: str, password: str) -> bool:
    def check() -> bool:
        try:
            return _hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.get_running_loop().run_in_executor(None, check)


def check_new_password(password: str) -> None:
    if len(password) < 8:
        raise AppError("weak_password", "The password must have at least 8 characters.",
                       status=422)
    if len(password) > 200:
        raise AppError("weak_password", "The password is too long.", status=422)


@dataclass
class Session:
    user_id: int
    version: int
    csrf: str


class SessionCodec:
    """Signs and reads the session cookie; the secret comes from the settings."""

    def __init__(self, secret: str) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt="groom.session")

    def dump(self, session: Session) -> str:
        return self._serializer.dumps({"u": session.user_id, "v": session.version, "c": session.csrf})

    def load(self, cookie: str) -> Optional[Session]:
        try:
            data = self._serializer.loads(cookie, max_age=SESSION_MAX_AGE)
            return Session(int(data["u"]), int(data["v"]), str(data["c"]))
        except (BadSignature, KeyError, TypeError, ValueError):
            return None


def new_session(user: User) -> Session:
    return Session(user.id, user.session_version, secrets.token_urlsafe(24))


def csrf_matches(session: Session, token: Optional[str]) -> bool:
    return bool(token) and hmac.compare_digest(session.csrf, token or "")


@dataclass
class Viewer:
    """The logged-in user and the checks every handler needs."""

    user: User
    session: Session

    @property
    def is_admin(self) -> bool:
        return self.user.role == Role.admin

    @property
    def is_global_admin(self) -> bool:
        return self.is_admin and self.user.school_id is None

    def can_manage_school(self, school_id: int) -> bool:
        return self.is_global_admin or (self.is_admin and self.user.school_id == school_id)

    def require_admin(self) -> None:
        if not self.is_admin:
            raise forbidden()

    def require_school(self, school_id: int) -> None:
        """Admins of the school (or of all); a teacher only reads their own school."""
        if not self.can_manage_school(school_id):
            raise forbidden()

    def can_see_class(self, classroom: Classroom) -> bool:
        if self.can_manage_school(classroom.school_id):
            return True
        return self.user.role == Role.teacher and classroom.teacher_id == self.user.id

    def require_class(self, classroom: Classroom) -> None:
        if not self.can_see_class(classroom):
            # Same answer as a missing id: another school's ids must not be confirmed to exist.
            raise AppError("not_found", "Not found: {what}", status=404, what="class")


async def load_viewer(db: AsyncSession, codec: SessionCodec, cookie: Optional[str]) -> Optional[Viewer]:
    if not cookie:
        return None
    session = codec.load(cookie)
    if session is None:
        return None
    user = await db.get(User, session.user_id)
    if user is None or not user.active or user.session_version != session.version:
        return None
    return Viewer(user, session)


def require_viewer(viewer: Optional[Viewer]) -> Viewer:
    if viewer is None:
        raise unauthorized()
    return viewer


def public_user(user: User) -> dict[str, Any]:
    return {"id": user.id, "username": user.username, "display_name": user.display_name,
            "role": user.role.value, "school_id": user.school_id}
