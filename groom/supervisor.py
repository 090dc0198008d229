"""``groom serve --workers N``: a supervisor process and N worker processes on one port.

One event loop uses one core, and a live room cannot be split across processes (its mixer,
encoders and recorder share every 20 ms frame), so a machine's cores are used by running N
whole servers side by side: the workers. Each listens on the public port with ``SO_REUSEPORT``
(the kernel spreads new connections across them) and on a private loopback port of its own,
where the others relay what belongs to its rooms (``web/relay.py``).

The supervisor serves no request. It
- is started after ``cli.py`` has done, once, what must not run N times: migrations, ending the
  lessons a crash left live, repairing the recordings it left open, requeueing its jobs, the
  demo school, the self-signed certificate, and choosing the port when ``--port 0``;
- keeps the placement registry (``live.placement.PlacementTable``) on a loopback port: which
  worker runs which class, and each worker's load (one event loop, so every claim is atomic);
- starts the workers (``python -m groom <the same arguments> --port P``, with the registry's URL
  and a worker id in the environment), and starts a worker again when it exits (after a pause
  that grows while it keeps dying at once); its classes are freed at once, so their people are
  placed on a live worker when they reconnect; a worker that stops heartbeating for
  ``HUNG_S`` while its process runs (a stuck event loop) is killed and started again;
- on SIGINT/SIGTERM, sends SIGTERM to every worker (each ends its lessons cleanly: attendance
  saved, recordings closed and queued) and waits for them.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Optional

from aiohttp import web

from groom.core.node import SUPERVISOR_ENV, WORKER_ENV
from groom.live.placement import TOKEN_HEADER, Load, Node, PlacementTable

log = logging.getLogger("groom.supervisor")

HUNG_S = 15.0  # a worker whose heartbeats stop this long while its process runs is hung: killed
STOP_TIMEOUT_S = 60.0  # a worker ends its lessons (recordings closed) within this, or is killed
QUICK_EXIT_S = 10.0  # a worker that exits sooner than this after its start is crash-looping
MAX_BACKOFF_S = 30.0


@dataclass
class _Worker:
    id: str
    proc: Optional[asyncio.subprocess.Process] = None
    started: float = 0.0
    backoff: float = 0.5
    last_beat: Optional[float] = None  # None until its first heartbeat (a start may be slow)


class Supervisor:
    def __init__(self, count: int, argv: list[str], port: int, token: str,
                 on_ready: Callable[[], None] = lambda: None) -> None:
        """``on_ready`` runs once, when every worker serves for the first time (the demo's
        links are printed then, so whoever reads them can use them at once)."""
        self.count = count
        self._on_ready: Optional[Callable[[], None]] = on_ready
        self.argv = argv
        self.port = port
        self.token = token
        self.table = PlacementTable()
        self.workers = [_Worker(f"w{i}") for i in range(count)]
        self.stopping = asyncio.Event()
        self._registry_url = ""

    # --- the registry, for the workers ----------------------------------------------------

    def registry_app(self) -> web.Application:
        app = web.Application(middlewares=[self._only_workers])
        app.router.add_post("/heartbeat", self._heartbeat)
        app.router.add_post("/leave", self._leave)
        app.router.add_post("/place", self._place)
        app.router.add_get("/owner/{class_id}", self._owner)
        app.router.add_get("/nodes", self._nodes)
        return app

    @web.middleware
    async def _only_workers(self, request: web.Request,
                            handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                            ) -> web.StreamResponse:
        given = request.headers.get(TOKEN_HEADER, "")
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return web.json_response({"error": "forbidden"}, status=403)
        return await handler(request)

    async def _heartbeat(self, request: web.Request) -> web.Response:
        body = await request.json()
        node = Node.from_json(body["node"])
        for worker in self.workers:
            if worker.id == node.id and worker.proc is not None and worker.proc.pid == node.pid:
                worker.last_beat = time.monotonic()
        first = not self.table.has(node.id)
        self.table.heartbeat(node, Load(frozenset(int(c) for c in body.get("classes", [])),
                                        int(body.get("students", 0))))
        if first:
            log.info("worker ready", extra={"worker": node.id, "pid": node.pid,
                                            "private_url": node.url})
            if self._on_ready is not None and len(self.table.describe()) == self.count:
                self._on_ready()
                self._on_ready = None
        return web.json_response({})

    async def _leave(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.table.drop(str(body["node"]))
        return web.json_response({})

    async def _place(self, request: web.Request) -> web.Response:
        body = await request.json()
        try:
            node = self.table.place(int(body["class_id"]), str(body.get("node", "")))
        except LookupError:
            return web.json_response({"error": "no live worker"}, status=503)
        return web.json_response(node.__dict__)

    async def _owner(self, request: web.Request) -> web.Response:
        node = self.table.owner(int(request.match_info["class_id"]))
        return web.json_response(node.__dict__ if node else None)

    async def _nodes(self, request: web.Request) -> web.Response:
        return web.json_response(self.table.describe())

    # --- the workers ----------------------------------------------------------------------

    async def _spawn(self, worker: _Worker) -> None:
        env = {**os.environ, SUPERVISOR_ENV: self._registry_url, WORKER_ENV: worker.id}
        worker.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "groom", *self.argv, "--port", str(self.port), env=env)
        worker.started = time.monotonic()
        log.info("worker started", extra={"worker": worker.id, "pid": worker.proc.pid})

    async def _keep(self, worker: _Worker) -> None:
        """Run this worker until the supervisor stops, starting it again whenever it exits."""
        while not self.stopping.is_set():
            worker.last_beat = None
            await self._spawn(worker)
            assert worker.proc is not None
            code = await self._wait_or_kill_hung(worker, worker.proc)
            freed = self.table.drop(worker.id)
            if self.stopping.is_set():
                return
            lived = time.monotonic() - worker.started
            worker.backoff = min(worker.backoff * 2, MAX_BACKOFF_S) if lived < QUICK_EXIT_S else 0.5
            log.error("worker exited; starting it again", extra={
                "worker": worker.id, "pid": worker.proc.pid, "code": code,
                "classes_freed": len(freed), "restart_in_s": worker.backoff})
            try:
                await asyncio.wait_for(self.stopping.wait(), worker.backoff)
            except asyncio.TimeoutError:
                pass

    async def _wait_or_kill_hung(self, worker: _Worker, proc: asyncio.subprocess.Process) -> int:
        """The worker's exit code. A worker whose event loop stopped (an endless loop, a
        deadlock, SIGSTOP) still holds its share of the port: the kernel keeps handing it new
        connections that nobody answers. Its heartbeats stop, so it is killed and started again
        like a worker that crashed (its lessons' people reconnect to a live worker)."""
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(proc.wait()), HUNG_S / 3)
            except asyncio.TimeoutError:
                pass
            if worker.last_beat is not None and time.monotonic() - worker.last_beat > HUNG_S \
                    and not self.stopping.is_set():
                log.error("worker hung (no heartbeat); killing it", extra={
                    "worker": worker.id, "pid": proc.pid,
                    "silent_s": round(time.monotonic() - worker.last_beat, 1)})
                proc.kill()
                return await proc.wait()

    async def _stop_workers(self) -> None:
        running = [w.proc for w in self.workers if w.proc is not None and w.proc.returncode is None]
        for proc in running:
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        waits = [asyncio.ensure_future(proc.wait()) for proc in running]
        if not waits:
            return
        _, late = await asyncio.wait(waits, timeout=STOP_TIMEOUT_S)
        for proc in running:
            if proc.returncode is None:
                log.error("worker did not stop; killing it", extra={"pid": proc.pid})
                proc.kill()
        if late:
            await asyncio.wait(late, timeout=5)

    async def run(self) -> None:
        runner = web.AppRunner(self.registry_app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._registry_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        log.info("supervisor started", extra={"workers": self.count, "port": self.port,
                                              "pid": os.getpid()})
        keepers = [asyncio.create_task(self._keep(w), name=f"keep-{w.id}") for w in self.workers]
        try:
            await self.stopping.wait()
            log.info("stopping workers")
            await self._stop_workers()
        finally:
            for keeper in keepers:
                keeper.cancel()
            await asyncio.gather(*keepers, return_exceptions=True)
            await runner.cleanup()
