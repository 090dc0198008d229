"""Placement: which process (node) runs the live room of a class.

A live lesson is one room in one process (its mixer, encoders and recorder cannot be split).
When several processes serve (``groom serve --workers N``; later several machines), every one of
them must agree where a class's room is, so that the teacher and every student of the class
reach the same room whichever process their connection landed on. The key is the *class*, not
the lesson: students who come before the teacher wait where the lesson will open, and a class
has at most one live lesson at a time.

``Placement`` is the seam: the web layer asks it ``place(class_id)`` (the owner, or a new
owner chosen now) and ``nodes()`` (every live node, for views of all rooms), and relays to the
owner's private URL what it cannot serve itself. Implementations:

- ``SoloPlacement``: one process (``--workers 1``); every class is here.
- ``RegistryPlacement``: a worker of ``groom serve --workers N``, asking its supervisor's
  ``PlacementTable`` over loopback HTTP and telling it, every second, what it holds.
- ``redis_placement.RedisPlacement``: a node of a cluster of machines (``--redis-url``): a
  node registry with heartbeats that expire, and ``SET NX`` for the claim.

The table keeps a placement while its node holds the class (a room, a room still closing, or
students waiting) or for ``PLACEMENT_GRACE_S`` after it was made (the teacher's ``hello`` is on
its way); a node's placements go when its process exits, so the class is placed again, on a
live node, at the next join.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, Protocol

import aiohttp

from groom.core.tasks import cancel

log = logging.getLogger("groom.live.placement")

PLACEMENT_GRACE_S = 15.0  # a fresh placement is kept this long before its node must hold it
HEARTBEAT_S = 1.0
REGISTRY_LOST_S = 10.0  # a worker whose supervisor stopped answering this long stops too
TOKEN_HEADER = "X-Groom-Relay"


@dataclass(frozen=True)
class Node:
    """One serving process: its id (``w0``...), its private base URL (loopback), its pid."""

    id: str
    url: str
    pid: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Node":
        return cls(id=str(data["id"]), url=str(data["url"]), pid=int(data["pid"]))


@dataclass(frozen=True)
class Load:
    """What a node reports with each heartbeat: the classes it holds and its students."""

    classes: frozenset[int] = frozenset()
    students: int = 0


class Placement(Protocol):
    me: Node

    @property
    def solo(self) -> bool:
        """True for a single process: nothing to relay, and start-up repairs are its own."""

    async def place(self, class_id: int) -> Node:
        """The node that runs this class's room: its current owner, or one chosen now."""

    async def owner(self, class_id: int) -> Optional[Node]:
        """The class's current owner, without placing it (None: nowhere yet)."""

    async def nodes(self) -> list[Node]:
        """Every live node, this one included."""

    async def start(self, load: Callable[[], Load], lost: Callable[[], None]) -> None:
        """Join the registry (the node serves from now on); ``lost`` is called when the
        registry is gone for good (the node should stop)."""

    async def stop(self) -> None:
        """Leave: no new class is placed here."""


class SoloPlacement:
    """``--workers 1``: the one process owns every class."""

    def __init__(self, me: Node) -> None:
        self.me = me

    @property
    def solo(self) -> bool:
        return True

    async def place(self, class_id: int) -> Node:
        return self.me

    async def owner(self, class_id: int) -> Optional[Node]:
        return self.me

    async def nodes(self) -> list[Node]:
        return [self.me]

    async def start(self, load: Callable[[], Load], lost: Callable[[], None]) -> None:
        return None

    async def stop(self) -> None:
        return None


@dataclass
class _NodeState:
    node: Node
    load: Load = field(default_factory=Load)


