"""Tier choice: fast down, slow up, no flapping, data saver, link summary."""

from __future__ import annotations

import pytest

from groom.live.adaptation import Grade, LinkSample, Thresholds, TierController, Timing, classify


class Clock:
    """A hand-driven clock: the controller reads time only through it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


GOOD_RTCP = {"fraction_lost": 0, "jitter": 480, "rtt": 0.15}  # 0 %, 10 ms, 150 ms
BAD_RTCP = {"fraction_lost": 40, "jitter": 480, "rtt": 0.15}  # 15.6 % loss
FAIR_RTCP = {"fraction_lost": 10, "jitter": 480, "rtt": 0.15}  # 3.9 % loss
SEVERE_RTCP = {"fraction_lost": 128, "jitter": 480, "rtt": 0.15}  # 50 % loss


def make(**kw: object) -> tuple[TierController, Clock]:
    clock = Clock()
    return TierController(clock=clock, **kw), clock  # type: ignore[arg-type]


def feed(ctl: TierController, clock: Clock, figures: dict[str, float], times: int,
         every: float = 5.0) -> list[str]:
    """Send ``times`` identical RTCP reports ``every`` seconds apart; return the tier changes."""
    changes = []
    for _ in range(times):
        clock.now += every
        changed = ctl.rtcp_report(**figures)  # type: ignore[arg-type]
        if changed:
            changes.append(changed)
    return changes


def test_new_student_starts_on_standard() -> None:
    ctl, _ = make()
    assert ctl.tier == "standard"
    assert ctl.link_quality().grade is Grade.unknown


def test_one_bad_report_does_not_move_two_do() -> None:
    ctl, clock = make()
    assert feed(ctl, clock, BAD_RTCP, 1) == []
    assert ctl.tier == "standard"
    assert feed(ctl, clock, BAD_RTCP, 1) == ["low"]
    assert ctl.tier == "low"


def test_fair_between_bad_reports_still_counts_as_sustained() -> None:
    ctl, clock = make()
    feed(ctl, clock, BAD_RTCP, 1)
    feed(ctl, clock, FAIR_RTCP, 1)
    assert feed(ctl, clock, BAD_RTCP, 1) == ["low"]


def test_collapsing_link_steps_down_on_one_report() -> None:
    ctl, clock = make()
    assert feed(ctl, clock, SEVERE_RTCP, 1) == ["low"]


def test_step_down_is_one_tier_per_run_of_bad_reports() -> None:
    ctl, clock = make(start="high")
    assert feed(ctl, clock, BAD_RTCP, 4) == ["standard", "low"]
    assert feed(ctl, clock, BAD_RTCP, 4) == []  # already at the bottom


def test_step_up_needs_sustained_good_and_goes_one_tier_at_a_time() -> None:
    ctl, clock = make(start="low")
    # 15 s of good reports is not enough
    assert feed(ctl, clock, GOOD_RTCP, 3) == []
    changes = feed(ctl, clock, GOOD_RTCP, 2)  # 20-25 s: first step
    assert changes == ["standard"]
    # the next step again needs its own 20 s
    assert feed(ctl, clock, GOOD_RTCP, 3) == []
    assert feed(ctl, clock, GOOD_RTCP, 2) == ["high"]
    assert feed(ctl, clock, GOOD_RTCP, 20) == []  # top


def test_fair_report_restarts_the_good_run() -> None:
    ctl, clock = make(start="low")
    feed(ctl, clock, GOOD_RTCP, 4)
    feed(ctl, clock, FAIR_RTCP, 1)
    assert feed(ctl, clock, GOOD_RTCP, 4) == []
    assert feed(ctl, clock, GOOD_RTCP, 1) == ["standard"]


@pytest.mark.parametrize("pattern",
                         [("good", "bad"), ("good", "good", "bad"), ("fair", "bad", "good")])
def test_no_flapping_on_alternating_figures(pattern: tuple[str, ...]) -> None:
    figures = {"good": GOOD_RTCP, "bad": BAD_RTCP, "fair": FAIR_RTCP}
    ctl, clock = make()
    changes: list[str] = []
    for i in range(200):  # ~17 minutes of reports every 5 s
        changes += feed(ctl, clock, figures[pattern[i % len(pattern)]], 1)
    assert changes == []
    assert ctl.tier == "standard"


def test_failed_probe_doubles_the_wait_before_the_next_try() -> None:
    ctl, clock = make(start="low")
    assert feed(ctl, clock, GOOD_RTCP, 5) == ["standard"]  # 20 s after the first good report
    assert feed(ctl, clock, BAD_RTCP, 2) == ["low"]  # the higher tier hurt: probe failed
    # now 40 s of good are needed, not 20
    assert feed(ctl, clock, GOOD_RTCP, 8) == []  # 35 s
    assert feed(ctl, clock, GOOD_RTCP, 1) == ["standard"]  # 40 s
    assert feed(ctl, clock, GOOD_RTCP, 8) == []  # still the 40 s wait
    assert feed(ctl, clock, GOOD_RTCP, 1) == ["high"]
    # a step up that survives the probe window resets the wait to 20 s
    clock.now += 61
    feed(ctl, clock, GOOD_RTCP, 1)
    assert feed(ctl, clock, BAD_RTCP, 2) == ["standard"]  # an old step up: not a failed probe
    assert feed(ctl, clock, GOOD_RTCP, 4) == []
    assert feed(ctl, clock, GOOD_RTCP, 1) == ["high"]


def test_slow_oscillating_link_is_probed_less_and_less() -> None:
    """Good for 20 s, bad as soon as the tier is raised: the probes space out."""
    ctl, clock = make(start="low")
    ups: list[float] = []
    for _ in range(400):  # ~33 minutes
        clock.now += 5
        figures = GOOD_RTCP if ctl.tier == "low" else BAD_RTCP
        if ctl.rtcp_report(**figures) == "standard":  # type: ignore[arg-type]
            ups.append(clock.now)
    gaps = [b - a for a, b in zip(ups, ups[1:])]
    assert len(ups) <= 15
    assert gaps[:4] == sorted(gaps[:4]) and gaps[3] > gaps[0]


def test_data_saver_pins_low_and_releases_to_the_link_tier() -> None:
    ctl, clock = make(data_saver=True)
    assert ctl.tier == "low"
    assert feed(ctl, clock, GOOD_RTCP, 10) == []  # the link improves meanwhile
    assert ctl.tier == "low" and ctl.link_tier == "high"
    assert ctl.set_data_saver(False) == "high"
    assert ctl.set_data_saver(False) is None
    assert ctl.set_data_saver(True) == "low"


def test_client_stats_are_used_and_tiny_deltas_ignored() -> None:
    ctl, clock = make()
    # 3 lost of 10: too few packets to judge (DTX silence); the rest is fine -> good, not bad
    clock.now += 2
    assert ctl.client_report(3, 7, 0.01) is None
    assert ctl.link_quality().loss_pct is None
    # two reports with heavy audible concealment step down
    for _ in range(2):
        clock.now += 2
        changed = ctl.client_report(0, 100, 0.02, concealed_samples=48_000 // 5,
                                    total_samples=96_000)
    assert changed == "low"


def test_silent_concealment_during_dtx_is_not_a_fault() -> None:
    ctl, clock = make()
    for _ in range(3):
        clock.now += 2
        assert ctl.client_report(0, 100, 0.02, concealed_samples=50_000, total_samples=96_000,
                                 silent_concealed_samples=50_000) is None
    assert ctl.tier == "standard"
    assert ctl.link_quality().grade is Grade.good


def test_link_quality_summary_is_smoothed() -> None:
    ctl, clock = make()
    feed(ctl, clock, GOOD_RTCP, 5)
    q = ctl.link_quality()
    assert q.grade is Grade.good and q.loss_pct == 0.0 and q.jitter_ms == 10.0 and q.rtt_ms == 150.0
    feed(ctl, clock, BAD_RTCP, 1)
    q = ctl.link_quality()
    assert q.grade is Grade.fair  # one bad report among good ones
    assert 3.0 < (q.loss_pct or 0) < 10.0
    feed(ctl, clock, BAD_RTCP, 3)
    q = ctl.link_quality()
    assert q.grade is Grade.poor and q.tier == "low"
    assert q.as_dict()["grade"] == "poor" and q.as_dict()["reports"] == 9


def test_classify_and_configuration() -> None:
    th = Thresholds()
    assert classify(LinkSample(at=0, source="x"), th) == (Grade.unknown, False)
    assert classify(LinkSample(at=0, source="x", jitter_ms=200), th) == (Grade.poor, False)
    assert classify(LinkSample(at=0, source="x", rtt_ms=900), th) == (Grade.fair, False)
    assert classify(LinkSample(at=0, source="x", loss=0.5), th) == (Grade.poor, True)
    with pytest.raises(ValueError):
        TierController(start="ultra")
    ctl = TierController(tiers=("8k", "16k", "32k"), start="16k",
                         timing=Timing(bad_reports_to_step_down=3), clock=Clock())
    clock = ctl._clock  # the same hand clock
    assert isinstance(clock, Clock)
    assert feed(ctl, clock, BAD_RTCP, 2) == [] and feed(ctl, clock, BAD_RTCP, 1) == ["8k"]
