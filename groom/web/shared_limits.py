"""Wrong join codes, logins and API checksums counted by every process of a cluster together, in Redis.

``joining.py`` and ``login_limits.py`` state the rules (read their docstrings: the "known code"
exception for a school behind one NAT, the growing login locks) and keep them in memory, per
process. With ``--redis-url`` the same rules are kept here, in Redis (``shared_state.py``'s
client), so K processes on any number of machines give a guesser the budget of one process, not
K times it. ``limits_ctx`` picks the backend once, at start; handlers only see
``joining.JoinLimits`` and ``login_limits.LoginLimits``.

Sliding windows, as in memory, not fixed-window counters: a fixed window lets a guesser spend its
budget at the end of one window and again at the start of the next, twice the budget in a moment,
so it is not as strict. Each key keeps a sorted set of its failure times, trimmed to the newest
``limit`` entries: that is enough to decide "``limit`` failures within the window" exactly, and to
tell when the oldest of them leaves it (``Retry-After``), so a key never holds more than ``limit``
small members. Each decision is one Lua script (atomic, one round trip) on Redis's own clock
(``TIME``, in milliseconds), so machines whose clocks drift still agree.

Keys, under ``{redis_prefix}:limits:``, each expiring when the in-memory rule would forget it, so
nothing grows without bound (a spray from many addresses costs at most a window's worth of keys;
in a Redis Cluster the prefix is in braces, a hash tag that keeps the keys a script touches in
one slot, ``core/redis_client.py``):

- ``join:fails:{address}``: wrong codes' times; expires a minute after the last (and
  ``checksum:fails:{address}`` the same for the BigBlueButton API's wrong checksums, the same rule
  without known codes: ``bbb_api.py``);
- ``join:known:{address}``: code -> its last right use from the address (at most
  ``MAX_KNOWN_CODES``); expires ``KNOWN_CODE_SECONDS`` after the last;
- ``login:lock:{a|u}:{address or username}`` (a hash: ``locked_until``, ``strikes``) and
  ``login:fails:{a|u}:...`` (the failures' times): both expire at the later of the lock's end and
  a window after the last failure; a lock's doubling is forgotten with them, as in memory;
- ``login:tried:{address}|{username}``: this address failed on this username (a window).

Redis away (a restart, a failover, a cut cable): neither open nor closed, but each process on its
own. Every count is also written, always, to this process's in-memory limiter, and while Redis
does not answer (``shared_state.RedisAway``) the decisions are that limiter's. So a Redis restart
never blocks a lesson (a code already used from an address passes, as ever, and nobody is locked
out by a Redis nobody can reach), and never lifts the limits: during the outage each process
grants a guesser its own budget, as without Redis. A restarted Redis may come back empty: the
shared counts start again then (a guesser gains one budget per Redis restart).
"""

from __future__ import annotations

import contextlib
import secrets
from typing import AsyncIterator, Optional

from aiohttp import web

from .joining import (
    CHECKSUM_FAILURES_PER_MINUTE,
    CHECKSUM_LIMITS,
    JOIN_LIMITS,
    KNOWN_CODE_SECONDS,
    MAX_KNOWN_CODES,
    JoinLimiter,
)
from .joining import WINDOW_SECONDS as JOIN_WINDOW_SECONDS
from .login_limits import LOGIN_LIMITS, MAX_LOCK_SECONDS, LoginLimiter
from .login_limits import WINDOW_SECONDS as LOGIN_WINDOW_SECONDS
from .plumbing import SETTINGS
from .shared_state import SHARED_STATE, RedisAway, SharedState

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: fails, known. ARGV: limit, window ms, known ms, code. Answers -1 (may try) or the wait (s).
_JOIN_CHECK = _NOW + """
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local n = redis.call('ZCARD', KEYS[1])
if n < limit then return -1 end
local used = redis.call('ZSCORE', KEYS[2], ARGV[4])
if used and now - tonumber(used) < tonumber(ARGV[3]) then return -1 end
local edge = redis.call('ZRANGE', KEYS[1], n - limit, n - limit, 'WITHSCORES')
return math.max(1, math.ceil((tonumber(edge[2]) + window - now) / 1000))
"""

# KEYS: fails. ARGV: limit, window ms, a unique member.
_JOIN_WRONG = _NOW + """
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(limit + 1))
redis.call('PEXPIRE', KEYS[1], window)
return 0
"""

# KEYS: known. ARGV: code, known ms, most codes kept.
_JOIN_RIGHT = _NOW + """
local keep = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - keep)
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[3]) + 1))
redis.call('PEXPIRE', KEYS[1], keep)
return 0
"""

# KEYS: the address's lock, tried (address|username), the username's lock. Answers -1 or the wait (s).
_LOGIN_CHECK = _NOW + """
local function wait(lock)
  local locked = tonumber(redis.call('HGET', lock, 'locked_until') or '0')
  if locked > now then return math.max(1, math.ceil((locked - now) / 1000)) end
  return -1
end
local w = wait(KEYS[1])
if w < 0 and redis.call('EXISTS', KEYS[2]) == 1 then w = wait(KEYS[3]) end
return w
"""

