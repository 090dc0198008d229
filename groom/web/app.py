"""The app factory: it only wires settings, database, templates and routes together.

Each long-lived resource (database engine, live rooms, the job worker) is one ``cleanup_ctx``
entry, so it is started before the first request and stopped, in reverse order, on shutdown.
"""

from __future__ import annotations

import gc
import os
from typing import AsyncIterator, Optional

from aiohttp import web

from groom.core import db
from groom.core.auth import PASSWORDS, SessionCodec
from groom.core.config import WEB_DIR, Settings
from groom.core.i18n import load_catalogs
from groom.live.placement import Node, Placement, SoloPlacement

from . import proxy, relay
from .bbb_hooks import hooks_ctx
from .bbb_slides import slides_ctx
from .decks import imports_ctx
from .live_pages import close_rooms, rooms_ctx
from .plumbing import (
    CATALOGS,
    CODEC,
    ENGINE,
    JINJA,
    SESSIONS,
    SETTINGS,
    STATIC,
    body_limit,
    csrf,
    errors,
    make_jinja,
    request_context,
)
from .prometheus import metrics_ctx
from .routes import setup_routes
from .shared_limits import limits_ctx
from .shared_state import shared_state_ctx
from .static import StaticFiles


def create_app(settings: Settings, placement: Optional[Placement] = None) -> web.Application:
    """``placement``: where classes' rooms run (``live/placement.py``); by default this one
    process runs them all."""
    settings.prepare()
    proxy.parse_networks(settings.trusted_proxies)  # a wrong entry stops the start, not a request
    # relay.relayed, then proxy.forwarded first: every later middleware and handler sees the
    # real client and scheme (a request another worker relayed names them itself).
    # body_limit before csrf: the CSRF check may read a form, within the route's body limit.
    app = web.Application(middlewares=[relay.relayed, proxy.forwarded, request_context, errors,
                                       body_limit, csrf],
                          client_max_size=settings.max_body_kb * 1024)
    app[SETTINGS] = settings
    app[relay.PLACEMENT] = placement or SoloPlacement(Node("", "", os.getpid()))
    if not app[relay.PLACEMENT].solo:
        app.on_response_prepare.append(relay.worker_header)
    app[CODEC] = SessionCodec(settings.secret)
    app[STATIC] = StaticFiles(WEB_DIR / "static")
    app[JINJA] = make_jinja(app[STATIC])
    app[CATALOGS] = load_catalogs()
    app.on_response_prepare.append(proxy.hsts)
    app.cleanup_ctx.append(_passwords)
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(relay.relay_ctx)  # the private port's client (other workers)
    app.cleanup_ctx.append(shared_state_ctx)  # the cluster's Redis (--redis-url), if any
    app.cleanup_ctx.append(limits_ctx)  # wrong join codes and logins: in memory or in Redis
    app.cleanup_ctx.append(imports_ctx)
    app.cleanup_ctx.append(rooms_ctx)
    app.cleanup_ctx.append(slides_ctx)  # the API's slides by URL (needs imports and rooms)
    app.cleanup_ctx.append(hooks_ctx)  # the API's webhooks (observes rooms and recordings)
    app.cleanup_ctx.append(metrics_ctx)  # /metrics registry and the event-loop lag probe
    app.on_shutdown.append(close_rooms)  # while the sockets are still open (see close_rooms)
    app.on_startup.append(_freeze_startup_objects)  # after every cleanup_ctx above has started
    setup_routes(app)
    return app


async def _freeze_startup_objects(app: web.Application) -> None:
    """Move what start-up made (modules, the database engine, the app) out of the collector's way.

    A full collection walks every tracked object and stops the event loop, and so every room's
    audio, meanwhile. Under 10 rooms of 30 a pass took ~87 ms over ~350k objects, about half of
    them made at start-up and alive until the end; frozen, they are left out and a pass takes
    ~55 ms. Objects made while lessons run are collected as before."""
    gc.collect()
    gc.freeze()


async def _passwords(app: web.Application) -> AsyncIterator[None]:
    """The password pool (argon2) of this server: its size from the settings, stopped at the end."""
    PASSWORDS.configure(app[SETTINGS].password_threads, app[SETTINGS].password_queue)
    yield
    PASSWORDS.shutdown()


async def _database(app: web.Application) -> AsyncIterator[None]:
    engine = db.make_engine(app[SETTINGS].resolved_database_url())
    await db.migrate(engine)
    app[ENGINE] = engine
    app[SESSIONS] = db.make_sessionmaker(engine)
    yield
    await engine.dispose()
