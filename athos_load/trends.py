"""How a run changed over time: drift (a timing's percentile growing per hour) and change-points
(the windows where the platform's behaviour shifted).

A soak finds what a short test cannot: latency that creeps up. Drift is the slope of a timing's
percentile over the run's time windows (:mod:`athos_load.timeline`), from the Theil–Sen estimator
(``scipy.stats.theilslopes``): the median of the slopes between every pair of windows, so a burst
of slow windows moves it little where a least-squares line would follow them; Sen's interval at
:data:`CONFIDENCE` says how sure it is, and a drift gate fails only when that whole interval lies
past its limit. Drift is relative: the slope over the fitted level at the first window measured,
so ``+10%/h`` reads the same for a 200 ms and a 2 s timing.

Change-points come from ``ruptures`` (PELT with the least-absolute-deviation cost) on the log of
a timing's percentile per window, so a step of +50% is the same jump at 200 ms as at 2 s. The
absolute cost is what keeps bursts out: with least squares a single window three times slower
paid for a segment of its own, and steady runs with bursts showed false changes in 15 of 15
(synthetic, ``tests/test_trends.py``); with it, none in 15, while a +50% step was found within one
window in 15 of 15 (a +20% step within three). The penalty per change is :data:`PENALTY` times the
noise (from the median absolute difference of neighbouring windows) times log(windows). A steady
drift shows as a drift, and may also be cut into one or two steps. Each change is reported with
the window where the new level starts and the levels (medians) on either side.

The rates per window (:data:`RATES`: reconnects per session-minute, error events per call
started) drift too, but in their own units per hour, not relative: a healthy run's error rate is
zero, and a slope over zero has no percentage.

The warm-up is left out: the windows before the run's ``warmup_until`` (a soak's ramp,
:meth:`~athos_load.metrics.Metrics.end_warmup`) or, when the run names none, the first
:data:`WARMUP_SHARE` of the windows. Windows with fewer than :data:`MIN_SAMPLES` samples are left
out too; fewer than :data:`MIN_WINDOWS` windows give no drift and no change-points.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .timeline import WindowHistogram

CONFIDENCE = 0.95
MIN_WINDOWS = 6  # fewer points cannot tell a trend from a burst
MIN_SAMPLES = 5  # a window's percentile from fewer samples is mostly noise
WARMUP_SHARE = 0.1  # the first tenth of the windows is the ramp-up, not the platform's trend
PENALTY = 3.0  # per change, in units of noise x log(windows)
MIN_SEGMENT = 5  # windows: a shorter excursion is a burst, not a new level
MIN_SESSION_SECONDS = 60.0  # a window's reconnect rate from less than a session-minute is mostly noise


@dataclass(frozen=True)
class Drift:
    """A slope per hour and its interval: relative (0.1: +10% of the starting level an hour) or,
    for a rate, in the rate's own units."""

    per_hour: float
    low: float
    high: float
    level: float  # the fitted value at the first window measured (seconds for a timing)
    windows: int
    relative: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "per_hour": round(self.per_hour, 6),
            "low": round(self.low, 6),
            "high": round(self.high, 6),
            "level": round(self.level, 6),
            "windows": self.windows,
            "relative": self.relative,
        }

    def shown(self) -> str:
        pct = int(CONFIDENCE * 100)
        form = "{:+.1%}" if self.relative else "{:+.3g}"
        low, high, slope = (form.format(v) for v in (self.low, self.high, self.per_hour))
        return f"{slope}/h ({pct}% interval {low} to {high}/h)"


def drift(times: Sequence[float], values: Sequence[float], *, relative: bool = True) -> Drift | None:
    """The drift of ``values`` observed at ``times`` (seconds); None with too few points, or, when
    ``relative``, no level to be relative to."""
    if len(times) < MIN_WINDOWS or len(times) != len(values):
        return None
    hours = (np.asarray(times, dtype=np.float64) - times[0]) / 3600.0
    if hours[-1] <= 0:
        return None
    from scipy.stats import theilslopes  # heavy: imported by the process that judges a run, when it does

    fit = theilslopes(np.asarray(values, dtype=np.float64), hours, alpha=CONFIDENCE)
    level, slope, low, high = (float(v) for v in (fit.intercept, fit.slope, fit.low_slope, fit.high_slope))
    if not math.isfinite(slope):
        return None
    if not relative:
        return Drift(slope, low, high, level, len(times), relative=False)
    if not level > 0:
        return None
    return Drift(slope / level, low / level, high / level, level, len(times))


def after_warmup(timeline: dict[str, Any], windows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``windows`` (of ``timeline``) without the warm-up's: before ``warmup_until``, or the first tenth."""
    until = timeline.get("warmup_until")
    if until is not None:
        return [w for w in windows if w["start"] >= until]
    return windows[math.ceil(WARMUP_SHARE * len(windows)) :]


@dataclass(frozen=True)
class ChangePoint:
    """Where a timing's level shifted: the new level starts in the window starting at ``at``."""

    at: float  # epoch seconds: the start of the first window at the new level
    before: float  # the median of the percentile over the segment before (seconds)
    after: float  # and over the segment after

    @property
    def change(self) -> float:
        return self.after / self.before - 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "before": round(self.before, 6),
            "after": round(self.after, 6),
            "change": round(self.change, 4),
        }