# KEYS: address lock, address fails, username lock, username fails, tried.
# ARGV: per address, per username, first lock ms, window ms, longest lock ms, a unique member.
_LOGIN_WRONG = _NOW + """
local window, first, longest = tonumber(ARGV[4]), tonumber(ARGV[3]), tonumber(ARGV[5])
local function fail(lock, fails, limit)
  redis.call('ZREMRANGEBYSCORE', fails, '-inf', now - window)
  redis.call('ZADD', fails, now, ARGV[6])
  redis.call('ZREMRANGEBYRANK', fails, 0, -(limit + 1))
  local locked = tonumber(redis.call('HGET', lock, 'locked_until') or '0')
  local strikes = tonumber(redis.call('HGET', lock, 'strikes') or '0')
  if redis.call('ZCARD', fails) >= limit and locked <= now then
    strikes = strikes + 1
    locked = now + math.min(longest, first * 2 ^ (strikes - 1))
    redis.call('DEL', fails)
  end
  redis.call('HSET', lock, 'locked_until', locked, 'strikes', strikes)
  local expires = math.max(now + window, locked)
  redis.call('PEXPIREAT', lock, expires)
  redis.call('PEXPIREAT', fails, expires)
end
fail(KEYS[1], KEYS[2], tonumber(ARGV[1]))
fail(KEYS[3], KEYS[4], tonumber(ARGV[2]))
redis.call('SET', KEYS[5], '1', 'PX', window)
return 0
"""


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


class SharedJoinLimits:
    """``joining.JoinLimits`` for the whole cluster; ``local`` counts too and decides while
    Redis is away (see the module docstring)."""

    def __init__(self, state: SharedState, local: JoinLimiter, name: str = "join") -> None:
        self.local = local
        self._state = state
        self._name = name  # the keys' namespace: "join", or "checksum" for the BBB API
        self._check = state.script(_JOIN_CHECK)
        self._wrong = state.script(_JOIN_WRONG)
        self._right = state.script(_JOIN_RIGHT)

    def _key(self, kind: str, address: str) -> str:
        return self._state.key("limits", self._name, kind, address)

    async def check(self, address: str, code: str) -> Optional[int]:
        try:
            wait = int(await self._state.run(
                self._check, [self._key("fails", address), self._key("known", address)],
                [self.local.per_minute, _ms(JOIN_WINDOW_SECONDS), _ms(KNOWN_CODE_SECONDS), code]))
        except RedisAway:
            return await self.local.check(address, code)
        return wait if wait > 0 else None

    async def wrong(self, address: str) -> None:
        self.local.failed(address)
        with contextlib.suppress(RedisAway):
            await self._state.run(self._wrong, [self._key("fails", address)],
                                  [self.local.per_minute, _ms(JOIN_WINDOW_SECONDS),
                                   secrets.token_hex(6)])

    async def right(self, address: str, code: str) -> None:
        self.local.succeeded(address, code)
        with contextlib.suppress(RedisAway):
            await self._state.run(self._right, [self._key("known", address)],
                                  [code, _ms(KNOWN_CODE_SECONDS), MAX_KNOWN_CODES])


class SharedLoginLimits:
    """``login_limits.LoginLimits`` for the whole cluster; ``local`` counts too and decides
    while Redis is away (see the module docstring)."""

    def __init__(self, state: SharedState, local: LoginLimiter) -> None:
        self.local = local
        self._state = state
        self._check = state.script(_LOGIN_CHECK)
        self._wrong = state.script(_LOGIN_WRONG)

    def _key(self, *parts: str) -> str:
        return self._state.key("limits", "login", *parts)

    def _tried(self, address: str, username: str) -> str:
        return self._key("tried", f"{address}|{username}")  # an address never holds '|'

    async def check(self, address: str, username: str) -> Optional[int]:
        try:
            wait = int(await self._state.run(
                self._check, [self._key("lock", "a", address), self._tried(address, username),
                              self._key("lock", "u", username)], []))
        except RedisAway:
            return await self.local.check(address, username)
        return wait if wait > 0 else None

    async def wrong(self, address: str, username: str) -> None:
        self.local.failed(address, username)
        local = self.local
        with contextlib.suppress(RedisAway):
            await self._state.run(
                self._wrong, [self._key("lock", "a", address), self._key("fails", "a", address),
                              self._key("lock", "u", username), self._key("fails", "u", username),
                              self._tried(address, username)],
                [local.per_address, local.per_user, _ms(local.lock_seconds),
                 _ms(LOGIN_WINDOW_SECONDS), _ms(MAX_LOCK_SECONDS), secrets.token_hex(6)])


async def limits_ctx(app: web.Application) -> AsyncIterator[None]:
    """The app's join, login and API checksum limits: in this process, or shared when there is a
    Redis (``shared_state_ctx`` runs first)."""
    settings = app[SETTINGS]
    join = JoinLimiter(settings.join_attempts_per_minute)
    checksums = JoinLimiter(CHECKSUM_FAILURES_PER_MINUTE)
    login = LoginLimiter(settings.login_failures_per_address, settings.login_failures_per_user,
                         settings.login_lock_seconds)
    state = app[SHARED_STATE]
    app[JOIN_LIMITS] = join if state is None else SharedJoinLimits(state, join)
    app[LOGIN_LIMITS] = login if state is None else SharedLoginLimits(state, login)
    app[CHECKSUM_LIMITS] = checksums if state is None else SharedJoinLimits(state, checksums,
                                                                            "checksum")
    yield
