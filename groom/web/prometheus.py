"""``GET /metrics``: Prometheus figures of this process, read from live state when scraped.

Nothing here runs per packet: the rooms already count what they do (``StudentSender.packets_sent``,
``TierEncoder.packets``, the sampled ``metrics.Latency``...), and a ``Collector`` of the app's own
registry (not the global default one) reads those figures only when Prometheus asks. The one
background cost is the event-loop lag probe: a task sleeping 1 s and measuring how late it woke.

Counters survive the things they are read from: a student's sender and a room's encoders go
away when the student leaves or the lesson ends, so each scrape adds what every live object
gained since the last scrape (``_Deltas``, keyed weakly by object) to process-wide totals. What a
sender gained between the last scrape and its departure is not counted (at most one scrape
interval of one student's packets).

Server-added latency is a histogram built at scrape time from the samples ``Latency`` keeps
(1 packet in 8, the last 4096 per room): each scrape adds the samples taken since the previous
one. At 200 students on 60 ms packets a room takes ~420 samples/s, so scraping at least every
~10 s sees them all; a slower scrape still gives the right shape from a subset.

Access: with ``metrics_token`` set, ``Authorization: Bearer <token>`` (compared in constant time);
without one, loopback peers only (``request.remote``, which the trusted-proxy middleware sets to
the forwarded client when the request came through a trusted proxy), and never a request that a
proxy forwarded: nginx on the same host connects from loopback for everyone on the internet.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import shutil
import time
import weakref
from typing import Any, AsyncIterator, Iterable, Iterator, Optional

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from groom.core.errors import AppError
from groom.core.models import Job, JobState
from groom.core.tasks import cancel
from groom.live.latency import EVERY as LATENCY_EVERY
from groom.live.rooms import ROOMS

from . import relay
from .decks import IMPORTS
from .live_pages import JOBS
from .plumbing import SESSIONS, SETTINGS
from .relay import PLACEMENT

log = logging.getLogger("groom.web.prometheus")

LAG_INTERVAL_S = 1.0
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
JOBS_TIMEOUT_S = 2.0
FORWARDED_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")


class _Histogram:
    """Cumulative bucket counts, fed in the event loop, exposed by the collector."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.total += value

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        buckets, running = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts):
            running += count
            buckets.append((bound, running))
        return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=self.total)


class _Deltas:
    """A process-wide total made of per-object counters that may disappear (read at scrape)."""

    def __init__(self) -> None:
        self.total = 0
        self._seen: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()

    def add(self, obj: Any, value: int) -> None:
        last = self._seen.get(obj, 0)
        self.total += value - last if value >= last else value
        self._seen[obj] = value


class LoopLag:
    """How late a 1 s sleep wakes up: the time every callback of the loop waits, at worst."""

    def __init__(self, interval: float = LAG_INTERVAL_S) -> None:
        self.interval = interval
        self.last = 0.0
        self.histogram = _Histogram(LAG_BUCKETS)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(self.interval)
            self.last = max(loop.time() - started - self.interval, 0.0)
            self.histogram.observe(self.last)


class Metrics:
    """The app's registry and what its collector reads besides live objects."""

    def __init__(self, app: web.Application) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.lag = LoopLag()
        self.collector = RoomsCollector(app, self.lag)
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)  # CPU seconds, RSS, open fds (Linux /proc)

    async def refresh(self, app: web.Application) -> None:
        """What needs awaiting (the database) is fetched before the synchronous collect."""
        self.collector.jobs = await job_counts(app)


async def job_counts(app: web.Application) -> Optional[dict[str, int]]:
    try:
        async with asyncio.timeout(JOBS_TIMEOUT_S):
            async with app[SESSIONS]() as db:
                rows = (await db.execute(select(Job.state, func.count()).group_by(Job.state))).all()
    except Exception as exc:  # noqa: BLE001  a scrape never fails for the database's sake
        log.warning("metrics: job counts unavailable: %s", type(exc).__name__)
        return None
    counts = {state.value: 0 for state in JobState}
    for state, count in rows:
        counts[state.value if isinstance(state, JobState) else str(state)] = int(count)
    return counts