def series(timeline: dict[str, Any], timing: str, quantile: float) -> tuple[list[float], list[float]]:
    """A timing's ``quantile`` per window of a summary's ``timeline`` (window starts, values), the
    warm-up and windows with too few samples left out."""
    windows = [w for w in timeline.get("windows", []) if (w.get(timing) or {}).get("count", 0) >= MIN_SAMPLES]
    windows = after_warmup(timeline, windows)
    starts, values = [], []
    for window in windows:
        value = WindowHistogram.from_dict(window[timing]["h"]).percentile(quantile)
        if value is not None and value > 0:
            starts.append(float(window["start"]))
            values.append(value)
    return starts, values


def timing_drift(timeline: dict[str, Any], timing: str, quantile: float) -> Drift | None:
    """The drift of a timing's ``quantile`` over a summary's ``timeline`` (its windows' histograms)."""
    width = float(timeline.get("window_seconds") or 1.0)
    starts, values = series(timeline, timing, quantile)
    return drift([t + width / 2 for t in starts], values)


# the generator's own levels per window (metrics.timeline_summary), by the names gates use
LEVELS = {"loadgen_rss": "rss_bytes", "loadgen_open_fds": "open_fds"}


def level_drift(timeline: dict[str, Any], level: str) -> Drift | None:
    """The drift of one of :data:`LEVELS` (the generator's memory or descriptors) over the run: a
    leak in the tool, told apart from the platform slowing down."""
    width = float(timeline.get("window_seconds") or 1.0)
    windows = after_warmup(timeline, [w for w in timeline.get("windows", []) if w.get(LEVELS[level])])
    return drift([w["start"] + width / 2 for w in windows], [w[LEVELS[level]] for w in windows])


def _reconnect_rate(window: dict[str, Any]) -> float | None:
    seconds = window.get("session_seconds") or 0.0
    return 60.0 * window.get("reconnects", 0) / seconds if seconds >= MIN_SESSION_SECONDS else None


def _error_rate(window: dict[str, Any]) -> float | None:
    started = (window.get("calls") or {}).get("started", 0)
    return sum((window.get("errors") or {}).values()) / started if started >= MIN_SAMPLES else None


# rates per window, by the names gates use (the same definitions as the run's: gates.RATES, VALUES)
RATES: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "reconnects_per_session_minute": _reconnect_rate,
    "errors": _error_rate,
}


def rate_series(timeline: dict[str, Any], rate: str) -> tuple[list[float], list[float]]:
    """One of :data:`RATES` per window after the warm-up (window starts, values), windows with too
    little in them to say left out."""
    starts, values = [], []
    for window in after_warmup(timeline, timeline.get("windows", [])):
        value = RATES[rate](window)
        if value is not None:
            starts.append(float(window["start"]))
            values.append(value)
    return starts, values


def rate_drift(timeline: dict[str, Any], rate: str) -> Drift | None:
    """The drift of one of :data:`RATES`, in its units per hour."""
    width = float(timeline.get("window_seconds") or 1.0)
    starts, values = rate_series(timeline, rate)
    return drift([t + width / 2 for t in starts], values, relative=False)


def metric_drift(timeline: dict[str, Any], name: str, quantile: float | None = None) -> Drift | None:
    """The drift of any metric drift speaks of: a timing's ``quantile``, a level or a rate."""
    if name in LEVELS:
        return level_drift(timeline, name)
    if name in RATES:
        return rate_drift(timeline, name)
    return timing_drift(timeline, name, quantile or 50.0)


def change_points(starts: Sequence[float], values: Sequence[float]) -> list[ChangePoint]:
    """The shifts in level of ``values`` (positive, one per window starting at ``starts``)."""
    if len(values) < MIN_WINDOWS:
        return []
    signal = np.log(np.asarray(values, dtype=np.float64))
    # noise from neighbouring differences: a level shift is one large difference, bursts are few
    sigma = 1.4826 * float(np.median(np.abs(np.diff(signal)))) / math.sqrt(2)
    if sigma <= 0:
        sigma = float(np.std(signal)) or 1e-9
    penalty = PENALTY * sigma * math.log(len(signal))
    import ruptures  # heavy (and scipy's): imported by the process that judges a run, when it does

    ends = ruptures.Pelt(model="l1", min_size=MIN_SEGMENT, jump=1).fit(signal).predict(pen=penalty)
    bounds = [0, *ends]
    level = [float(np.exp(np.median(signal[a:b]))) for a, b in zip(bounds, bounds[1:], strict=False)]
    return [ChangePoint(float(starts[b]), level[i], level[i + 1]) for i, b in enumerate(bounds[1:-1])]


def timing_change_points(timeline: dict[str, Any], timing: str, quantile: float = 95) -> list[ChangePoint]:
    return change_points(*series(timeline, timing, quantile))


def drifts(timeline: dict[str, Any], timings: Sequence[str], quantiles: Sequence[float] = (50, 95)) -> dict[str, Any]:
    """For the JSON summary: each timing's drift at each quantile (None where there is too little)."""
    out: dict[str, Any] = {}
    for timing in timings:
        found = {f"p{q:g}": timing_drift(timeline, timing, q) for q in quantiles}
        out[timing] = {key: None if d is None else d.to_dict() for key, d in found.items()}
    for name in (*LEVELS, *RATES):
        found_other = metric_drift(timeline, name)
        out[name] = None if found_other is None else found_other.to_dict()
    return out


def changes(timeline: dict[str, Any], timings: Sequence[str], quantile: float = 95) -> dict[str, Any]:
    """For the JSON summary: each timing's change-points in its p95 (a list, empty when steady)."""
    return {timing: [c.to_dict() for c in timing_change_points(timeline, timing, quantile)] for timing in timings}
