"""Comparing a run with a baseline run: is it worse by more than a limit, beyond noise?

Two runs with the same settings never give the same p95: a load test's latencies come in bursts
(a slow second slows every call in it), so the spread between runs is wider than the spread of
independent samples. The comparison therefore resamples *time windows*, not calls: a moving-block
bootstrap over each run's windows (:mod:`athos_load.timeline`; blocks of ``n ** (1/3)`` adjacent
windows keep bursts together), merging the resampled windows' histograms and taking the statistic
of each resample. The ratio current / baseline of many such resamples gives a one-sided 95% lower
bound; the run has regressed when even that bound exceeds ``1 + limit``. Noise alone then fails a
run about 5% of the time when the true slowdown is exactly at the limit, and less below it; a
short run may not have the power to show a small regression (its bound stays low): the result
shows the bound so a reader can tell.

Numpy only (no scipy): the whole bootstrap is one matrix product of resample weights by window
counts, and the percentile of every resampled row at once (:func:`~athos_load.histogram.bucket_percentiles`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .histogram import bucket_percentiles
from .metrics import Timing
from .timeline import WindowHistogram
from .userfiles import read_json, shown

RESAMPLES = 2000
CONFIDENCE = 0.95
MIN_WINDOWS = 5  # fewer windows than this cannot show how a run varies over time


def _kind(value: Any) -> str:
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return kinds.get(type(value), type(value).__name__)


def _histogram(entry: Any) -> WindowHistogram:
    """One window's timing as written by the summary (``{..., "h": {i, c, n, s, lo, hi}}``), checked:
    bucket indices in range, counts whole and not negative, adding up to ``n``."""
    if not isinstance(entry, dict) or not isinstance(entry["h"], dict):
        raise TypeError("expected an object with a histogram 'h'")
    data = entry["h"]
    indices, counts = data["i"], data["c"]
    if not (isinstance(indices, list) and isinstance(counts, list) and len(indices) == len(counts)):
        raise ValueError("'i' and 'c' must be lists of the same length")
    if not all(type(v) is int for v in (*indices, *counts, data["n"])):
        raise ValueError("bucket indices and counts must be whole numbers")
    if any(not 0 <= i < WindowHistogram.size for i in indices) or any(not 0 <= c < 2**62 for c in counts):
        raise ValueError("a bucket index out of range or a negative count")
    if sum(counts) != data["n"]:
        raise ValueError(f"its counts add up to {sum(counts)}, not n = {data['n']}")
    numbers = ("s", "lo", "hi") if data["n"] else ("s",)
    if not all(isinstance(data[k], (int, float)) and math.isfinite(data[k]) for k in numbers):
        raise ValueError("'s', 'lo' and 'hi' must be finite numbers")
    return WindowHistogram.from_dict(data)


class BaselineError(ValueError):
    """A baseline file that cannot be compared with (the text names the file and why)."""


@dataclass(frozen=True)
class Baseline:
    """A previous run's JSON summary: its per-window histograms and its settings."""

    path: str
    windows: list[dict[str, Any]]
    settings: dict[str, Any]
    _histograms: dict[str, list[WindowHistogram]] = field(default_factory=dict, init=False, compare=False, repr=False)

    @classmethod
    def load(cls, path: str | Path) -> Baseline:
        """Read and check the whole file (see ``__post_init__``), or :class:`BaselineError`."""
        summary = read_json(path, BaselineError)
        name = shown(path)
        timeline = summary.get("timeline") if isinstance(summary, dict) else None
        if not isinstance(timeline, dict) or not isinstance(timeline.get("windows"), list):
            raise BaselineError(
                f"{name}: no 'timeline' windows: not an athos-load JSON summary (--athos-summary), "
                "or one written before time windows"
            )
        settings = summary.get("settings") or {}
        if not isinstance(settings, dict):
            raise BaselineError(f"{name}: settings: expected an object, got {_kind(settings)}")
        return cls(name, timeline["windows"], settings)

    def __post_init__(self) -> None:
        """Decode and check every window's histograms now: a baseline that cannot be compared with
        must not be found out at the end of the run, when it would cost the verdict."""
        histograms: dict[str, list[WindowHistogram]] = {timing.value: [] for timing in Timing}
        for index, window in enumerate(self.windows):
            if not isinstance(window, dict):
                raise BaselineError(f"{self.path}: timeline.windows[{index}]: expected an object, got {_kind(window)}")
            for timing, found in histograms.items():
                if timing not in window:
                    continue
                try:
                    found.append(_histogram(window[timing]))
                except (KeyError, TypeError, ValueError, IndexError, OverflowError) as exc:
                    problem = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
                    raise BaselineError(
                        f"{self.path}: timeline.windows[{index}].{timing}: not a histogram of this tool's ({problem})"
                    ) from None
        object.__setattr__(self, "_histograms", histograms)  # frozen: set once, here

    def histograms(self, timing: str) -> list[WindowHistogram]:
        """A timing's per-window histograms (decoded and checked when the file was loaded)."""
        return self._histograms.get(timing, [])

    def differences(self, settings: dict[str, Any]) -> list[str]:
        """What this run was asked to do differently from the baseline (a comparison of unlikes)."""
        keys = ("users", "spawn_rate", "run_time", "workers", "scenarios")
        return [
            f"{key}: baseline {self.settings.get(key)!r}, this run {settings.get(key)!r}"
            for key in keys
            if key in self.settings and self.settings.get(key) != settings.get(key)
        ]


