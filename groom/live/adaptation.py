"""Which tier a student should hear, from measured link quality: fit fast, never step into a link
that cannot carry it, protect a lossy link.

Feedback is coarse (docs/design.md, "What aiortc gives us": Chromium sends one RTCP receiver report
every ~4-5 s; the page adds its own ``getStats`` every 2 s), so the controller reacts to *runs* of
reports: it steps down when the link is bad for two reports in a row (one fair report between
them keeps the run, two end it), or at once when it is collapsing. "Bad" is loss, audible
concealment, or a queue building up: the round trip or the jitter *grown* above the lowest this
student has shown (a satellite or 2G link's long idle round trip is no fault; a cell queue
filling behind a slide download is). Loss and concealment are judged over enough packets: the
page's exact counts pooled over its last 150 packets or more (one report of the low tier is ~33
packets, and at 2G's 3 % random loss one in thirteen reads 9 %), which also judge the RTCP
reports in between (they count the same packets); each RTCP report's own fraction only while
the page's counts do not flow. A collapse shows in one report and still counts at once.

Stepping up needs proof that the link has room. A slide download (``delivery_report``: its
measured delivery rate plus the audio sent meanwhile) shows the link's capacity; with that, two
good reports are enough to go straight to the highest tier that fits with a margin. Without one,
a long good run earns a *trial* of the next tier. Every step up is watched for ``probe_window``
and reverted on the first bad report; a reverted step (``failed_step_ups``) doubles the wait
before the next try and bars capacity-proven steps as long. Sustained loss turns ``protect`` on:
the room then serves the tier's protected variant (RED) when the student can decode it. A new
student is protected *provisionally* until its first ``protect_packets`` show whether it needs
it: a 15 % link heard unprotected for the ~5 s that takes conceals as much in those seconds as
in the rest of a minute, while the few bytes RED costs a clean link meanwhile buy nothing but
harm nothing (provisional protection bars no step up). "Data
saver" pins the lowest tier without stopping the measurements, so turning it off lands on the
tier the link deserves at once.

Pure logic: no I/O, no tasks, an injectable clock. The room feeds it figures and moves the
student's sender when ``tier`` (or ``protect``) changes.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum

DEFAULT_TIERS: tuple[str, ...] = ("low", "standard", "high")  # lowest bitrate first
START_TIER = "low"  # no tier above the lowest before the link has shown room for it
RTP_CLOCK = 48_000
# Each tier's rate on the wire (Opus + RTP/SRTP/UDP/IP headers) in kbit/s, and the same for its
# protected variant: measured on media/speech.wav (pauses included) with groom.live.tiers'
# ROOM_TIERS. What a link must carry to hold the tier.
TIER_KBPS: dict[str, float] = {"low": 14.0, "standard": 21.0, "high": 46.0}
PROTECTED_KBPS: dict[str, float] = {"low": 18.5, "standard": 27.5}


class Grade(str, Enum):
    good = "good"
    fair = "fair"
    poor = "poor"
    unknown = "unknown"


@dataclass(frozen=True)
class Thresholds:
    """Limits per figure: at or below ``*_good`` is good, at or above ``*_bad`` is bad.

    Loss and concealment are fractions (0-1). Opus with FEC hides a few percent of loss, and a
    2G link's jitter is routinely tens of milliseconds, hence the generous "good" limits. The
    round trip and jitter count by how much they grew above the student's lowest.
    """

    loss_good: float = 0.02
    loss_bad: float = 0.08
    loss_severe: float = 0.20
    jitter_growth_good_ms: float = 30.0
    jitter_growth_bad_ms: float = 80.0
    rtt_growth_good_ms: float = 150.0
    rtt_growth_bad_ms: float = 350.0
    rtt_growth_severe_ms: float = 900.0
    concealed_good: float = 0.02
    concealed_bad: float = 0.08
    concealed_severe: float = 0.20
    # Deltas this small say nothing (DTX sends few packets during silence): ignore the figure.
    min_packets: int = 20
    min_samples: int = RTP_CLOCK // 2
    # Loss and concealment are judged over at least this many of the page's packets (its
    # reports pooled, newest first): at 3 % random loss one report's ~33 packets (2 s of the
    # low tier) read 9 % or more one time in thirteen, 100 packets 8 % once in ninety, 150
    # packets (9 s of the low tier, 3 s of high) once in five hundred.
    judge_packets: int = 150
    # Sustained loss at or above this turns protection on; below ``unprotect_loss`` off. Judged
    # on the page's counts like the rest, but twice as much shows on fewer packets: a 15 % link
    # gets RED after two of the page's reports (66 packets), a 2 % link so one time in twenty.
    protect_loss: float = 0.025
    unprotect_loss: float = 0.01
    protect_packets: int = 60
    # A tier fits when the measured capacity is this many times its rate (room for slides).
    capacity_margin: float = 1.5
    # No step up while the loss (the page's pooled counts; without the page, RTCP's smoothed and
    # over the last ~10 reports) is this high, whatever the room: a 15 % link's loss over a
    # second's few dozen packets is often 0-5 %, and a step taken on such a dip is reverted.
    step_up_loss: float = 0.05
    # ... over at least this many of the page's packets (one report of the low tier), when the
    # page reports: a loss figure, not the RTCP report's fraction of the first few packets.
    step_up_packets: int = 30
    free_kbps: float = 2000.0  # slides go unpaced on a link shown to carry this much
    min_slide_kbps: float = 4.0  # and never slower than this (the slide must arrive)


@dataclass(frozen=True)
class Timing:
    bad_reports_to_step_down: int = 2
    good_seconds_to_step_up: float = 20.0  # a trial without a capacity measurement
    good_reports_to_step_up: int = 3
    capacity_good_reports: int = 2  # reports in a row not poor before a capacity-proven step up
    hold_seconds: float = 4.0  # at least this long on a tier before stepping up from it
    probe_window: float = 12.0  # a bad report this soon after a step up reverts it at once
    max_good_seconds: float = 160.0  # cap of the doubled wait
    floor_seconds: float = 120.0  # the round trip / jitter floor is the lowest of this long
    capacity_seconds: float = 300.0  # a delivery measurement counts this long
    # The page's packet counts are used while its last one is this recent (it reports every
    # 2 s); without them (a throttled background tab) each RTCP report's fraction is judged.
    counts_seconds: float = 6.0


@dataclass(frozen=True)
class LinkSample:
    """One report, normalised. ``None`` means the report did not carry (enough for) that figure."""

    at: float
    source: str  # "rtcp" or "client"
    loss: float | None = None
    packets: int | None = None  # how many packets ``loss`` counts (the page's reports only)
    jitter_ms: float | None = None
    rtt_ms: float | None = None
    concealed: float | None = None
    # How far the round trip / jitter rose above the student's floor (the controller sets them).
    rtt_growth_ms: float | None = None
    jitter_growth_ms: float | None = None


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
    protect: bool = False
    failed_step_ups: int = 0
    capacity_kbps: float | None = None


def classify(sample: LinkSample, th: Thresholds) -> tuple[Grade, bool]:
    """(grade, severe) of one sample: poor if any figure is bad, good only if all known are good.

    The round trip and jitter are graded by their growth only: a long idle round trip is no
    fault, a queue building up is."""
    checks = [
        (sample.loss, th.loss_good, th.loss_bad),
        (sample.jitter_growth_ms, th.jitter_growth_good_ms, th.jitter_growth_bad_ms),
        (sample.rtt_growth_ms, th.rtt_growth_good_ms, th.rtt_growth_bad_ms),
        (sample.concealed, th.concealed_good, th.concealed_bad),
    ]
    known = [(v, g, b) for v, g, b in checks if v is not None]
    if not known:
        return Grade.unknown, False
    severe = ((sample.loss or 0.0) >= th.loss_severe
              or (sample.concealed or 0.0) >= th.concealed_severe
              or (sample.rtt_growth_ms or 0.0) >= th.rtt_growth_severe_ms)
    if severe or any(v >= b for v, _, b in known):
        return Grade.poor, severe
    if all(v <= g for v, g, _ in known):
        return Grade.good, False
    return Grade.fair, False


class _Floor:
    """The lowest value seen over the last ``seconds`` (the round trip with an empty queue)."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._values: deque[tuple[float, float]] = deque()  # increasing values: front = minimum

    def growth(self, now: float, value: float | None) -> float | None:
        """Add ``value``; how far it is above the window's minimum (None: no value)."""
        if value is None:
            return None
        while self._values and self._values[0][0] < now - self._seconds:
            self._values.popleft()
        while self._values and self._values[-1][1] >= value:
            self._values.pop()
        self._values.append((now, value))
        return value - self._values[0][1]


