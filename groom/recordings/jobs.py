"""A job queue kept in the database, run one job at a time by an app-owned worker.

Why the database and not an ``asyncio.Queue``: post-processing must survive a crash or restart
(Kolibri's lesson), and several processes sharing PostgreSQL must not run the same job twice.
A job is claimed with ``UPDATE ... WHERE id = :id AND state = 'queued'``; only the process whose
UPDATE changed a row runs it. A failed attempt is retried after an exponential backoff until
``max_attempts``; then the job is ``failed`` with its last error kept.

Handlers are coroutines ``handler(job)``; heavy work inside them (ffmpeg) runs as a ``nice``
subprocess or in a thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any, Awaitable, Callable, Mapping, Optional

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from groom.core.models import Job, JobState, utcnow
from groom.core.node import machine, node_name
from groom.core.tasks import cancel

log = logging.getLogger(__name__)

Handler = Callable[[Job], Awaitable[None]]


class RetryLater(Exception):
    """Raised by a handler whose attempt failed and which knows how long to wait before the
    next one (a webhook's own backoff) instead of the worker's."""

    def __init__(self, message: str, delay_s: float) -> None:
        super().__init__(message)
        self.delay_s = delay_s


async def enqueue(session: AsyncSession, kind: str, lesson_id: Optional[int] = None, *,
                  max_attempts: int = 3, payload: Optional[dict[str, Any]] = None) -> Job:
    """Add a job in the caller's transaction (commit it, then ``JobWorker.wake()``)."""
    job = Job(kind=kind, lesson_id=lesson_id, state=JobState.queued, attempts=0,
              max_attempts=max_attempts, run_after=utcnow(), payload=payload)
    session.add(job)
    await session.flush()
    return job


async def requeue_host_jobs(session_maker: async_sessionmaker[AsyncSession]) -> int:
    """Jobs this machine had running when it stopped, whichever of its processes ran them:
    queued again. Only at the start of ``groom serve --workers N``, before any worker runs (a
    worker that restarts requeues its own, ``JobWorker.requeue_interrupted``)."""
    host = machine()
    async with session_maker.begin() as session:
        result = await session.execute(
            update(Job).where(Job.state == JobState.running)
            .where((Job.worker == host) | Job.worker.startswith(host + ":", autoescape=True))
            .values(state=JobState.queued, run_after=utcnow()))
    count: int = result.rowcount or 0  # type: ignore[attr-defined]
    return count


class JobWorker:
    """Runs queued jobs one at a time, so post-processing never competes with itself for CPU.

    A worker claims only the kinds it has handlers for, so a second worker with other kinds
    (the API's webhooks: quick, and not to wait behind a video) shares the same table."""

    def __init__(self, session_maker: async_sessionmaker[AsyncSession],
                 handlers: Mapping[str, Handler], *, name: Optional[str] = None,
                 poll_interval: float = 5.0, backoff_s: float = 30.0,
                 stale_after: dt.timedelta = dt.timedelta(hours=6)) -> None:
        """``name`` identifies this process in ``Job.worker`` (default: the host name, plus the
        worker id under ``groom serve --workers N``); jobs it had running when it died are
        requeued at start. Jobs of other workers are requeued only once ``stale_after`` has
        passed, as their owner may still be working on them."""
        self.session_maker = session_maker
        self.handlers = dict(handlers)
        self.name = name or node_name()
        self.poll_interval = poll_interval
        self.backoff_s = backoff_s
        self.stale_after = stale_after
        self._wake = asyncio.Event()
        self._task: Optional[asyncio.Task[None]] = None
        self.heartbeat: Optional[float] = None  # loop.time() the loop last went round
        self.busy_since: Optional[float] = None  # loop.time() the running job started

    @property
    def alive(self) -> bool:
        """The worker's loop is running (started, not stopped, not crashed)."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        await self.requeue_interrupted()
        self._task = asyncio.create_task(self._run(), name=f"jobs {self.name}")

    async def stop(self) -> None:
        """Cancel the loop; a job cut short stays ``running`` and is requeued at next start."""
        await cancel(self._task)
        self._task = None

    def wake(self) -> None:
        """Look for work now rather than at the next poll (call after enqueueing)."""
        self._wake.set()

    async def requeue_interrupted(self) -> int:
        async with self.session_maker.begin() as session:
            result = await session.execute(
                update(Job)
                .where(Job.state == JobState.running, Job.kind.in_(list(self.handlers)))
                .where((Job.worker == self.name) | (Job.started_at < utcnow() - self.stale_after))
                .values(state=JobState.queued, run_after=utcnow()))
        count = result.rowcount or 0  # type: ignore[attr-defined]
        if count:
            log.warning("requeued %d interrupted job(s)", count)
        return count

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.heartbeat = loop.time()
            try:
                ran = await self.run_one()
            except asyncio.CancelledError:
                raise
            except Exception:  # a database hiccup must not kill the worker
                log.exception("job worker error")
                ran = False
            if not ran:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval)
                except asyncio.TimeoutError:
                    pass

    async def claim(self) -> Optional[Job]:
        """Take the oldest due job, or None. Safe against other processes doing the same."""
        while True:
            async with self.session_maker.begin() as session:
                job_id = await session.scalar(
                    select(Job.id).where(Job.state == JobState.queued, Job.run_after <= utcnow(),
                                         Job.kind.in_(list(self.handlers)))
                    .order_by(Job.run_after, Job.id).limit(1))
                if job_id is None:
                    return None
                result = await session.execute(
                    update(Job).where(Job.id == job_id, Job.state == JobState.queued)
                    .values(state=JobState.running, attempts=Job.attempts + 1,
                            worker=self.name, started_at=utcnow()))
                if result.rowcount != 1:  # type: ignore[attr-defined]
                    continue  # another process got it first
                return await session.get(Job, job_id)

    async def run_one(self) -> bool:
        """Claim and run one job; returns False when there was nothing to do."""
        job = await self.claim()
        if job is None:
            return False
        handler = self.handlers[job.kind]  # claimed only among the kinds it has
        error: Optional[str] = None
        delay: Optional[float] = None
        self.busy_since = asyncio.get_running_loop().time()
        try:
            log.info("job %d (%s, lesson %s) attempt %d", job.id, job.kind, job.lesson_id,
                     job.attempts)
            await handler(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[-4000:]
            delay = exc.delay_s if isinstance(exc, RetryLater) else None
            log.warning("job %d (%s) failed: %s", job.id, job.kind, error)
        finally:
            self.busy_since = None
        await self._finish(job, error, delay)
        return True

    async def _finish(self, job: Job, error: Optional[str], delay: Optional[float] = None) -> None:
        async with self.session_maker.begin() as session:
            values: dict[str, object] = {"error": error, "finished_at": utcnow()}
            if error is None:
                values["state"] = JobState.done
            elif job.attempts >= job.max_attempts:
                values["state"] = JobState.failed
            else:
                if delay is None:
                    delay = self.backoff_s * 2 ** (job.attempts - 1)
                values.update(state=JobState.queued, finished_at=None,
                              run_after=utcnow() + dt.timedelta(seconds=delay))
            await session.execute(update(Job).where(Job.id == job.id).values(**values))
