"""Wrong logins, limited per client address and per username, with a growing lock.

Passwords are checked with argon2 on purpose slowly, but a guesser with time gets far: so wrong
logins are counted (the last 15 minutes):

* per **address** (``settings.login_failures_per_address``): past it, every login from that
  address is refused with 429 and ``Retry-After`` before any password is checked;
* per **username** (``settings.login_failures_per_user``, from all addresses): past it, addresses
  that already failed on that username are refused, while an address with no wrong try for it
  may still log in. A flood cannot lock the real teacher out, and a spray from many addresses
  gets one guess per address.

A lock lasts ``settings.login_lock_seconds`` and doubles with each further lock of the same key
(at most an hour); the doubling is forgotten after a quiet window. Right logins never count. The
address is ``request.remote``: behind ``--trusted-proxies``, the client the proxy names.

Where the counts live is chosen once, at start (``shared_limits.limits_ctx``), behind one async
interface, ``LoginLimits``: in memory (``LoginLimiter``, one per process), or, in a cluster
(``--redis-url``), in Redis, so every process of every machine counts together
(``shared_limits.py``, with the same rules).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional, Protocol

from aiohttp import web

from groom.core.errors import AppError

WINDOW_SECONDS = 15 * 60.0
MAX_LOCK_SECONDS = 3600.0
MAX_KEYS = 50_000  # bounded memory under a spray of addresses or usernames


@dataclass
class _Key:
    failures: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0
    strikes: int = 0
    last: float = 0.0


class LoginLimits(Protocol):
    """Where wrong logins are counted: this process (``LoginLimiter``) or the cluster
    (``shared_limits.SharedLoginLimits``). ``check`` and ``failed`` below use only this."""

    async def check(self, address: str, username: str) -> Optional[int]:
        """Seconds before this address may try this username again, or None: it may try now."""

    async def wrong(self, address: str, username: str) -> None:
        """A wrong login from this address for this (lower-case) username."""


LOGIN_LIMITS = web.AppKey("login_limits", LoginLimits)


class LoginLimiter:
    """Wrong logins in memory, for one process. Its synchronous methods take a clock (tests pass
    a fake one); ``check`` and ``wrong`` are the same rules as ``LoginLimits``."""

    def __init__(self, per_address: int, per_user: int, lock_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_address = max(1, per_address)
        self.per_user = max(1, per_user)
        self.lock_seconds = max(1.0, lock_seconds)
        self._clock = clock
        self._keys: OrderedDict[str, _Key] = OrderedDict()

    def _get(self, name: str) -> Optional[_Key]:
        key = self._keys.get(name)
        if key is None:
            return None
        now = self._clock()
        while key.failures and key.failures[0] <= now - WINDOW_SECONDS:
            key.failures.popleft()
        if not key.failures and key.locked_until <= now and now - key.last > WINDOW_SECONDS:
            del self._keys[name]  # quiet for a window: forgotten, strikes and all
            return None
        return key

    def _wait(self, name: str) -> Optional[int]:
        key = self._get(name)
        if key is None:
            return None
        wait = key.locked_until - self._clock()
        return max(1, math.ceil(wait)) if wait > 0 else None

    def retry_after(self, address: str, username: str) -> Optional[int]:
        """Seconds before this address may try this username again, or None: it may try now."""
        wait = self._wait("a:" + address)
        if wait is None and self._get(f"p:{username}\0{address}") is not None:
            wait = self._wait("u:" + username)
        return wait

    def _fail(self, name: str, limit: int) -> None:
        key = self._get(name)
        if key is None:
            while len(self._keys) >= MAX_KEYS:
                self._keys.popitem(last=False)
            key = self._keys[name] = _Key()
        self._keys.move_to_end(name)
        now = key.last = self._clock()
        key.failures.append(now)
        while len(key.failures) > limit:
            key.failures.popleft()
        if len(key.failures) >= limit and key.locked_until <= now:
            key.strikes += 1
            key.locked_until = now + min(MAX_LOCK_SECONDS, self.lock_seconds * 2 ** (key.strikes - 1))
            key.failures.clear()

    def failed(self, address: str, username: str) -> None:
        self._fail("a:" + address, self.per_address)
        self._fail("u:" + username, self.per_user)
        self._fail(f"p:{username}\0{address}", 1_000_000)  # "this address failed on this name"

    async def check(self, address: str, username: str) -> Optional[int]:
        return self.retry_after(address, username)

    async def wrong(self, address: str, username: str) -> None:
        self.failed(address, username)


async def check(request: web.Request, username: str) -> None:
    """Raise 429 (``retry_after`` for the header) when this address may not try now."""
    wait = await request.app[LOGIN_LIMITS].check(request.remote or "unknown",
                                                 username.strip().lower())
    if wait is not None:
        raise AppError("too_many_logins", "Too many wrong logins. Try again in {retry_after} "
                       "seconds.", status=429, retry_after=wait)


async def failed(request: web.Request, username: str) -> None:
    await request.app[LOGIN_LIMITS].wrong(request.remote or "unknown", username.strip().lower())