class PlacementTable:
    """The registry of one machine, kept by the supervisor (one event loop: every call is
    atomic). Least loaded = fewest classes placed on it, then fewest students, then the node
    that asks (a tie keeps the connection where it landed: no relay)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._nodes: dict[str, _NodeState] = {}
        self._owners: dict[int, tuple[str, float]] = {}  # class -> (node id, placed at)

    def heartbeat(self, node: Node, load: Load) -> None:
        self._nodes[node.id] = _NodeState(node, load)
        now = self._clock()
        for class_id, (owner, placed) in list(self._owners.items()):
            if owner == node.id and class_id not in load.classes and now - placed > PLACEMENT_GRACE_S:
                del self._owners[class_id]
        for class_id in load.classes:  # a node holding a class it was not given (a restart of
            self._owners.setdefault(class_id, (node.id, now))  # the table) keeps it

    def drop(self, node_id: str) -> list[int]:
        """The node's process is gone: forget it and free its classes (returned)."""
        self._nodes.pop(node_id, None)
        freed = [c for c, (owner, _) in self._owners.items() if owner == node_id]
        for class_id in freed:
            del self._owners[class_id]
        return freed

    def owner(self, class_id: int) -> Optional[Node]:
        found = self._owners.get(class_id)
        state = self._nodes.get(found[0]) if found else None
        return state.node if state else None

    def place(self, class_id: int, asking: str) -> Node:
        current = self.owner(class_id)
        if current is not None:
            return current
        if not self._nodes:
            raise LookupError("no live node")
        placed: dict[str, int] = {}
        for owner, _ in self._owners.values():
            placed[owner] = placed.get(owner, 0) + 1
        best = min(self._nodes.values(), key=lambda s: (
            placed.get(s.node.id, 0), s.load.students, s.node.id != asking, s.node.id))
        self._owners[class_id] = (best.node.id, self._clock())
        log.info("class placed", extra={"class_id": class_id, "node": best.node.id})
        return best.node

    def has(self, node_id: str) -> bool:
        return node_id in self._nodes

    def describe(self) -> list[dict[str, Any]]:
        """Each node with what it holds, for the supervisor's view and the bench."""
        placed: dict[str, int] = {}
        for owner, _ in self._owners.values():
            placed[owner] = placed.get(owner, 0) + 1
        return [{**asdict(s.node), "classes": placed.get(s.node.id, 0),
                 "students": s.load.students}
                for s in sorted(self._nodes.values(), key=lambda s: s.node.id)]


class RegistryPlacement:
    """A worker's view of its supervisor's ``PlacementTable``, over loopback HTTP."""

    def __init__(self, me: Node, registry_url: str, token: str) -> None:
        self.me = me
        self._url = registry_url.rstrip("/")
        self._headers = {TOKEN_HEADER: token}
        self._http: Optional[aiohttp.ClientSession] = None
        self._task: Optional[asyncio.Task[None]] = None

    @property
    def solo(self) -> bool:
        return False

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(headers=self._headers,
                                               timeout=aiohttp.ClientTimeout(total=5))
        return self._http

    async def _call(self, method: str, path: str, body: Optional[dict[str, Any]] = None) -> Any:
        async with self._session().request(method, self._url + path, json=body) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def place(self, class_id: int) -> Node:
        return Node.from_json(await self._call("POST", "/place", {"class_id": class_id,
                                                                  "node": self.me.id}))

    async def owner(self, class_id: int) -> Optional[Node]:
        found = await self._call("GET", f"/owner/{class_id}")
        return Node.from_json(found) if found else None

    async def nodes(self) -> list[Node]:
        return [Node.from_json(n) for n in await self._call("GET", "/nodes")]

    async def _beat(self, load: Load) -> None:
        await self._call("POST", "/heartbeat", {"node": asdict(self.me),
                                                "classes": sorted(load.classes),
                                                "students": load.students})

    async def start(self, load: Callable[[], Load], lost: Callable[[], None]) -> None:
        await self._beat(load())  # the first one before serving: a failure stops the start
        self._task = asyncio.create_task(self._heartbeats(load, lost), name="placement-heartbeat")

    async def _heartbeats(self, load: Callable[[], Load], lost: Callable[[], None]) -> None:
        last_ok = time.monotonic()
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                await self._beat(load())
                last_ok = time.monotonic()
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                if time.monotonic() - last_ok > REGISTRY_LOST_S:
                    log.error("supervisor gone; stopping", extra={"error": type(exc).__name__})
                    lost()
                    return

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
        try:
            await self._call("POST", "/leave", {"node": self.me.id})
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass  # the supervisor is stopping too
        if self._http is not None:
            await self._http.close()
            self._http = None
