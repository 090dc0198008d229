"""User accounts as the office knows them: create, log in, change a password.

Why a module of its own: the CLI (``groom admin create``), the demo school and the office's
"add a teacher" all create accounts, and the login and password pages check them; none of that
is HTTP, so it lives below the web layer, which only turns requests into these calls and sets
the session cookie (``web/accounts.py``).
"""

from __future__ import annotations

import secrets
from typing import Optional

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from groom.core.auth import (
    DUMMY_HASH,
    check_new_password,
    end_all_sessions,
    hash_password,
    verify_password,
)
from groom.core.db import load
from groom.core.errors import AppError
from groom.core.models import Role, School, User


def normal_username(username: str) -> str:
    """Usernames are kept lower-case (``create_user``): "Somchai" logs in as "somchai"."""
    return username.strip().lower()


async def authenticate(db: AsyncSession, username: str, password: str) -> User:
    username = normal_username(username)
    user = (await db.execute(select(User).where(User.username == username))).scalar_one_or_none()
    if user is not None:
        db.expunge(user)  # kept loaded: the rollback below would expire it
    # The connection goes back to the pool while the password is checked (which may wait for
    # the password pool): a login flood must not hold every database connection.
    await db.rollback()
    if user is None or not user.active:
        # Spend the same time as a real check so usernames cannot be probed by timing.
        await verify_password(DUMMY_HASH, password)
        raise AppError("bad_login", "Wrong username or password.", status=401)
    if not await verify_password(user.password_hash, password):
        raise AppError("bad_login", "Wrong username or password.", status=401)
    return user


async def create_user(db: AsyncSession, *, username: str, password: str, display_name: str,
                      role: Role, school_id: Optional[int]) -> User:
    """Used by the CLI, the demo and the office API; checks uniqueness and password rules.
    Flushes (the caller commits)."""
    check_new_password(password)
    username = normal_username(username)
    if not username or len(username) > 64 or not all(c.isalnum() or c in "._-" for c in username):
        raise AppError("bad_username", "A username may use letters, digits, '.', '_' and '-'.",
                       status=422)
    if (await db.execute(select(User.id).where(User.username == username))).first():
        raise AppError("username_taken", "The username {username} is already taken.", status=409,
                       username=username)
    if school_id is not None and await load(db, School, school_id) is None:
        raise AppError("not_found", "Not found: {what}", status=404, what="school")
    user = User(username=username, password_hash=await hash_password(password),
                display_name=display_name.strip() or username, role=role, school_id=school_id)
    db.add(user)
    await db.flush()
    return user


async def change_password(db: AsyncSession, user_id: int, old: str, new: str) -> User:
    """Set a new password after checking the current one; every other session of the user ends
    (their ``session_version`` moves on). Commits."""
    check_new_password(new)
    user = await db.get(User, user_id)
    assert user is not None
    if not await verify_password(user.password_hash, old):
        raise AppError("bad_password", "The current password is wrong.", status=403)
    user.password_hash = await hash_password(new)
    user.session_version += 1
    await end_all_sessions(db, user.id)
    await db.commit()
    return user


async def log_out_everywhere(db: AsyncSession, user_id: int) -> None:
    """End every session of the user, on every device (a lost phone, a shared computer). Commits."""
    user = await db.get(User, user_id)
    assert user is not None
    user.session_version += 1
    await end_all_sessions(db, user.id)
    await db.commit()


def random_password() -> str:
    return secrets.token_urlsafe(9)
