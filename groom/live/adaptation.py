"""Which tier a student should hear, from measured link quality, with hysteresis.

Feedback is coarse (docs/design.md, "What aiortc gives us": Chromium sends one RTCP receiver report
every ~4-5 s), so the controller reacts to *runs* of reports, not to single figures: it steps down
fast when the link is bad for two reports in a row (or at once when it is collapsing), and steps up
slowly, one tier at a time, after the link has been good for a while. A step up that is punished by
a step down soon after doubles the wait before the next try, so a link that cannot carry the higher
tier is not probed every 20 s. "Data saver" pins the lowest tier without stopping the measurements,
so turning it off lands on the tier the link deserves at once.

Pure logic: no I/O, no tasks, an injectable clock. The room feeds it figures and calls
``TierSet.move`` when ``tier`` changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

DEFAULT_TIERS: tuple[str, ...] = ("low", "standard", "high")  # lowest bitrate first
START_TIER = "standard"
RTP_CLOCK = 48_000


class Grade(str, Enum):
    good = "good"
    fair = "fair"
    poor = "poor"
    unknown = "unknown"


@dataclass(frozen=True)
class Thresholds:
    """Limits per figure: at or below ``*_good`` is good, at or above ``*_bad`` is bad.

    Loss and concealment are fractions (0-1). Opus with FEC hides a few percent of loss, and a
    2G link's jitter is routinely tens of milliseconds, hence the generous "good" limits.
    """

    loss_good: float = 0.02
    loss_bad: float = 0.08
    loss_severe: float = 0.20
    jitter_good_ms: float = 50.0
    jitter_bad_ms: float = 150.0
    rtt_good_ms: float = 600.0
    rtt_bad_ms: float = 1500.0
    concealed_good: float = 0.02
    concealed_bad: float = 0.08
    concealed_severe: float = 0.20
    # Deltas this small say nothing (DTX sends few packets during silence): ignore the figure.
    min_packets: int = 20
    min_samples: int = RTP_CLOCK // 2


@dataclass(frozen=True)
class Timing:
    bad_reports_to_step_down: int = 2
    good_seconds_to_step_up: float = 20.0
    good_reports_to_step_up: int = 3
    probe_window: float = 60.0  # a step down this soon after a step up means the probe failed
    max_good_seconds: float = 160.0  # cap of the doubled wait


@dataclass(frozen=True)
class LinkSample:
    """One report, normalised. ``None`` means the report did not carry (enough for) that figure."""

    at: float
    source: str  # "rtcp" or "client"
    loss: float | None = None
    jitter_ms: float | None = None
    rtt_ms: float | None = None
    concealed: float | None = None


@dataclass(frozen=True)
class LinkQuality:
    """Summary for the teacher's participant list (smoothed figures, not the last report)."""

    grade: Grade
    tier: str
    data_saver: bool
    loss_pct: float | None
    jitter_ms: float | None
    rtt_ms: float | None
    concealed_pct: float | None
    reports: int

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["grade"] = self.grade.value
        return data


def classify(sample: LinkSample, th: Thresholds) -> tuple[Grade, bool]:
    """(grade, severe) of one sample: poor if any figure is bad, good only if all known are good."""
    checks = [
        (sample.loss, th.loss_good, th.loss_bad),
        (sample.jitter_ms, th.jitter_good_ms, th.jitter_bad_ms),
        (sample.rtt_ms, th.rtt_good_ms, th.rtt_bad_ms),
        (sample.concealed, th.concealed_good, th.concealed_bad),
    ]
    known = [(v, g, b) for v, g, b in checks if v is not None]
    if not known:
        return Grade.unknown, False
    severe = ((sample.loss or 0.0) >= th.loss_severe
              or (sample.concealed or 0.0) >= th.concealed_severe)
    if severe or any(v >= b for v, _, b in known):
        return Grade.poor, severe
    if all(v <= g for v, g, _ in known):
        return Grade.good, False
    return Grade.fair, False


@dataclass
class _Smoothed:
    """Exponentially weighted figures, so one odd report does not repaint the teacher's list."""

    alpha: float = 0.4
    values: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, value: float | None) -> None:
        if value is None:
            return
        old = self.values.get(name)
        self.values[name] = value if old is None else old + self.alpha * (value - old)

    def get(self, name: str) -> float | None:
        return self.values.get(name)


