"""How a run changed over time: drift, a timing's percentile growing (or shrinking) per hour.

A soak finds what a short test cannot: latency that creeps up. Drift is the slope of a timing's
percentile over the run's time windows (:mod:`athos_load.timeline`), from the Theil–Sen estimator
(``scipy.stats.theilslopes``): the median of the slopes between every pair of windows, so a burst
of slow windows moves it little where a least-squares line would follow them; Sen's interval at
:data:`CONFIDENCE` says how sure it is, and a drift gate fails only when that whole interval lies
past its limit. Drift is relative: the slope over the fitted level at the first window measured,
so ``+10%/h`` reads the same for a 200 ms and a 2 s timing.

The first :data:`WARMUP_SHARE` of the windows (the ramp-up) and windows with fewer than
:data:`MIN_SAMPLES` samples are left out; fewer than :data:`MIN_WINDOWS` windows give no drift.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import theilslopes

from .timeline import WindowHistogram

CONFIDENCE = 0.95
MIN_WINDOWS = 6  # fewer points cannot tell a trend from a burst
MIN_SAMPLES = 5  # a window's percentile from fewer samples is mostly noise
WARMUP_SHARE = 0.1  # the first tenth of the windows is the ramp-up, not the platform's trend


@dataclass(frozen=True)
class Drift:
    """A relative slope per hour (0.1: +10% of the starting level an hour) and its interval."""

    per_hour: float
    low: float
    high: float
    level: float  # the fitted value at the first window measured (seconds for a timing)
    windows: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "per_hour": round(self.per_hour, 6),
            "low": round(self.low, 6),
            "high": round(self.high, 6),
            "level": round(self.level, 6),
            "windows": self.windows,
        }

    def shown(self) -> str:
        pct = int(CONFIDENCE * 100)
        return f"{self.per_hour:+.1%}/h ({pct}% interval {self.low:+.1%} to {self.high:+.1%}/h)"


def drift(times: Sequence[float], values: Sequence[float]) -> Drift | None:
    """The drift of ``values`` observed at ``times`` (seconds); None with too few points or no level."""
    if len(times) < MIN_WINDOWS or len(times) != len(values):
        return None
    hours = (np.asarray(times, dtype=np.float64) - times[0]) / 3600.0
    if hours[-1] <= 0:
        return None
    fit = theilslopes(np.asarray(values, dtype=np.float64), hours, alpha=CONFIDENCE)
    level = float(fit.intercept)
    if not (level > 0 and math.isfinite(fit.slope)):
        return None
    return Drift(fit.slope / level, fit.low_slope / level, fit.high_slope / level, level, len(times))


def timing_drift(timeline: dict[str, Any], timing: str, quantile: float) -> Drift | None:
    """The drift of a timing's ``quantile`` over a summary's ``timeline`` (its windows' histograms)."""
    width = float(timeline.get("window_seconds") or 1.0)
    windows = [w for w in timeline.get("windows", []) if (w.get(timing) or {}).get("count", 0) >= MIN_SAMPLES]
    windows = windows[math.ceil(WARMUP_SHARE * len(windows)) :]
    times, values = [], []
    for window in windows:
        value = WindowHistogram.from_dict(window[timing]["h"]).percentile(quantile)
        if value is not None:
            times.append(window["start"] + width / 2)
            values.append(value)
    return drift(times, values)


def drifts(timeline: dict[str, Any], timings: Sequence[str], quantiles: Sequence[float] = (50, 95)) -> dict[str, Any]:
    """For the JSON summary: each timing's drift at each quantile (None where there is too little)."""
    out: dict[str, Any] = {}
    for timing in timings:
        found = {f"p{q:g}": timing_drift(timeline, timing, q) for q in quantiles}
        out[timing] = {key: None if d is None else d.to_dict() for key, d in found.items()}
    return out
