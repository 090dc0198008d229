"""The documentation covers what the code accepts: every setting, every protocol message."""

from __future__ import annotations

import typing
from pathlib import Path

from groom.core.config import OPTIONS
from groom.web.messages import Message

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_every_setting_is_documented() -> None:
    text = (DOCS / "settings.md").read_text()
    missing = [o.name for o in OPTIONS if f"GROOM_{o.name.upper()}" not in text]
    assert not missing, f"undocumented settings: {missing}"


def test_every_client_message_is_documented() -> None:
    text = (DOCS / "protocol.md").read_text()
    union = typing.get_args(typing.get_args(Message)[0])
    types = [typing.get_args(model.model_fields["type"].annotation)[0] for model in union]
    assert len(types) >= 9
    missing = [t for t in types if f"| `{t}` |" not in text]
    assert not missing, f"undocumented message types: {missing}"
