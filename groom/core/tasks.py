"""Ending the background tasks that every owner (mixer, recorder, timeline, job worker) starts."""

from __future__ import annotations

import asyncio
from typing import Any, Optional


async def cancel(task: Optional[asyncio.Task[Any]]) -> None:
    """Cancel ``task`` and wait until it has finished, so nothing outlives its owner."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
