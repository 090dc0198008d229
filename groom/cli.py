"""The ``groom`` command: serve, demo, and admin accounts.

    groom serve [--host H --port P --data-dir D --database-url URL ...] [--demo] [--json]
    groom demo  [same flags] [--json]       (serve with a demo school; prints links and logins)
    groom admin create --username U [--password P] [--school ID]
    groom backup [--data-dir D] [--database-url URL] [-o FILE.tar.gz] [--pg-dump]
    groom restore FILE.tar.gz --data-dir EMPTY_DIR [--database-url URL]   (see groom/core/backup.py)

Every setting can also come from a ``GROOM_*`` environment variable (see ``docs/settings.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import signal
import socket
import ssl
import sys
from typing import Any, Optional

from aiohttp import web

from groom.core import backup, db, logs, node
from groom.core.config import SettingError, Settings, add_arguments, settings_from_args
from groom.core.errors import AppError
from groom.core.models import Role
from groom.core.redis_client import REDIS_ERRORS
from groom.live.placement import Node, Placement, RegistryPlacement
from groom.live.redis_placement import RedisPlacement
from groom.live.rooms import ROOMS, Rooms
from groom.office.users import create_user
from groom.recordings.jobs import requeue_host_jobs
from groom.recordings.postprocess import recover_recordings
from groom.supervisor import Supervisor
from groom.web.app import create_app
from groom.web.plumbing import SESSIONS
from groom.web.tls import ensure_self_signed

log = logging.getLogger("groom.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="groom", description="G-Room: a low-cost remote classroom (voice + slides).",
        epilog="Every setting is a flag of serve/demo or a GROOM_* environment variable "
               "(docs/settings.md). Try: groom demo   (then open the links it prints). "
               "groom <command> --help explains each command's flags.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="Run the server.",
                           description="Run the G-Room server (web pages, API, live rooms).")
    add_arguments(serve)
    serve.add_argument("--demo", action="store_true",
                       help="Create (or refresh) a demo school and print its links and logins.")
    serve.add_argument("--json", action="store_true",
                       help="With --demo: print the links and logins as one JSON line first.")

    demo = sub.add_parser("demo", help="Run the server with a demo school (same as serve --demo).",
                          description="Create or refresh a demo school with an admin, a teacher, "
                                      "a class with a roster and a lesson today, then serve.")
    add_arguments(demo)
    demo.add_argument("--json", action="store_true",
                      help="Print the links and logins as one JSON object on the first line.")

    admin = sub.add_parser("admin", help="Manage admin accounts.")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    create = admin_sub.add_parser("create", help="Create an admin account.",
                                  description="Create an admin of one school (--school) or of all.")
    add_arguments(create)
    create.add_argument("--username", required=True)
    create.add_argument("--password", help="Asked for when not given.")
    create.add_argument("--name", default="", help="Display name.")
    create.add_argument("--school", type=int, default=None,
                        help="School id; without it the admin manages every school.")
    backup.add_parsers(sub)
    return parser


def main(argv: Optional[list[str]] = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from_args(args)
    except SettingError as exc:
        parser.error(str(exc))
    logs.setup(settings.log_level)
    if args.command in ("backup", "restore"):
        sys.exit(backup.main(args.command, settings, args))
    if args.command == "admin":
        sys.exit(asyncio.run(_admin_create(settings, args)))
    demo = args.command == "demo" or getattr(args, "demo", False)
    as_json = getattr(args, "json", False)
    if node.supervisor_url():  # a worker of ``--workers N``: the supervisor did the demo
        asyncio.run(_serve(settings, demo=False, as_json=False))
    elif settings.worker_count > 1:
        asyncio.run(_supervise(settings, list(sys.argv[1:] if argv is None else argv),
                               demo=demo, as_json=as_json))
    else:
        asyncio.run(_serve(settings, demo=demo, as_json=as_json))


async def _admin_create(settings: Settings, args: argparse.Namespace) -> int:
    settings.prepare()
    password = args.password or getpass.getpass("Password: ")
    engine = db.make_engine(settings.resolved_database_url())
    try:
        await db.migrate(engine)
        async with db.make_sessionmaker(engine)() as session:
            try:
                user = await create_user(session, username=args.username, password=password,
                                         display_name=args.name, role=Role.admin,
                                         school_id=args.school)
            except AppError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            await session.commit()
            print(f"admin {user.username} created (id {user.id})")
            return 0
    finally:
        await engine.dispose()


def _ssl_context(settings: Settings) -> Optional[ssl.SSLContext]:
    if not settings.tls:
        return None
    cert, key = settings.tls_cert, settings.tls_key
    if settings.self_signed and not cert:
        cert, key = ensure_self_signed(settings.data_dir, settings.host)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key or None)
    return context


async def _supervise(settings: Settings, argv: list[str], *, demo: bool, as_json: bool) -> None:
    """``--workers N``: what must happen once, then the supervisor and its workers."""
    settings.prepare()  # the secret file, made once: every worker reads the same one
    ssl_context = _ssl_context(settings)  # a self-signed certificate, made once
    port = settings.port or _free_port(settings.host)  # every worker on the same port
    scheme = "https" if ssl_context else "http"
    base = settings.public_url.rstrip("/") or f"{scheme}://{settings.host}:{port}"
    engine = db.make_engine(settings.resolved_database_url())
    try:
        await db.migrate(engine)
        sessions = db.make_sessionmaker(engine)
        if not settings.redis_url:  # in a cluster, other nodes' lessons are live: the
            await Rooms(sessions, settings).end_orphans()  # janitor ends only those of gone nodes
            await recover_recordings(sessions, settings.data_dir)  # queued: a worker runs them
        await requeue_host_jobs(sessions)
        info: Optional[dict[str, Any]] = None
        if demo:
            from groom.office.demo import seed_demo

            info = await seed_demo(sessions, base)
    finally:
        await engine.dispose()
    await Supervisor(settings.worker_count, argv, port, node.relay_token(settings.secret),
                     on_ready=lambda: _print_demo(info, as_json) if info else None).run()


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


async def _serve(settings: Settings, *, demo: bool, as_json: bool) -> None:
    settings.prepare()
    placement, private = _placement(settings)
    watched: Optional[RegistryPlacement] = None
    if isinstance(placement, RedisPlacement) and node.supervisor_url():
        # A worker of a cluster node: its supervisor still watches it (hung, or the supervisor
        # gone) through the same heartbeats, though placement is Redis's.
        watched = RegistryPlacement(Node(node.worker_id(), placement.me.url, os.getpid()),
                                    node.supervisor_url(), node.relay_token(settings.secret))
    app = create_app(settings, placement)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5)
    await runner.setup()
    ssl_context = _ssl_context(settings)
    site = web.TCPSite(runner, settings.host, settings.port, ssl_context=ssl_context,
                       reuse_port=bool(node.supervisor_url()))
    await site.start()
    if private is not None:
        await web.SockSite(runner, private).start()
    port = runner.addresses[0][1]
    scheme = "https" if ssl_context else "http"
    base = settings.public_url.rstrip("/") or f"{scheme}://{settings.host}:{port}"
    log.info("listening", extra={"url": base, "port": port,
                                 **({"worker": placement.me.id} if placement else {})})
    if demo:
        from groom.office.demo import seed_demo

        info = await seed_demo(app[SESSIONS], base)
        _print_demo(info, as_json)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if placement is not None:  # from now on classes may be placed here
            try:
                await placement.start(app[ROOMS].load, stop.set)
                if watched is not None:
                    await watched.start(app[ROOMS].load, stop.set)
            except REDIS_ERRORS + (RuntimeError,) as exc:
                log.error("cannot join the cluster: %s", exc)
                raise SystemExit(f"groom: cannot join the cluster: {exc}") from None
        await stop.wait()
        log.info("stopping")
    finally:
        if watched is not None:
            await watched.stop()
        if placement is not None:
            await placement.stop()
        await runner.cleanup()


def _placement(settings: Settings) -> tuple[Optional[Placement], Optional[socket.socket]]:
    """Where this process learns which process runs a class: nowhere (one process), its
    supervisor (a worker of ``--workers N``) or Redis (a node of a cluster); and the private
    port where the others relay to the rooms it runs."""
    registry = node.supervisor_url()
    if not registry and not settings.redis_url:
        return None, None
    address = settings.node_address if settings.redis_url else "127.0.0.1"
    private = socket.create_server((address, 0), family=socket.AF_INET6 if ":" in address
                                   else socket.AF_INET)
    host = f"[{address}]" if ":" in address else address
    url = f"http://{host}:{private.getsockname()[1]}"
    if settings.redis_url:
        name = settings.node_id or node.machine()
        me = Node(f"{name}/{node.worker_id()}" if node.worker_id() else name, url, os.getpid())
        return RedisPlacement(me, settings.redis_url, settings.redis_prefix), private
    me = Node(node.worker_id(), url, os.getpid())
    return RegistryPlacement(me, registry, node.relay_token(settings.secret)), private


def _print_demo(info: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(info, ensure_ascii=False), flush=True)
        return
    admin, teacher = info["admin_login"], info["teacher_login"]
    print(f"""
G-Room demo is running.
  Admin:    {info['admin_url']}   login {admin['username']} / {admin['password']}
  Teacher:  {info['teacher_url']}   login {teacher['username']} / {teacher['password']}
  Student:  {info['student_url']}   (class code {info['class_code']}, no account needed)
Press Ctrl+C to stop.
""", flush=True)


if __name__ == "__main__":
    main()
