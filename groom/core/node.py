"""Which process this is: the machine, and the worker under ``groom serve --workers N``.

The supervisor (``groom/supervisor.py``) starts each worker with two environment variables: the
URL of its placement registry and the worker's id (``w0``, ``w1``, ...). They are not settings
(a person never sets them); a process without them is the single process of ``--workers 1``.

The worker id is part of this process's name in the job queue (``node_name``), so a worker that
restarts requeues the jobs *it* had running, never those its siblings are running now.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket

SUPERVISOR_ENV = "GROOM_SUPERVISOR_URL"
WORKER_ENV = "GROOM_WORKER_ID"


def supervisor_url() -> str:
    """The supervisor's registry URL when this process is one of its workers, else ``""``."""
    return os.environ.get(SUPERVISOR_ENV, "")


def worker_id() -> str:
    return os.environ.get(WORKER_ENV, "")


def machine() -> str:
    return socket.gethostname()


def node_name() -> str:
    """This process in the job queue: the host name, plus the worker id under a supervisor."""
    worker = worker_id()
    return f"{machine()}:{worker}" if worker else machine()


def relay_token(secret: str) -> str:
    """The token workers of one server show each other (and their supervisor) on loopback.

    Derived from the server's secret, which every worker reads from the same settings or data
    folder, so nothing new has to be handed out; whoever has the secret can sign session
    cookies anyway, so this grants nothing more."""
    return hmac.new(secret.encode(), b"groom worker relay", hashlib.sha256).hexdigest()