class _Counts:
    """The page's loss and audible concealment over its latest ``packets`` packets or a few
    more (whole reports, newest first): a figure that rests on enough packets to mean something.
    Each report is stored as (time, packets, packets lost, packets' worth concealed or None)."""

    def __init__(self, packets: int, seconds: float, start: float) -> None:
        self._packets = packets
        self._seconds = seconds
        self._start = start
        self._reports: deque[tuple[float, int, float, float | None]] = deque()
        self._page_at: float | None = None  # the page's last report, even one of few packets

    def add(self, sample: LinkSample) -> None:
        if sample.source == "client":
            self._page_at = sample.at
        if sample.packets is None or sample.loss is None:
            return
        n = sample.packets
        self._reports.append((sample.at, n, sample.loss * n,
                              None if sample.concealed is None else sample.concealed * n))
        while sum(r[1] for r in self._reports) - self._reports[0][1] >= self._packets:
            self._reports.popleft()  # the newer ones are enough without it

    def packets(self) -> int:
        """How many packets the pooled reports count."""
        return sum(r[1] for r in self._reports)

    def fresh(self, now: float) -> bool:
        """Whether the page reports (recently): then its counts, not an RTCP report's fraction,
        judge the loss, also in a pause of the voice (an RTCP fraction of a few packets)."""
        return self._page_at is not None and now - self._page_at <= self._seconds

    def silent(self, now: float) -> bool:
        """Whether the page has not reported for ``seconds`` (or since the start): not merely
        yet to send its first counts."""
        return now - (self._start if self._page_at is None else self._page_at) > self._seconds

    def loss(self, enough: bool = True) -> float | None:
        """The pooled loss; None below ``packets`` packets unless ``enough`` is False."""
        return self._ratio([(n, lost) for _, n, lost, _ in self._reports], enough)

    def concealed(self) -> float | None:
        return self._ratio([(n, c) for _, n, _, c in self._reports if c is not None], True)

    def _ratio(self, parts: list[tuple[int, float]], enough: bool) -> float | None:
        packets = sum(n for n, _ in parts)
        if packets == 0 or (enough and packets < self._packets):
            return None
        return sum(part for _, part in parts) / packets


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
    """Per-student tier choice. Feed reports; read ``tier`` and ``protect``."""

    def __init__(self, tiers: Sequence[str] = DEFAULT_TIERS, start: str = START_TIER,
                 data_saver: bool = False, thresholds: Thresholds = Thresholds(),
                 timing: Timing = Timing(), clock: Callable[[], float] = time.monotonic,
                 rates: Mapping[str, float] = TIER_KBPS,
                 protected_rates: Mapping[str, float] = PROTECTED_KBPS) -> None:
        if len(tiers) < 1 or start not in tiers:
            raise ValueError(f"start tier {start!r} not in {list(tiers)}")
        self._tiers = tuple(tiers)
        self._link_index = self._tiers.index(start)
        self._data_saver = data_saver
        self._th = thresholds
        self._timing = timing
        self._clock = clock
        self._rates = dict(rates)
        self._protected_rates = dict(protected_rates)
        self._bad_run = 0
        self._good_since: float | None = None
        self._good_run = 0
        self._ok_run = 0  # reports in a row that were not poor
        self._last_change = clock()
        self._trial: tuple[float, int] | None = None  # (step-up time, index to revert to)
        self._barred_until = 0.0  # no capacity-proven step up before this (after a failure)
        self._up_wait = timing.good_seconds_to_step_up
        self._smoothed = _Smoothed()
        self._long = _Smoothed(alpha=0.1)  # the link's loss over the last ~10 reports
        self._reports = 0
        self._loss_reports = 0
        self._counts = _Counts(thresholds.judge_packets, timing.counts_seconds, clock())
        self._rtt_floor = _Floor(timing.floor_seconds)
        self._jitter_floor = _Floor(timing.floor_seconds)
        self._capacity: list[tuple[float, float]] = []  # (at, kbit/s) delivery measurements
        self.protect = True  # provisionally, until the first packets show the link's loss
        self._provisional = True
        self.failed_step_ups = 0

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

    def capacity_kbps(self) -> float | None:
        """The link's capacity shown by recent deliveries (a lower bound), if any."""
        now = self._clock()
        fresh = [kbps for at, kbps in self._capacity if now - at <= self._timing.capacity_seconds]
        return max(fresh) if fresh else None

    def tier_kbps(self, tier: str | None = None) -> float:
        """What the served tier (or ``tier``), protected or not, puts on the wire."""
        tier = self.tier if tier is None else tier
        rate = self._rates.get(tier, 0.0)
        return self._protected_rates.get(tier, rate) if self.protect else rate

    def slide_kbps(self) -> float | None:
        """The rate to send slide images at: what the link has left beside the voice (audio
        first); ``math.inf`` on a link with plenty of room; None while the capacity is unknown
        (that download, sent gently, measures it)."""
        capacity = self.capacity_kbps()
        if capacity is None:
            return None
        if capacity >= self._th.free_kbps:
            return math.inf
        return max(0.9 * capacity - self.tier_kbps(), self._th.min_slide_kbps)

    def link_quality(self) -> LinkQuality:
        s = self._smoothed
        smoothed = LinkSample(at=self._clock(), source="summary", loss=s.get("loss"),
                              jitter_ms=s.get("jitter_ms"), rtt_ms=s.get("rtt_ms"),
                              concealed=s.get("concealed"),
                              rtt_growth_ms=s.get("rtt_growth_ms"),
                              jitter_growth_ms=s.get("jitter_growth_ms"))
        grade, _ = classify(smoothed, self._th)

        def pct(v: float | None) -> float | None:
            return None if v is None else round(100.0 * v, 1)

        def ms(v: float | None) -> float | None:
            return None if v is None else round(v, 1)

        capacity = self.capacity_kbps()
        return LinkQuality(grade=grade, tier=self.tier, data_saver=self._data_saver,
                           loss_pct=pct(smoothed.loss), jitter_ms=ms(smoothed.jitter_ms),
                           rtt_ms=ms(smoothed.rtt_ms), concealed_pct=pct(smoothed.concealed),
                           reports=self._reports, protect=self.protect,
                           failed_step_ups=self.failed_step_ups,
                           capacity_kbps=None if capacity is None else round(capacity, 1))

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
        enough = lost + received >= th.min_packets
        loss = lost / (lost + received) if enough else None
        concealed: float | None = None
        if total_samples >= th.min_samples:
            audible = max(concealed_samples - max(silent_concealed_samples, 0), 0)
            concealed = min(audible / total_samples, 1.0)
        # The jitter of a stream that barely flowed (not connected yet, a long pause) says
        # nothing either: a link must not look good before it has carried anything.
        sample = LinkSample(at=self._clock(), source="client", loss=loss,
                            packets=lost + received if enough else None,
                            jitter_ms=(max(jitter_s, 0.0) * 1000.0
                                       if jitter_s is not None and enough else None),
                            concealed=concealed)
        return self.add(sample)

    def delivery_report(self, kbps: float, paced: bool = False,
                        whole_link: bool = False) -> str | None:
        """A slide download finished at ``kbps`` (bytes over the time until the last was
        acknowledged) while the student heard the served tier: the link carried both, so its
        capacity is at least their sum. ``paced``: our pacing set that rate, not the link; if
        the link stayed good meanwhile it had more, so the evidence is raised by a quarter (the
        next image probes a little faster). ``whole_link``: the rate is already the link's (the
        page's first-byte-to-last-byte figure: bytes that queued behind the voice arrive back to
        back at the link's rate), so the voice is not added. Returns the new served tier if it
        changed."""
        if kbps <= 0:
            return None
        now = self._clock()
        if paced and self._ok_run > 0 and self._bad_run == 0:
            kbps *= 1.25
        self._capacity = [(at, v) for at, v in self._capacity
                          if now - at <= self._timing.capacity_seconds]
        self._capacity.append((now, kbps if whole_link else kbps + self.tier_kbps()))
        before = self.tier
        if self._ok_run >= self._timing.capacity_good_reports:
            self._proven_step_up(now)
        return self.tier if self.tier != before else None

    def add(self, sample: LinkSample) -> str | None:
        """Take one normalised report; returns the new served tier if it changed."""
        now = sample.at
        sample = replace(sample, rtt_growth_ms=self._rtt_floor.growth(now, sample.rtt_ms),
                         jitter_growth_ms=self._jitter_floor.growth(now, sample.jitter_ms))
        self._counts.add(sample)
        judged = self._judged(sample)
        grade, severe = classify(judged, self._th)
        if classify(sample, self._th)[1]:  # a collapse shows in one report's packets
            grade, severe = Grade.poor, True
        if grade is Grade.unknown:
            return None
        self._reports += 1
        for name in ("loss", "jitter_ms", "rtt_ms", "concealed", "rtt_growth_ms",
                     "jitter_growth_ms"):
            self._smoothed.add(name, getattr(sample, name))
        self._long.add("loss", sample.loss)
        self._update_protection(sample)
        before = self.tier
        if self._trial is not None and now - self._trial[0] >= self._timing.probe_window:
            self._trial = None  # the step up held: it was right; forget earlier failures
            self._up_wait = self._timing.good_seconds_to_step_up
        self._ok_run = 0 if grade is Grade.poor else self._ok_run + 1
        if self._ok_run >= 2:
            self._bad_run = 0  # a fair report between bad ones keeps their run, two end it
        if grade is Grade.poor:
            self._good_since, self._good_run = None, 0
            self._bad_run += 1
            if self._trial is not None and (
                    self._overloaded(judged) or severe
                    or self._bad_run >= self._timing.bad_reports_to_step_down):
                self._revert(now)
            elif severe or self._bad_run >= self._timing.bad_reports_to_step_down:
                self._step_down(now)
        elif grade is Grade.good:
            self._bad_run = 0
            if self._good_since is None:
                self._good_since = now
            self._good_run += 1
            if (self.capacity_kbps() is None
                    and self._good_run >= self._timing.good_reports_to_step_up
                    and now - self._good_since >= self._up_wait
                    and now - self._last_change >= self._up_wait):
                self._step_to(min(self._link_index + 1, len(self._tiers) - 1), now)
        else:  # fair: not a reason to move either way, but it ends a good run
            self._good_since, self._good_run = None, 0
        # Measured room: only where it fits, never a trial. A little loss (fair) does not mean
        # the link is full; a queue growing or heavy loss (poor) does.
        if (grade is not Grade.poor and self.capacity_kbps() is not None
                and self._ok_run >= self._timing.capacity_good_reports):
            self._proven_step_up(now)
        return self.tier if self.tier != before else None

    # ---- internals -----------------------------------------------------------------------

    def _update_protection(self, sample: LinkSample) -> None:
        """Sustained loss turns protection on (the page's pooled counts; without the page, two
        RTCP reports with loss, smoothed); it stays on until the loss has been low for a while
        (over ``judge_packets``, or the smoothed figure decays). Loss while a
        queue builds up is the link overflowing, not a lossy radio: more bytes would make it
        worse, so it neither turns protection on nor keeps it on; nor does a link whose measured
        capacity has no room for the protected variant. (Before a measurement, the slide
        pacing keeps a thin link's queue short, so loss without queue growth is the radio's.)"""
        th = self._th
        queueing = ((sample.rtt_growth_ms or 0.0) >= th.rtt_growth_bad_ms
                    or (sample.jitter_growth_ms or 0.0) >= th.jitter_growth_bad_ms)
        capacity = self.capacity_kbps()
        tier = self.tier
        room = capacity is None or (
            self._protected_rates.get(tier, self._rates.get(tier, 0.0)) * th.capacity_margin
            <= capacity)
        if queueing or not (room or self._lossy_radio(sample.at)):
            self.protect = self._provisional = False
            return
        if sample.loss is None:
            return
        self._loss_reports += 1
        if self._counts.fresh(sample.at):
            self._protect_by_counts()
            return
        if not self._counts.silent(sample.at):
            return  # the first RTCP reports count a few packets: wait for the page's counts
        loss = self._smoothed.get("loss") or 0.0
        if self._provisional:
            if self._loss_reports >= 2:
                self.protect, self._provisional = loss >= th.protect_loss, False
        elif not self.protect and self._loss_reports >= 2 and loss >= th.protect_loss:
            self.protect = True
        elif self.protect and loss < th.unprotect_loss:
            self.protect = False

    def _protect_by_counts(self) -> None:
        """Protection from the page's pooled counts: on at ``protect_loss`` over
        ``judge_packets`` packets, or at twice that over ``protect_packets``; off below
        ``unprotect_loss`` over ``judge_packets``. A new student's provisional protection
        stays if its first ``protect_packets`` would turn it on, and ends sooner on a clean
        start."""
        th = self._th
        packets, loss = self._counts.packets(), self._counts.loss(enough=False) or 0.0
        judged = packets >= th.judge_packets
        if self._provisional:  # kept only if the first packets lose as much as turns it on
            if packets >= th.protect_packets or (packets >= th.step_up_packets and loss == 0):
                self._provisional = False  # (30 packets without a loss: 15 % loss would lose
                self.protect = loss >= 2 * th.protect_loss  # one of them 199 times in 200)
            return
        if not self.protect:
            self.protect = ((judged and loss >= th.protect_loss)
                            or (packets >= th.protect_packets and loss >= 2 * th.protect_loss))
        elif judged and loss < th.unprotect_loss:
            self.protect = False

    def _lossy_radio(self, now: float) -> bool:
        """Whether the page's counts show heavy loss (``loss_bad`` over ``protect_packets``):
        with no queue growing, that is a lossy radio, not a full link. There a slide's TCP rate
        says nothing about the room the link has (each lost segment halves TCP's window, so it
        reads a fraction of the capacity), and the voice needs its protection most."""
        loss = self._counts.loss(enough=False)
        return (self._counts.fresh(now) and self._counts.packets() >= self._th.protect_packets
                and loss is not None and loss >= self._th.loss_bad)

    def _judged(self, sample: LinkSample) -> LinkSample:
        """The report with the loss and concealment to judge the link by: while the page's
        counts flow, theirs over at least ``judge_packets`` packets (None before there are that
        many), for its reports and the RTCP reports alike (both count the same packets); else
        the RTCP report's own fraction."""
        if not self._counts.fresh(sample.at):
            return sample
        return replace(sample, loss=self._counts.loss(), concealed=self._counts.concealed())

    def _too_lossy_to_step_up(self, now: float) -> bool:
        """Whether the link loses too much for a step up, whatever the room (or has not shown
        yet that it does not): the page's pooled counts, once there are ``step_up_packets``;
        without the page, the RTCP figures, smoothed and over the last ~10 reports."""
        th = self._th
        if self._counts.fresh(now):
            return (self._counts.packets() < th.step_up_packets
                    or (self._counts.loss(enough=False) or 0.0) >= th.step_up_loss)
        return max(self._smoothed.get("loss") or 0.0,
                   self._long.get("loss") or 0.0) >= th.step_up_loss

    def _overloaded(self, judged: LinkSample) -> bool:
        """A sign that the higher tier is too much for the link: a queue building up, or loss or
        audible concealment beyond the link's usual (over enough packets, or smoothed, so one
        report's random loss on a few dozen packets does not count)."""
        th = self._th
        if self._counts.fresh(judged.at):
            loss, concealed = judged.loss, judged.concealed
        else:
            loss, concealed = self._smoothed.get("loss"), self._smoothed.get("concealed")
        return ((judged.rtt_growth_ms or 0.0) >= th.rtt_growth_bad_ms
                or (judged.jitter_growth_ms or 0.0) >= th.jitter_growth_bad_ms
                or (concealed or 0.0) >= th.concealed_bad
                or (loss or 0.0) >= th.loss_bad)

    def _fits(self, index: int, capacity: float) -> bool:
        return self.tier_kbps(self._tiers[index]) * self._th.capacity_margin <= capacity

    def _proven_step_up(self, now: float) -> None:
        """Straight to the highest tier the measured capacity carries with room to spare."""
        capacity = self.capacity_kbps()
        if (capacity is None or now < self._barred_until
                or now - self._last_change < self._timing.hold_seconds
                or self._too_lossy_to_step_up(now)):
            return  # (a link losing this much stays where it is, room or not)
        target = self._link_index
        while target + 1 < len(self._tiers) and self._fits(target + 1, capacity) and not (
                self.protect and not self._provisional
                and self._tiers[target + 1] not in self._protected_rates):
            target += 1  # (a lossy link goes no higher than its protection reaches)
        if target > self._link_index:
            self._step_to(target, now)

    def _step_to(self, index: int, now: float) -> None:
        """A step up, on trial: the first bad report within ``probe_window`` reverts it."""
        self._good_since, self._good_run, self._ok_run = None, 0, 0
        if index <= self._link_index:
            return
        self._trial = (now, self._link_index)
        self._link_index = index
        self._last_change = now

    def _revert(self, now: float) -> None:
        """The link showed a bad sign right after a step up: back at once, wait longer."""
        assert self._trial is not None
        self._link_index = self._trial[1]
        self._trial = None
        self._bad_run = 0
        self.failed_step_ups += 1
        self._up_wait = min(self._up_wait * 2, self._timing.max_good_seconds)
        self._barred_until = now + self._up_wait
        self._last_change = now

    def _step_down(self, now: float) -> None:
        self._bad_run = 0
        if self._link_index == 0:
            return
        self._link_index -= 1
        self._last_change = now