class RoomsCollector(Collector):
    def __init__(self, app: web.Application, lag: LoopLag) -> None:
        self.app = app
        self.lag = lag
        self.jobs: Optional[dict[str, int]] = None
        self.sent, self.dropped, self.wire = _Deltas(), _Deltas(), _Deltas()
        self.encoded: dict[str, _Deltas] = {}
        self.skipped = _Deltas()
        self.latency = _Histogram(LATENCY_BUCKETS)
        self._latency_seen: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()

    def collect(self) -> Iterable[Metric]:
        yield from self._rooms()
        yield from self._process()

    def _rooms(self) -> Iterator[Metric]:
        rooms = self.app.get(ROOMS)
        live = list(rooms.by_lesson.values()) if rooms is not None else []
        per_tier: dict[str, int] = {}
        joined = connected = teachers = backlog = recording_errors = listeners = 0
        recent: list[float] = []
        for room in live:
            teachers += bool(room.teacher and room.teacher.outbox)
            joined += len(room.students)
            for name, encoder in room.tiers.encoders.items():
                per_tier.setdefault(name, 0)
                self.encoded.setdefault(name, _Deltas()).add(encoder, encoder.packets)
            for p in list(room.students.values()):
                sender = p.sender
                if sender is None:
                    continue
                if sender.ready:
                    connected += 1
                tier = room.tiers.tier_of(sender)
                if tier is not None:
                    per_tier[tier] = per_tier.get(tier, 0) + 1
                self.sent.add(sender, sender.packets_sent)
                self.dropped.add(sender, sender.dropped)
                self.wire.add(sender, sender.wire_bytes)
            self.skipped.add(room.mixer, room.mixer.frames_skipped)
            recorder = room.recorder
            if recorder is not None:
                backlog += len(getattr(recorder, "_pending", ()))
                recording_errors += recorder.error is not None
            for stream in getattr(room, "_fallbacks", {}).values():
                listeners += getattr(stream, "listeners", 0)
            recent.extend(self._new_latency_samples(room.latency))

        yield _gauge("groom_rooms_live", "Live lessons (rooms) in this process.", len(live))
        yield _gauge("groom_teachers_present", "Live rooms whose teacher is connected.", teachers)
        yield _gauge("groom_students_joined", "Students in live rooms (connected or not).", joined)
        yield _gauge("groom_students_connected", "Students whose audio connection is up.", connected)
        tiers = GaugeMetricFamily("groom_students", "Students receiving audio, by tier.",
                                  labels=["tier"])
        for name, count in sorted(per_tier.items()):
            tiers.add_metric([name], count)
        yield tiers
        yield _gauge("groom_fallback_listeners", "Students on the HTTP (Ogg) fallback stream.",
                     listeners)
        yield _counter("groom_packets_sent", "Audio packets sent to students.", self.sent.total)
        yield _counter("groom_packets_dropped", "Audio packets dropped before a student's socket "
                       "(connection not ready or gone).", self.dropped.total)
        yield _counter("groom_wire_bytes", "Bytes of student audio on the wire (RTP, SRTP, UDP, "
                       "IP).", self.wire.total)
        encoded = CounterMetricFamily("groom_packets_encoded", "Packets encoded, by tier (once per "
                                      "tier, whatever the number of students).", labels=["tier"])
        for name, deltas in sorted(self.encoded.items()):
            encoded.add_metric([name], deltas.total)
        yield encoded
        yield _counter("groom_mixer_frames_skipped", "Mixer frames skipped because the loop was "
                       "late.", self.skipped.total)
        for value in recent:
            self.latency.observe(value)
        yield self.latency.family("groom_server_added_latency_seconds",
                                  "Delay the server adds: teacher audio in to student packet out "
                                  "(1 packet in 8, samples taken between scrapes).")
        yield _gauge("groom_recorder_backlog_packets", "Packets waiting for the recorders' next "
                     "write to disk.", backlog)
        yield _gauge("groom_recordings_failed", "Live rooms whose recording stopped on an error "
                     "(a full disk).", recording_errors)

    def _new_latency_samples(self, latency: Any) -> list[float]:
        samples = getattr(latency, "_samples", None)
        taken = getattr(latency, "_count", 0) // LATENCY_EVERY
        if samples is None:
            return []
        new = taken - self._latency_seen.get(latency, 0)
        self._latency_seen[latency] = taken
        new = min(max(new, 0), len(samples))
        return list(samples)[len(samples) - new:] if new else []

    def _process(self) -> Iterator[Metric]:
        yield _gauge("groom_event_loop_lag_last_seconds", "How late the last 1 s probe sleep "
                     "woke up.", self.lag.last)
        yield self.lag.histogram.family("groom_event_loop_lag_seconds",
                                        "How late 1 s probe sleeps wake up (every callback of the "
                                        "event loop waits about this long).")
        worker = self.app.get(JOBS)
        yield _gauge("groom_job_worker_up", "1 if the job worker (post-processing) is running.",
                     int(worker is not None and worker.alive))
        if self.jobs is not None:
            jobs = GaugeMetricFamily("groom_jobs", "Jobs in the database queue, by state "
                                     "(failed: gave up after its last attempt).", labels=["state"])
            for state, count in sorted(self.jobs.items()):
                jobs.add_metric([state], count)
            yield jobs
        imports = self.app.get(IMPORTS)
        yield _gauge("groom_deck_imports", "Slide deck conversions running or waiting.",
                     len(getattr(imports, "_tasks", ())) if imports is not None else 0)
        settings = self.app[SETTINGS]
        try:
            usage = shutil.disk_usage(settings.data_dir)
        except OSError:
            return
        yield _gauge("groom_data_disk_free_bytes", "Free space on the data folder's disk.",
                     usage.free)
        yield _gauge("groom_data_disk_size_bytes", "Size of the data folder's disk.", usage.total)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


