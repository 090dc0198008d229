"""ICE consent freshness (RFC 7675) that survives a slow link.

aioice 0.13's ``Connection.query_consent`` sends one STUN check every ~5 s with no
retransmission and a 0.5 s timeout, and closes the connection after 6 failures in a row. A 2G
student whose round trip stays above 0.5 s for ~30 s (a full queue) fails every check and loses a
working connection ("Consent to send expired"). RFC 7675 lets a check be retransmitted and gives
consent 30 s: ``patient_consent`` replaces that loop, per connection, with one that retransmits
each check (0 s, 0.5 s, 1.5 s; answers until 3.5 s count) and ends the connection only when no
check was answered for ``CONSENT_SECONDS``.

This reaches into aioice 0.13 internals (``Connection.query_consent``, ``_nominated``,
``build_request``, ``remote_password``, ``_query_consent_task``), here and nowhere else;
``install`` checks they exist so an upgrade fails loudly. pyproject pins aioice>=0.13,<0.14.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

from aioice import Connection, stun
from aiortc import RTCPeerConnection

log = logging.getLogger("groom.live.consent")

CONSENT_INTERVAL = 5.0  # seconds between checks, randomized 0.8-1.2x (as aioice, RFC 7675)
CONSENT_RETRANSMISSIONS = 2  # each check is sent 3 times: at 0, 0.5 and 1.5 s
CONSENT_SECONDS = 30.0  # RFC 7675: consent expires 30 s after the last answered check

_NEEDED = ("query_consent", "_nominated", "build_request", "remote_password", "_query_consent_task")


async def _patient_consent(connection: Connection) -> None:
    """The consent loop of one ICE connection (stands in for aioice's ``query_consent``)."""
    password = connection.remote_password
    assert password is not None  # connect() starts consent once it has the remote password
    last_answer = time.monotonic()
    while True:
        await asyncio.sleep(CONSENT_INTERVAL * (0.8 + 0.4 * random.random()))
        for pair in list(connection._nominated.values()):
            request = connection.build_request(pair, nominate=False)
            try:
                await pair.protocol.request(request, pair.remote_addr,
                                            integrity_key=password.encode("utf8"),
                                            retransmissions=CONSENT_RETRANSMISSIONS)
                last_answer = time.monotonic()
            except stun.TransactionError:
                pass
        if time.monotonic() - last_answer >= CONSENT_SECONDS:
            log.info("consent to send expired")
            connection._query_consent_task = None
            await connection.close()
            return


def install(connection: Connection) -> None:
    """Make ``connection`` (not yet connected) use the patient consent loop."""
    for name in _NEEDED:
        if not hasattr(connection, name):
            raise RuntimeError(f"aioice internals changed: Connection has no {name}")

    async def query_consent() -> None:
        await _patient_consent(connection)

    # An instance attribute shadows the method ``connect()`` calls to start consent checks.
    setattr(connection, "query_consent", query_consent)


def install_on(pc: RTCPeerConnection) -> None:
    """``install`` on every ICE connection of ``pc`` (call before ``setLocalDescription``:
    that starts ICE, and ``connect()`` starts consent checks once it succeeds)."""
    seen: set[int] = set()
    for transceiver in pc.getTransceivers():
        dtls: Any = transceiver.sender.transport
        connection = dtls.transport._connection if dtls is not None else None
        if connection is not None and id(connection) not in seen:
            seen.add(id(connection))
            install(connection)
