"""Placement across machines: the nodes of one school system agree on Redis.

``groom serve --redis-url redis://...`` makes every process (each worker of each machine) a
*node* of one cluster. The relay, the web handlers and the rooms are the same as on one machine
(``placement.py``'s ``Placement`` is the seam); only where the agreement is kept changes:

- ``{prefix}:node:{id}``: a node's private URL, pid and load, written every ``HEARTBEAT_S``
  with a time to live of ``NODE_TTL_S``. A node that stops heartbeating (killed, cut off) is
  gone for everyone within that time; ``{prefix}:nodes`` is the set of ids ever seen (pruned
  when their key has expired).
- ``{prefix}:class:{class_id}``: the node that owns a class's room. A claim is made with
  ``SET NX`` (two nodes placing the same class at once agree on the first), and refreshed by
  its owner's heartbeats while it holds the class. A claim whose node is gone counts as no
  claim: the next join places the class again, on a live node (compare-and-delete, so a live
  owner's claim is never taken).
- ``{prefix}:placed:{id}``: classes placed on a node in the last ``PLACEMENT_GRACE_S``, so a
  burst of lessons starting in the same second spreads instead of all choosing the node that
  was least loaded at the last heartbeat.
- ``{prefix}:up`` and ``{prefix}:settling``: the first heartbeat into an empty Redis marks it
  up and starts ``SETTLE_S`` in which classes already claimed are found but no new class is
  placed (joins are asked to retry): time for every live node to re-claim what it runs.

In a Redis Cluster ``{prefix}`` is the prefix in braces, a hash tag: every key is in one slot,
so the scripts and ``MGET`` below, which touch several keys, are allowed (``redis_client.py``).

Redis only routes. Media goes from the owner straight to its students, so when Redis stops
(a restart, a failover) every lesson in progress keeps its audio: a node keeps serving the
classes it holds, answers "try again" for classes it cannot place, and re-registers itself
and re-claims what it holds as soon as Redis is back (a restarted Redis may be empty).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Callable, Optional

from groom.core.redis_client import REDIS_ERRORS, RedisClient, key_prefix, redis_client
from groom.core.tasks import cancel

from .placement import HEARTBEAT_S, PLACEMENT_GRACE_S, Load, Node

log = logging.getLogger("groom.live.redis_placement")

NODE_TTL_S = 3.0  # a node silent this long is gone: its classes are placed again at the next join
CLAIM_TTL_S = PLACEMENT_GRACE_S  # a claim outlives its owner's last heartbeat by this much
REDIS_TIMEOUT_S = 1.0
# After Redis starts empty (first boot, or a restart without persistence) no new class is
# placed until every live node has heartbeaten and re-claimed what it holds: otherwise a join
# could place a class that is running on a node that has not re-claimed it yet (two rooms).
SETTLE_S = NODE_TTL_S + HEARTBEAT_S  # one Redis call; a slower answer is an outage (joins are told to retry)

# Refresh a claim that is ours or free; leave another node's alone (answers 0).
_KEEP = """
local cur = redis.call('GET', KEYS[1])
if (not cur) or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
# Mark the registry up; if it was not (an empty Redis), start the settling time in the same
# step, so that no join can find it up and not settling in between (answers 1 when it starts).
_UP = """
if redis.call('SET', KEYS[1], '1', 'NX') then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
  return 1
end
return 0
"""
# Delete a claim only if it still names the node we saw (gone): never a fresh owner's.
_DROP_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class PlacementUnavailable(LookupError):
    """Redis did not answer and this node cannot decide alone: the join is asked to retry."""


