"""Live figures an admin (or a benchmark) can read while lessons run.

``Latency`` keeps a bounded sample of server-added delay: from the moment a teacher's audio
entered the server to the moment a student's packet carrying it left the socket. Sampling one
packet in ``EVERY`` keeps the cost on the per-packet path to a counter increment.
"""

from __future__ import annotations

import collections
import time

EVERY = 8
KEEP = 4096


class Latency:
    def __init__(self) -> None:
        self._samples: collections.deque[float] = collections.deque(maxlen=KEEP)
        self._count = 0

    def observe(self, created: float) -> None:
        self._count += 1
        if self._count % EVERY == 0:
            self._samples.append(time.monotonic() - created)

    def percentiles(self) -> dict[str, float | None]:
        samples = sorted(self._samples)
        if not samples:
            return {"p50_ms": None, "p95_ms": None, "max_ms": None, "samples": 0}

        def at(q: float) -> float:
            return round(samples[min(len(samples) - 1, int(q * len(samples)))] * 1000, 2)

        return {"p50_ms": at(0.50), "p95_ms": at(0.95), "max_ms": at(1.0), "samples": len(samples)}