METRICS = web.AppKey("metrics", Metrics)


async def metrics_ctx(app: web.Application) -> AsyncIterator[None]:
    """The registry and the event-loop lag probe, for the life of the app."""
    app[METRICS] = Metrics(app)
    task = asyncio.create_task(app[METRICS].lag.run(), name="event-loop-lag")
    yield
    await cancel(task)


async def _scrape(app: web.Application) -> bytes:
    state = app[METRICS]
    await state.refresh(app)
    return generate_latest(state.registry)


async def metrics_here(request: web.Request) -> web.Response:
    """``GET /_worker/metrics``: this worker's figures, for another worker's ``/metrics``."""
    relay.require_relayed(request)
    return web.Response(body=await _scrape(request.app), content_type="text/plain")


def merge_workers(texts: dict[str, str]) -> bytes:
    """Several workers' expositions as one: every sample gets a ``worker`` label, families of
    the same name are joined (Prometheus sums them with ``sum without (worker)``)."""
    families: dict[str, Metric] = {}
    for worker, text in sorted(texts.items()):
        for family in text_string_to_metric_families(text):
            merged = families.setdefault(family.name, Metric(family.name, family.documentation,
                                                             family.type, family.unit))
            merged.samples.extend(sample._replace(labels={**sample.labels, "worker": worker})
                                  for sample in family.samples)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(list(families.values())))
    return generate_latest(registry)


class _Fixed(Collector):
    """Families already read (from the workers' texts), exposed as they are."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


# --- the endpoint ---------------------------------------------------------------------------

def _is_loopback(remote: Optional[str]) -> bool:
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _refuse(error: AppError, **headers: str) -> web.Response:
    return web.json_response(error.to_json(), status=error.status, headers=headers)


def refusal(request: web.Request) -> Optional[web.Response]:
    """Why this request may not read the metrics, as a response; None when it may."""
    token = request.app[SETTINGS].metrics_token
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return None
        return _refuse(AppError("unauthorized", "A valid metrics token is required.", status=401),
                       **{"WWW-Authenticate": 'Bearer realm="metrics"'})
    # A reverse proxy on this host connects from loopback too: a request it forwarded (it says
    # so in a header) is someone else's, whatever ``request.remote`` is.
    if _is_loopback(request.remote) and not any(h in request.headers for h in FORWARDED_HEADERS):
        return None
    return _refuse(AppError("forbidden", "Metrics are served to this host only (or set a "
                            "metrics token).", status=403))


async def metrics(request: web.Request) -> web.Response:
    refused = refusal(request)
    if refused is not None:
        return refused
    started = time.monotonic()
    body = await _scrape(request.app)
    if not request.app[PLACEMENT].solo:  # every worker's figures, each labelled with its worker
        texts = {request.app[PLACEMENT].me.id: body.decode()}
        for node, answer in await relay.ask_others(request.app, "GET", "/_worker/metrics"):
            texts[node.id] = str(answer)
        body = merge_workers(texts)
    log.debug("metrics scraped", extra={"ms": round((time.monotonic() - started) * 1000, 2)})
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST,
                                            "Cache-Control": "no-store"})
