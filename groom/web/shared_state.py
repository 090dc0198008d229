"""What the processes of a cluster keep together: this app's one Redis client, and whether it answers.

With ``--redis-url`` every process of every machine is a node of one cluster. The placement of
rooms has its own client (``live/redis_placement.py``, made by the command before the app); what
the web layer shares lives here: the abuse limits (``shared_limits.py``) count in Redis so that K
processes give a guesser the budget of one. Without ``--redis-url`` there is no client
(``app[SHARED_STATE]`` is None) and everything stays in the process's memory, as before.

Every user of this client has a local fallback, so the client fails fast instead of waiting for
Redis: short socket timeouts, and one retry only for a refused connection (a pooled connection
that died with a restarted Redis is replaced at once; a Redis that does not answer is not asked
twice). After a failed call Redis counts as away for ``RETRY_S``: callers get ``RedisAway`` at
once and use their fallback, so a Redis that hangs costs one request per ``RETRY_S`` a timeout,
not every request. One warning when it goes away, one line when it answers again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, AsyncIterator, Optional, Union

from aiohttp import web
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

from groom.core.redis_client import REDIS_ERRORS, RedisClient, key_prefix, redis_client

from .plumbing import SETTINGS

log = logging.getLogger("groom.web.shared_state")

REDIS_TIMEOUT_S = 0.5  # one call; slower is an outage: the caller decides alone
RETRY_S = 2.0  # after a failed call, Redis is not asked again for this long


class RedisAway(Exception):
    """Redis did not answer (now, or within the last ``RETRY_S``): use the local fallback."""


class SharedState:
    """The app's Redis client, its key prefix and whether Redis answers (see the module doc)."""

    def __init__(self, client: RedisClient, prefix: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.redis = client
        self.prefix = prefix
        self._clock = clock
        self._away_until = 0.0
        self._away = False

    def key(self, *parts: object) -> str:
        return ":".join((self.prefix, *map(str, parts)))

    def script(self, source: str) -> AsyncScript:
        """A Lua script (run by its hash; loaded again by the client when Redis forgot it)."""
        return self.redis.register_script(source)

    async def run(self, script: AsyncScript, keys: Sequence[str],
                  args: Sequence[Union[str, int, float]]) -> Any:
        """The script's answer, or ``RedisAway`` (Redis failed now or lately: not asked)."""
        if self._away and self._clock() < self._away_until:
            raise RedisAway
        try:
            result = await script(keys=keys, args=args)
        except REDIS_ERRORS as exc:
            if not self._away:
                log.warning("redis unavailable: abuse limits count in this process",
                            extra={"error": str(exc)})
            self._away, self._away_until = True, self._clock() + RETRY_S
            raise RedisAway from exc
        if self._away:
            self._away = False
            log.info("redis answers again: abuse limits are shared")
        return result


SHARED_STATE: web.AppKey[Optional[SharedState]] = web.AppKey("shared_state")  # None: no Redis


def connect(url: str) -> RedisClient:
    return redis_client(
        url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        decode_responses=True)


async def shared_state_ctx(app: web.Application) -> AsyncIterator[None]:
    """The client, made from ``settings.redis_url`` (no connection yet: the first call makes
    one, so a Redis that is away at start does not stop the server) and closed at shutdown."""
    settings = app[SETTINGS]
    url = settings.redis_url
    state = SharedState(connect(url), key_prefix(url, settings.redis_prefix)) if url else None
    app[SHARED_STATE] = state
    try:
        yield
    finally:
        if state is not None:
            await state.redis.aclose()