class TierController:
    """Per-student tier choice. Feed reports; read ``tier`` (or the return value of a report)."""

    def __init__(self, tiers: Sequence[str] = DEFAULT_TIERS, start: str = START_TIER,
                 data_saver: bool = False, thresholds: Thresholds = Thresholds(),
                 timing: Timing = Timing(), clock: Callable[[], float] = time.monotonic) -> None:
        if len(tiers) < 1 or start not in tiers:
            raise ValueError(f"start tier {start!r} not in {list(tiers)}")
        self._tiers = tuple(tiers)
        self._link_index = self._tiers.index(start)
        self._data_saver = data_saver
        self._th = thresholds
        self._timing = timing
        self._clock = clock
        self._bad_run = 0
        self._good_since: float | None = None
        self._good_run = 0
        self._last_change = clock()
        self._last_step_up: float | None = None
        self._up_wait = timing.good_seconds_to_step_up
        self._smoothed = _Smoothed()
        self._reports = 0

    # ---- outputs -------------------------------------------------------------------------

    @property
    def tier(self) -> str:
        """The tier to serve: the lowest while data saver is on, else what the link allows."""
        return self._tiers[0] if self._data_saver else self._tiers[self._link_index]

    @property
    def link_tier(self) -> str:
        """What the link allows, kept up to date even while data saver pins the lowest tier."""
        return self._tiers[self._link_index]

    @property
    def data_saver(self) -> bool:
        return self._data_saver

    def link_quality(self) -> LinkQuality:
        s = self._smoothed
        smoothed = LinkSample(at=self._clock(), source="summary", loss=s.get("loss"),
                              jitter_ms=s.get("jitter_ms"), rtt_ms=s.get("rtt_ms"),
                              concealed=s.get("concealed"))
        grade, _ = classify(smoothed, self._th)

        def pct(v: float | None) -> float | None:
            return None if v is None else round(100.0 * v, 1)

        def ms(v: float | None) -> float | None:
            return None if v is None else round(v, 1)

        return LinkQuality(grade=grade, tier=self.tier, data_saver=self._data_saver,
                           loss_pct=pct(smoothed.loss), jitter_ms=ms(smoothed.jitter_ms),
                           rtt_ms=ms(smoothed.rtt_ms), concealed_pct=pct(smoothed.concealed),
                           reports=self._reports)

    # ---- inputs --------------------------------------------------------------------------

    def set_data_saver(self, on: bool) -> str | None:
        """Switch data saver; returns the new tier if the served tier changed."""
        before = self.tier
        self._data_saver = bool(on)
        return self.tier if self.tier != before else None

    def rtcp_report(self, fraction_lost: int, jitter: float,
                    rtt: float | None = None) -> str | None:
        """An RTCP receiver report (aiortc ``remote-inbound-rtp``).

        ``fraction_lost`` is on the 0-255 scale, ``jitter`` in RTP clock units (1/48000 s),
        ``rtt`` in seconds (``roundTripTime``; ``None`` before one is known).
        """
        sample = LinkSample(
            at=self._clock(), source="rtcp",
            loss=min(max(fraction_lost, 0), 255) / 256.0,
            jitter_ms=max(float(jitter), 0.0) * 1000.0 / RTP_CLOCK,
            rtt_ms=None if rtt is None else max(rtt, 0.0) * 1000.0,
        )
        return self.add(sample)

    def client_report(self, packets_lost: int, packets_received: int, jitter_s: float | None,
                      concealed_samples: int = 0, total_samples: int = 0,
                      silent_concealed_samples: int = 0) -> str | None:
        """The student page's own ``getStats()`` (inbound-rtp), as deltas since its last report.

        Silent concealment (comfort noise during the teacher's DTX pauses) is not a link fault
        and is subtracted. Deltas too small to mean anything leave that figure unknown.
        """
        th = self._th
        lost, received = max(packets_lost, 0), max(packets_received, 0)
        loss = lost / (lost + received) if lost + received >= th.min_packets else None
        concealed: float | None = None
        if total_samples >= th.min_samples:
            audible = max(concealed_samples - max(silent_concealed_samples, 0), 0)
            concealed = min(audible / total_samples, 1.0)
        sample = LinkSample(at=self._clock(), source="client", loss=loss,
                            jitter_ms=None if jitter_s is None else max(jitter_s, 0.0) * 1000.0,
                            concealed=concealed)
        return self.add(sample)

    def add(self, sample: LinkSample) -> str | None:
        """Take one normalised report; returns the new served tier if it changed."""
        grade, severe = classify(sample, self._th)
        if grade is Grade.unknown:
            return None
        self._reports += 1
        for name in ("loss", "jitter_ms", "rtt_ms", "concealed"):
            self._smoothed.add(name, getattr(sample, name))
        before = self.tier
        now = sample.at
        self._expire_probe(now)
        if grade is Grade.poor:
            self._good_since, self._good_run = None, 0
            self._bad_run += 1
            if severe or self._bad_run >= self._timing.bad_reports_to_step_down:
                self._step_down(now)
        elif grade is Grade.good:
            self._bad_run = 0
            if self._good_since is None:
                self._good_since = now
            self._good_run += 1
            if (self._good_run >= self._timing.good_reports_to_step_up
                    and now - self._good_since >= self._up_wait
                    and now - self._last_change >= self._up_wait):
                self._step_up(now)
        else:  # fair: not a reason to move either way, but it ends a good run
            self._good_since, self._good_run = None, 0
        return self.tier if self.tier != before else None

    # ---- internals -----------------------------------------------------------------------

    def _expire_probe(self, now: float) -> None:
        """A step up that survived the probe window was right: forget earlier failures."""
        if self._last_step_up is not None and now - self._last_step_up >= self._timing.probe_window:
            self._last_step_up = None
            self._up_wait = self._timing.good_seconds_to_step_up

    def _step_down(self, now: float) -> None:
        self._bad_run = 0
        if self._link_index == 0:
            return
        if self._last_step_up is not None and now - self._last_step_up < self._timing.probe_window:
            self._up_wait = min(self._up_wait * 2, self._timing.max_good_seconds)
        self._last_step_up = None
        self._link_index -= 1
        self._last_change = now

    def _step_up(self, now: float) -> None:
        self._good_since, self._good_run = None, 0
        if self._link_index == len(self._tiers) - 1:
            return
        self._link_index += 1
        self._last_change = now
        self._last_step_up = now
