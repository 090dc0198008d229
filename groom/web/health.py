"""``GET /healthz``: is this process fit to serve? For load balancers, systemd watchdogs, uptime
checks.

Three checks, each cheap: the database answers ``SELECT 1`` within ``DB_TIMEOUT_S``; the disk of
the data folder has at least ``settings.health_min_free_mb`` free (recordings and slides are
written there); the job worker (post-processing, ``jobs.py``) is running and its loop went round
recently, or it is busy with a job. 200 ``{"status": "ok", "checks": {...}}`` when all pass, else
503 ``{"status": "fail", "checks": {...}}`` with each failing check's ``error``.

No login and no CSRF (it is a GET that changes nothing): the answer reveals nothing sensitive
(no paths, no versions, no names), only figures and which check failed.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from typing import Any, Optional

from aiohttp import web
from sqlalchemy import text

from .plumbing import ENGINE, SETTINGS

DB_TIMEOUT_S = 2.0
MB = 1024 * 1024


async def check_database(app: web.Application) -> dict[str, Any]:
    started = time.monotonic()
    try:
        async with asyncio.timeout(DB_TIMEOUT_S):
            async with app[ENGINE].connect() as conn:
                await conn.execute(text("SELECT 1"))
    except TimeoutError:
        return {"ok": False, "error": f"no answer within {DB_TIMEOUT_S:g} s"}
    except Exception as exc:  # noqa: BLE001  the kind of failure is enough; no connection string
        return {"ok": False, "error": type(exc).__name__}
    return {"ok": True, "ms": round((time.monotonic() - started) * 1000, 1)}


def free_bytes(app: web.Application) -> int:
    return shutil.disk_usage(app[SETTINGS].data_dir).free


def check_disk(app: web.Application) -> dict[str, Any]:
    minimum = app[SETTINGS].health_min_free_mb
    try:
        free_mb = free_bytes(app) // MB
    except OSError as exc:
        return {"ok": False, "error": exc.strerror or type(exc).__name__}
    result: dict[str, Any] = {"ok": free_mb >= minimum, "free_mb": free_mb, "min_free_mb": minimum}
    if not result["ok"]:
        result["error"] = f"{free_mb} MiB free, below {minimum} MiB"
    return result


def check_jobs(app: web.Application) -> dict[str, Any]:
    from .live_pages import JOBS  # live imports the whole room machinery; health stays light to import

    worker = app.get(JOBS)
    if worker is None or not worker.alive:
        return {"ok": False, "error": "job worker not running"}
    now = asyncio.get_running_loop().time()
    if worker.busy_since is not None:
        return {"ok": True, "busy_s": round(now - worker.busy_since, 1)}
    age = now - worker.heartbeat if worker.heartbeat is not None else 0.0
    stale_after = max(3 * worker.poll_interval, 30.0)
    result: dict[str, Any] = {"ok": age <= stale_after, "idle_s": round(age, 1)}
    if not result["ok"]:
        result["error"] = f"job worker loop stuck for {age:.0f} s"
    return result


async def check_workers(app: web.Application) -> Optional[dict[str, Any]]:
    """Under ``--workers N`` or in a cluster: the processes the registry knows live, and which
    one answers. Failing only when the supervisor does not answer (this worker cannot place a
    new lesson); a sibling restarting is not this worker's illness. Redis away is reported but
    not failed: every node would fail at once, and a proxy that takes them all out would cut
    the lessons in progress off from their own node."""
    from .relay import PLACEMENT  # as for JOBS: the room machinery stays out of this import

    placement = app[PLACEMENT]
    if placement.solo:
        return None
    try:
        async with asyncio.timeout(DB_TIMEOUT_S):
            nodes = await placement.nodes()
    except LookupError:  # Redis away: the lessons here go on, and so should the traffic here
        return {"ok": True, "this": placement.me.id, "live": None,
                "degraded": "cluster registry (Redis) not answering: new lessons wait for it"}
    except Exception as exc:  # noqa: BLE001  the kind of failure is enough
        return {"ok": False, "error": f"supervisor not answering ({type(exc).__name__})"}
    return {"ok": True, "this": placement.me.id, "live": [n.id for n in nodes]}


async def healthz(request: web.Request) -> web.Response:
    app = request.app
    checks = {"database": await check_database(app), "disk": check_disk(app),
              "jobs": check_jobs(app)}
    workers = await check_workers(app)
    if workers is not None:
        checks["workers"] = workers
    ok = all(c["ok"] for c in checks.values())
    return web.json_response({"status": "ok" if ok else "fail", "checks": checks},
                             status=200 if ok else 503, headers={"Cache-Control": "no-store"})
