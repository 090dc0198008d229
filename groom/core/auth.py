"""Who is asking: passwords, session cookies, CSRF tokens and the role/school checks.

- Passwords are hashed with argon2 in a thread of a small pool of their own (hashing takes
  ~50 ms of CPU on purpose, which must not stall live rooms on the event loop, nor fill the
  default executor that writes recordings and serves files): ``PasswordPool``.
- The session is a signed cookie (itsdangerous) holding the user id, the user's
  ``session_version`` (bumped on password change, which logs out every other session) and a
  CSRF token. Unsafe requests must echo that token: forms in a hidden field, the API in the
  ``X-CSRF-Token`` header. A SameSite=Lax cookie alone is not enough on shared school networks.
- ``Viewer`` answers "may this user see/change that school/class?", in one place.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import secrets
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from .errors import AppError, forbidden, unauthorized
from .models import Classroom, Role, User, UserSession, utcnow

T = TypeVar("T")

COOKIE = "groom_session"
SESSION_MAX_AGE = 14 * 24 * 3600
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"

_hasher = PasswordHasher()
# Checked against when a username does not exist, so a wrong username costs as long as a wrong
# password and usernames cannot be probed by timing.
DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


class PasswordPool:
    """The server's own small thread pool for argon2, with a bounded queue.

    Not the event loop's default executor: that one also writes recordings and serves files, and
    a login flood queued there would stall them. When ``threads + queue`` checks are already in
    flight, one more is refused at once (503 ``busy``) instead of waiting behind the flood."""

    def __init__(self, threads: int = 1, queue: int = 16) -> None:
        self._executor: Optional[ThreadPoolExecutor] = None
        self._lock = threading.Lock()
        self._in_flight = 0
        self.configure(threads, queue)

    def configure(self, threads: int, queue: int) -> None:
        self.shutdown()
        self.threads, self.queue = max(1, threads), max(0, queue)

    def _done(self, _: "Future[Any]") -> None:
        with self._lock:
            self._in_flight -= 1

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            if self._in_flight >= self.threads + self.queue:
                raise AppError("busy", "The server is busy. Try again in a moment.", status=503,
                               retry_after=1)
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="passwords")
            self._in_flight += 1
        # Counted until the thread finishes, even if the request gives up waiting.
        future = self._executor.submit(fn, *args)
        future.add_done_callback(self._done)
        return await asyncio.wrap_future(future)

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


PASSWORDS = PasswordPool()


async def hash_password(password: str) -> str:
    return await PASSWORDS.run(_hasher.hash, password)


async def verify_password(password_hash: str, password: str) -> bool:
    def check() -> bool:
        try:
            return _hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    return await PASSWORDS.run(check)


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
    key: str = ""  # names the ``user_sessions`` row; logging out deletes it


class SessionCodec:
    """Signs and reads the session cookie; the secret comes from the settings."""

    def __init__(self, secret: str) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt="groom.session")

    def dump(self, session: Session) -> str:
        return self._serializer.dumps({"u": session.user_id, "v": session.version, "c": session.csrf,
                                        "k": session.key})

    def load(self, cookie: str) -> Optional[Session]:
        try:
            data = self._serializer.loads(cookie, max_age=SESSION_MAX_AGE)
            return Session(int(data["u"]), int(data["v"]), str(data["c"]), str(data["k"]))
        except (BadSignature, KeyError, TypeError, ValueError):
            return None


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def start_session(db: AsyncSession, user: User) -> Session:
    """A new logged-in session of ``user``, stored server-side (so that it can be ended) with
    the user's expired ones swept away. Commits."""
    now = utcnow()
    session = Session(user.id, user.session_version, secrets.token_urlsafe(24),
                      secrets.token_urlsafe(24))
    await db.execute(delete(UserSession).where(UserSession.user_id == user.id,
                                               UserSession.expires_at < now))
    db.add(UserSession(key_hash=key_hash(session.key), user_id=user.id, created_at=now,
                       expires_at=now + dt.timedelta(seconds=SESSION_MAX_AGE)))
    await db.commit()
    return session


async def end_session(db: AsyncSession, session: Session) -> None:
    """Log out this one session: its cookie, and every copy of it, stops working. Commits."""
    await db.execute(delete(UserSession).where(UserSession.key_hash == key_hash(session.key)))
    await db.commit()


async def end_all_sessions(db: AsyncSession, user_id: int) -> None:
    """Every session of the user ends (log out everywhere, password change, deactivation).
    Does not commit: the caller's change and this one land together."""
    await db.execute(delete(UserSession).where(UserSession.user_id == user_id))


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


class ClassAccess(Protocol):
    """Who may open a class's lesson: a logged-in ``Viewer``, or a ``LessonPass``."""

    def require_class(self, classroom: Classroom) -> None: ...


@dataclass(frozen=True)
class LessonPass:
    """A moderator without an account (the BigBlueButton-compatible API's ``join``): a signed
    pass lets them teach the one lesson it names, and reach nothing else, since no session
    cookie or user is ever made for them."""

    lesson_id: int
    class_id: int
    name: str

    def require_class(self, classroom: Classroom) -> None:
        if classroom.id != self.class_id:
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
    stored = await db.get(UserSession, key_hash(session.key))
    if stored is None or stored.user_id != user.id or stored.expires_at < utcnow():
        return None  # logged out (here or everywhere), or expired
    return Viewer(user, session)


def require_viewer(viewer: Optional[Viewer]) -> Viewer:
    if viewer is None:
        raise unauthorized()
    return viewer


def public_user(user: User) -> dict[str, Any]:
    return {"id": user.id, "username": user.username, "display_name": user.display_name,
            "role": user.role.value, "school_id": user.school_id}