@dataclass(frozen=True)
class Comparison:
    baseline: float | None  # the statistic over each whole run
    current: float | None
    ratio: float | None  # current / baseline
    lower: float | None  # one-sided lower confidence bound of the ratio
    samples: int  # the smaller run's sample count
    windows: int  # the smaller run's window count


def compare(
    baseline: list[WindowHistogram],
    current: list[WindowHistogram],
    quantile: float | None,
    *,
    seed: int = 0,
    resamples: int = RESAMPLES,
) -> Comparison:
    """The statistic (``quantile`` 0–100, or the mean when None) of two runs and their ratio's bound."""
    baseline = [h for h in baseline if h.count]
    current = [h for h in current if h.count]
    samples = min(sum(h.count for h in baseline), sum(h.count for h in current))
    windows = min(len(baseline), len(current))
    if not baseline or not current:
        return Comparison(None, None, None, None, samples, windows)
    columns = np.union1d(*(np.flatnonzero(sum(h.counts for h in run)) for run in (baseline, current)))
    values = WindowHistogram.bucket_values(columns)
    rng = np.random.default_rng(seed)
    stats = []
    for run in (baseline, current):
        counts = np.stack([h.counts[columns] for h in run]).astype(np.float64)
        sums = np.array([h.sum for h in run])
        whole = _statistic(counts.sum(axis=0, keepdims=True), sums.sum(keepdims=True), values, quantile)[0]
        weights = _block_weights(len(run), resamples, rng)
        stats.append((whole, _statistic(weights @ counts, weights @ sums, values, quantile)))
    (base, base_resampled), (cur, cur_resampled) = stats
    ratio = cur / base if base > 0 else None
    ratios = cur_resampled / np.maximum(base_resampled, 1e-12)
    lower = float(np.quantile(ratios, 1.0 - CONFIDENCE))
    return Comparison(float(base), float(cur), ratio, lower, samples, windows)


def _block_weights(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """How many times each of ``n`` windows is drawn, per resample (moving blocks of adjacent windows)."""
    length = max(1, round(n ** (1 / 3)))
    blocks = math.ceil(n / length)
    starts = rng.integers(0, n - length + 1, size=(resamples, blocks))
    drawn = (starts[:, :, None] + np.arange(length)).reshape(resamples, -1)[:, :n]
    weights = np.zeros((resamples, n))
    np.add.at(weights, (np.arange(resamples)[:, None], drawn), 1.0)
    return weights


def _statistic(counts: np.ndarray, sums: np.ndarray, values: np.ndarray, quantile: float | None) -> np.ndarray:
    """Per row of bucket counts: the quantile (the histograms' own definition) or the mean."""
    if quantile is None:
        return sums / np.maximum(counts.sum(axis=1), 1)
    return bucket_percentiles(counts, values, quantile)