class RedisPlacement:
    """One node of a cluster whose placement lives in Redis (see the module docstring)."""

    def __init__(self, me: Node, url: str, prefix: str = "groom",
                 client: Optional[RedisClient] = None) -> None:
        self.me = me
        self._prefix = key_prefix(url, prefix)
        self._redis: RedisClient = client or redis_client(
            url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S,
            decode_responses=True)
        self._keep = self._redis.register_script(_KEEP)
        self._drop_if = self._redis.register_script(_DROP_IF)
        self._up = self._redis.register_script(_UP)
        self._load: Callable[[], Load] = Load
        self._task: Optional[asyncio.Task[None]] = None
        self._down_since: Optional[float] = None

    @property
    def solo(self) -> bool:
        return False

    def _key(self, *parts: object) -> str:
        return ":".join((self._prefix, *map(str, parts)))

    def _holds(self, class_id: int) -> bool:
        return class_id in self._load().classes

    # --- the Placement interface -----------------------------------------------------------

    async def owner(self, class_id: int) -> Optional[Node]:
        try:
            found = await self._owner(class_id)
        except REDIS_ERRORS as exc:
            self._outage(exc)
            if self._holds(class_id):
                return self.me
            raise PlacementUnavailable("Redis is not answering") from exc
        return found[0] if found else None

    async def place(self, class_id: int) -> Node:
        try:
            for _ in range(3):  # lost races: someone else claimed first, or a gone owner's claim
                found = await self._owner(class_id)
                if found is not None:
                    return found[0]
                up, settling = await self._redis.mget(self._key("up"), self._key("settling"))
                if up is None or settling is not None:
                    raise PlacementUnavailable("the cluster registry is (re)starting")
                stale = await self._redis.get(self._key("class", class_id))
                if stale is not None:  # its node is gone: free the class (if nobody did yet)
                    await self._drop_if(keys=[self._key("class", class_id)], args=[stale])
                    log.warning("class owner gone; placing again",
                                extra={"class_id": class_id, "node": stale})
                best = await self._least_loaded()
                claimed = await self._redis.set(self._key("class", class_id), best.id, nx=True,
                                                px=int(CLAIM_TTL_S * 1000))
                if claimed:
                    async with self._redis.pipeline(transaction=False) as pipe:
                        pipe.sadd(self._key("placed", best.id), class_id)
                        pipe.pexpire(self._key("placed", best.id), int(PLACEMENT_GRACE_S * 1000))
                        await pipe.execute()
                    log.info("class placed", extra={"class_id": class_id, "node": best.id})
                    return best
        except REDIS_ERRORS as exc:
            self._outage(exc)
            if self._holds(class_id):
                return self.me
            raise PlacementUnavailable("Redis is not answering") from exc
        raise PlacementUnavailable(f"class {class_id}: placement kept changing")

    async def nodes(self) -> list[Node]:
        try:
            return [node for node, _ in await self._live()]
        except REDIS_ERRORS as exc:
            self._outage(exc)
            raise PlacementUnavailable("Redis is not answering") from exc

    async def start(self, load: Callable[[], Load], lost: Callable[[], None]) -> None:
        """Register (a failure here stops the start: a node that cannot be found must not
        serve) and heartbeat from now on. ``lost`` is never called: without Redis the node
        keeps its lessons going and waits for Redis to come back."""
        self._load = load
        await self._wait_for_name()
        await self._beat()
        self._task = asyncio.create_task(self._heartbeats(), name="redis-placement-heartbeat")

    async def _wait_for_name(self) -> None:
        """A node restarted at once (systemd, a kill -9) finds its own last entry, which
        expires within ``NODE_TTL_S``; an entry still refreshed after that is another live
        process using the same id, and two nodes under one name would steal each other's
        classes: refuse to start."""
        key = self._key("node", self.me.id)
        deadline = time.monotonic() + NODE_TTL_S + 1.0
        while (current := await self._redis.get(key)) is not None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"node id {self.me.id!r} is used by a live node "
                                   f"({json.loads(current).get('url')}): give each machine "
                                   "its own --node-id")
            await asyncio.sleep(0.25)

    async def stop(self) -> None:
        """Leave the cluster: no class is placed here any more, and the classes held are
        freed (their rooms are ending with this process)."""
        await cancel(self._task)
        self._task = None
        try:
            await self._redis.delete(self._key("node", self.me.id))
            await self._redis.srem(self._key("nodes"), self.me.id)
            for class_id in self._load().classes:
                await self._drop_if(keys=[self._key("class", class_id)], args=[self.me.id])
        except REDIS_ERRORS:
            pass  # its key expires by itself
        await self._redis.aclose()

    # --- inside ------------------------------------------------------------------------------

    async def _owner(self, class_id: int) -> Optional[tuple[Node, dict[str, Any]]]:
        owner_id = await self._redis.get(self._key("class", class_id))
        if owner_id is None:
            return None
        if owner_id == self.me.id:
            return self.me, {}
        raw = await self._redis.get(self._key("node", owner_id))
        if raw is None:
            return None  # the claim names a node that is gone
        data = json.loads(raw)
        return Node.from_json(data), data

    async def _live(self) -> list[tuple[Node, dict[str, Any]]]:
        ids = sorted(await self._redis.smembers(self._key("nodes")))
        if not ids:
            return []
        raws = await self._redis.mget([self._key("node", i) for i in ids])
        gone = [i for i, raw in zip(ids, raws) if raw is None]
        if gone:
            await self._redis.srem(self._key("nodes"), *gone)
        return [(Node.from_json(data), data) for data in (json.loads(r) for r in raws if r)]

    async def _least_loaded(self) -> Node:
        """Fewest classes (held, or placed in the last seconds), then fewest students, then
        this node (a tie keeps the connection where it landed: no relay)."""
        live = await self._live()
        if not live:
            raise PlacementUnavailable("no live node registered")
        async with self._redis.pipeline(transaction=False) as pipe:
            for node, _ in live:
                pipe.smembers(self._key("placed", node.id))
            placed: list[set[str]] = await pipe.execute()

        def rank(item: tuple[tuple[Node, dict[str, Any]], set[str]]) -> tuple[int, int, bool, str]:
            (node, data), recent = item
            classes = set(map(str, data.get("classes", []))) | recent
            return len(classes), int(data.get("students", 0)), node.id != self.me.id, node.id

        return min(zip(live, placed), key=rank)[0][0]

    async def _beat(self) -> None:
        load = self._load()
        entry = json.dumps({"id": self.me.id, "url": self.me.url, "pid": self.me.pid,
                            "classes": sorted(load.classes), "students": load.students})
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(self._key("node", self.me.id), entry, px=int(NODE_TTL_S * 1000))
            pipe.sadd(self._key("nodes"), self.me.id)
            await pipe.execute()
        fresh = await self._up(keys=[self._key("up"), self._key("settling")],
                               args=[int(SETTLE_S * 1000)])
        if fresh:  # Redis came up empty: every live node must re-claim before anything is placed
            log.warning("cluster registry empty: placing nothing for %.0f s", SETTLE_S)
        for class_id in load.classes:
            kept = await self._keep(keys=[self._key("class", class_id)],
                                    args=[self.me.id, int(CLAIM_TTL_S * 1000)])
            if not kept:  # two rooms of one class: only after a partition; the claim's node wins
                log.error("class held here is claimed by another node",
                          extra={"class_id": class_id, "node": self.me.id})

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                await self._beat()
            except REDIS_ERRORS as exc:
                self._outage(exc)
                continue
            if self._down_since is not None:
                log.warning("redis back; node registered again",
                            extra={"down_s": round(time.monotonic() - self._down_since, 1)})
                self._down_since = None

    def _outage(self, exc: Exception) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.error("redis not answering; lessons here go on",
                      extra={"error": type(exc).__name__, "node": self.me.id})
