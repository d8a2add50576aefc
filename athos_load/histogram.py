"""A bounded-memory histogram with 0.1% relative error on every percentile, mergeable by addition.

Buckets grow geometrically by ``gamma = (1 + a) / (1 - a)``: a value ``x`` lands in bucket
``ceil(log_gamma(x))`` and is read back as the bucket's midpoint ``2 g^i / (g + 1)``, which is
within ``a`` (relative) of every value in the bucket (the DDSketch construction). A fixed numpy
array of counts spans 10 µs to a day, so a soak of days holds exactly as much memory as a run of
minutes, and two histograms merge exactly by adding their arrays (workers → master).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

RELATIVE_ACCURACY = 0.001  # 1 ms at 1 s: fine enough for a 5 ms fidelity target at p95
MIN_VALUE = 1e-5  # seconds; smaller values (and zero) are counted in the lowest bucket
MAX_VALUE = 86_400.0  # a day; larger values are counted in the highest bucket


class LogHistogram:
    """Counts of non-negative values (seconds) in log-spaced buckets, plus exact count/sum/min/max.

    A subclass sets another ``relative_accuracy`` (its bucket layout follows); histograms of
    different accuracies do not merge.
    """

    __slots__ = ("counts", "count", "sum", "min", "max")

    relative_accuracy = RELATIVE_ACCURACY
    _gamma: float
    _log_gamma: float
    _offset: int
    size: int

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._layout()

    @classmethod
    def _layout(cls) -> None:
        a = cls.relative_accuracy
        cls._gamma = (1 + a) / (1 - a)
        cls._log_gamma = math.log(cls._gamma)
        cls._offset = math.ceil(math.log(MIN_VALUE) / cls._log_gamma)
        cls.size = math.ceil(math.log(MAX_VALUE) / cls._log_gamma) - cls._offset + 1

    def __init__(self) -> None:
        self.counts = np.zeros(self.size, dtype=np.int64)
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    def record(self, value: float) -> None:
        index = math.ceil(math.log(value) / self._log_gamma) - self._offset if value > MIN_VALUE else 0
        self.counts[min(index, self.size - 1)] += 1
        self.count += 1
        self.sum += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value

    def record_many(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)
        if values.size == 0:
            return
        clipped = np.maximum(values, MIN_VALUE)
        index = np.ceil(np.log(clipped) / self._log_gamma).astype(np.int64) - self._offset
        np.add.at(self.counts, np.clip(index, 0, self.size - 1), 1)
        self.count += int(values.size)
        self.sum += float(values.sum())
        self.min = min(self.min, float(values.min()))
        self.max = max(self.max, float(values.max()))

    def merge(self, other: LogHistogram) -> None:
        if other.size != self.size:
            raise ValueError("histograms of different accuracies do not merge")
        self.counts += other.counts
        self.count += other.count
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def copy(self) -> LogHistogram:
        """An independent copy (of the same class and accuracy)."""
        twin = type(self)()
        twin.merge(self)
        return twin

    def since(self, earlier: LogHistogram) -> LogHistogram:
        """What was recorded after ``earlier``, a :meth:`copy` of this histogram taken before.

        Counts, count and sum subtract exactly. The extremes are exact when they moved since
        ``earlier`` (a new min or max was recorded after it); otherwise they are read from the
        lowest and highest non-empty bucket, within the histogram's relative accuracy.
        """
        if earlier.size != self.size:
            raise ValueError("histograms of different accuracies do not subtract")
        counts = self.counts - earlier.counts
        if earlier.count > self.count or counts.min(initial=0) < 0:
            raise ValueError("not an earlier copy of this histogram: it holds recordings this one does not")
        window = type(self)()
        window.counts = counts
        window.count = self.count - earlier.count
        if window.count == 0:
            return window
        window.sum = self.sum - earlier.sum
        nonzero = np.flatnonzero(counts)
        low, high = (float(v) for v in self.bucket_values(nonzero[[0, -1]]))
        # a bucket's midpoint may lie just outside the values in it: keep it within what was recorded
        window.min = self.min if self.min < earlier.min else min(max(low, self.min), self.max)
        window.max = self.max if self.max > earlier.max else max(min(high, self.max), window.min)
        return window

    def percentile(self, q: float) -> float | None:
        """The q-th percentile (0–100), numpy's linear definition, within 0.1%; None when empty."""
        if self.count == 0:
            return None
        if q >= 100:
            return self.max
        if q <= 0:
            return self.min
        values, counts = self.buckets()
        value = float(bucket_percentiles(counts[None, :], values, q)[0])
        return min(max(value, self.min), self.max)

    @classmethod
    def bucket_values(cls, indices: np.ndarray) -> np.ndarray:
        """The value each bucket (by index) reads back as: its midpoint."""
        return 2 * cls._gamma ** (np.asarray(indices, dtype=np.float64) + cls._offset) / (cls._gamma + 1)

    def buckets(self) -> tuple[np.ndarray, np.ndarray]:
        """The nonzero buckets, smallest first: each one's value (seconds) and its count."""
        index = np.flatnonzero(self.counts)
        return self.bucket_values(index), self.counts[index]

    def summary(self) -> dict[str, float | int | None]:
        """count, min, p50, p95, p99, max in seconds: the JSON summary's shape for one timing."""
        empty = self.count == 0
        return {
            "count": self.count,
            "min": None if empty else self.min,
            "p50": self.percentile(50),
            "p95": self.percentile(95),
            "p99": self.percentile(99),
            "max": None if empty else self.max,
        }

    # -- transport (worker reports are msgpack'd: plain types only, sparse) -------------------------

    def to_dict(self) -> dict[str, Any]:
        nonzero = np.flatnonzero(self.counts)
        return {
            "i": nonzero.tolist(),
            "c": self.counts[nonzero].tolist(),
            "n": self.count,
            "s": self.sum,
            "lo": self.min if self.count else None,
            "hi": self.max if self.count else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LogHistogram:
        hist = cls()
        hist.counts[np.asarray(data["i"], dtype=np.int64)] = np.asarray(data["c"], dtype=np.int64)
        hist.count = int(data["n"])
        hist.sum = float(data["s"])
        if hist.count:
            hist.min, hist.max = float(data["lo"]), float(data["hi"])
        return hist


LogHistogram._layout()


def bucket_percentiles(counts: np.ndarray, values: np.ndarray, q: float) -> np.ndarray:
    """The q-th percentile (0–100) of each row of bucket counts, numpy's linear definition with
    each bucket read as its value: the one percentile of the tool's histograms (a run's, a
    window's, and the baseline bootstrap's thousands of resampled rows in one pass).

    ``counts``: rows of counts (any non-negative numbers) over the buckets whose ``values`` are
    given, smallest first. An empty row reads as the first value.
    """
    cumulative = np.cumsum(counts, axis=1)
    rank = q / 100.0 * np.maximum(cumulative[:, -1] - 1, 0)
    below, above = np.floor(rank), np.ceil(rank)
    last = len(values) - 1
    # the bucket holding the value of rank r (0-based) is the first whose cumulative count exceeds r
    lo = np.minimum((cumulative <= below[:, None]).sum(axis=1), last)
    hi = np.minimum((cumulative <= above[:, None]).sum(axis=1), last)
    frac = rank - below
    return (1 - frac) * values[lo] + frac * values[hi]
