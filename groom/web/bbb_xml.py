"""BigBlueButton's wire format: the checksum that authenticates a call and the XML answers.

A call is ``/bigbluebutton/api/<call>?<query>&checksum=<hex>`` where the checksum is
``hash(call + query + secret)`` over the query exactly as sent, without the checksum itself. BBB
picks the hash by the checksum's length (40 hex digits SHA-1, 64 SHA-256, 96 SHA-384, 128
SHA-512); so does G-Room, then refuses an algorithm the client is not allowed. The secret says
which client is asking; comparisons are constant-time (``hmac.compare_digest``) over every
configured secret, so timing tells nothing about any of them.

Answers are ``<response><returncode>SUCCESS|FAILED</returncode>...</response>`` with HTTP 200,
failures carrying ``messageKey`` and ``message``, as BBB's clients expect.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Mapping, Optional, Sequence, Union
from xml.etree import ElementTree as ET

from aiohttp import web

from groom.core.config import ApiClientSpec

ALGORITHM_BY_LENGTH = {40: "sha1", 64: "sha256", 96: "sha384", 128: "sha512"}
XML_TYPE = "text/xml"

Value = Union[str, int, float, bool, None, Mapping[str, Any], Sequence[Any], ET.Element]


def strip_checksum(query: str) -> str:
    """The query string as the client hashed it: every ``checksum=`` pair removed, the rest
    byte for byte (no decoding and re-encoding, which would change what was signed)."""
    return "&".join(p for p in query.split("&") if p and not p.startswith("checksum="))


def find_client(clients: Sequence[ApiClientSpec], call: str, query: str,
                checksum: str) -> Optional[ApiClientSpec]:
    """The client whose secret signs ``call + query`` to ``checksum``, or None."""
    algorithm = ALGORITHM_BY_LENGTH.get(len(checksum))
    if algorithm is None:
        return None
    given = checksum.lower().encode()
    found: Optional[ApiClientSpec] = None
    for client in clients:
        for secret in client.secrets:
            expected = hashlib.new(algorithm, f"{call}{query}{secret}".encode()).hexdigest()
            # Every secret is compared, match or not: the time taken does not depend on which.
            if hmac.compare_digest(expected.encode(), given) and algorithm in client.algorithms:
                found = client
    return found


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def add(parent: ET.Element, tag: str, value: Value) -> ET.Element:
    """``<tag>value</tag>`` under ``parent``; a mapping becomes child elements, a list repeats
    ``tag``'s singular (``attendees`` -> ``attendee``) unless given as (tag, value) pairs."""
    if isinstance(value, ET.Element):
        parent.append(value)
        return value
    node = ET.SubElement(parent, tag)
    if isinstance(value, Mapping):
        for key, item in value.items():
            add(node, key, item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, ET.Element):
                node.append(item)
            else:
                add(node, tag[:-1] if tag.endswith("s") else tag, item)
    else:
        node.text = _text(value)
    return node


def response(fields: Mapping[str, Value], status: int = 200) -> web.Response:
    """A SUCCESS answer with ``fields`` in order."""
    root = ET.Element("response")
    add(root, "returncode", "SUCCESS")
    for key, value in fields.items():
        add(root, key, value)
    return _xml(root, status)


def failure(key: str, message: str, status: int = 200) -> web.Response:
    root = ET.Element("response")
    add(root, "returncode", "FAILED")
    add(root, "messageKey", key)
    add(root, "message", message)
    return _xml(root, status)


def _xml(root: ET.Element, status: int) -> web.Response:
    body = ET.tostring(root, encoding="utf-8", xml_declaration=False)
    return web.Response(body=body, status=status, content_type=XML_TYPE, charset="utf-8")


def element(tag: str, fields: Mapping[str, Value]) -> ET.Element:
    """A free-standing element (one meeting, one recording) to put in a list."""
    node = ET.Element(tag)
    for key, value in fields.items():
        add(node, key, value)
    return node
