"""The run over time: its recordings in a bounded number of wall-clock windows.

A window holds what :class:`~athos_load.metrics.Metrics` records, binned by when it happened:
each timing's histogram (1% accuracy: a window's percentile is for a plot or a baseline, and
a tenth of the run-wide histogram's memory), the counters, and the peaks of levels (active
calls, users, the generator's CPU). Windows start at ``BASE_SECONDS`` wide and sit on multiples
of their width since the epoch; when a run outgrows ``MAX_WINDOWS`` the width doubles and
neighbours merge, so an hour or a week holds the same memory and nothing recorded is dropped.
Beside the whole run, :class:`RecentWindows` keeps the newest ``RECENT_WINDOWS`` at the base width
(the run as it is now, at full resolution, for the live tab), dropping the oldest instead.

Because every process bins on the same epoch-aligned grid, a worker's windows (sent in its
delta at the width it keeps, which is the base: a delta holds seconds) fold exactly into the
master's coarser ones. Wall-clock time, not monotonic: the windows of different processes must
name the same seconds.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .histogram import LogHistogram

BASE_SECONDS = 1.0
MAX_WINDOWS = 120  # enough points for a plot over time; a soak of a day has 15-minute windows
RECENT_WINDOWS = 60  # the newest windows also kept at the base width (RecentWindows)


class WindowHistogram(LogHistogram):
    """A window's timing: 1% percentiles, ~9 KB."""

    __slots__ = ()
    relative_accuracy = 0.01


class Window:
    """What happened in one window: timings, counter increments and level peaks."""

    __slots__ = ("timings", "counters", "peaks")

    def __init__(self) -> None:
        self.timings: dict[str, WindowHistogram] = {}
        self.counters: Counter[tuple[str, tuple[str, ...]]] = Counter()
        self.peaks: dict[tuple[str, str], float] = {}  # (level, source) -> highest seen

    def histogram(self, name: str) -> WindowHistogram:
        hist = self.timings.get(name)
        if hist is None:
            hist = self.timings[name] = WindowHistogram()
        return hist

    def merge(self, other: Window, source: str | None = None) -> None:
        """Add ``other`` in; its peaks are re-labelled ``source`` when given (a worker's own label)."""
        for name, hist in other.timings.items():
            self.histogram(name).merge(hist)
        self.counters.update(other.counters)
        for (level, own), value in other.peaks.items():
            self.peak(level, source or own, value)

    def peak(self, level: str, source: str, value: float) -> None:
        key = (level, source)
        if value > self.peaks.get(key, -np.inf):
            self.peaks[key] = value

    def level(self, level: str, how: Callable[[list[float]], float] = sum) -> float | None:
        """A level's peak over every source: summed (calls, users) or the worst (``max``, CPU)."""
        values = [v for (name, _), v in self.peaks.items() if name == level]
        return how(values) if values else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "timings": {name: hist.to_dict() for name, hist in self.timings.items()},
            "counters": [[family, list(labels), n] for (family, labels), n in self.counters.items() if n],
            "peaks": [[level, source, v] for (level, source), v in self.peaks.items()],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Window:
        window = cls()
        window.timings = {name: WindowHistogram.from_dict(h) for name, h in data["timings"].items()}
        for family, labels, n in data["counters"]:
            window.counters[(family, tuple(labels))] += n
        for level, source, value in data["peaks"]:
            window.peak(level, source, value)
        return window


class Timeline:
    """Windows keyed by their index on the grid of ``width`` seconds (start = index * width)."""

    def __init__(self, *, clock: Callable[[], float] = time.time, max_windows: int = MAX_WINDOWS) -> None:
        self.clock = clock
        self.max_windows = max_windows
        self.width = BASE_SECONDS
        self.windows: dict[int, Window] = {}

    # -- recording (all into the window of now) ------------------------------------------------------

    def now(self) -> Window:
        t = self.clock()
        window = self.windows.get(int(t // self.width))
        if window is None:
            self.windows[int(t // self.width)] = Window()
            self._bound()  # may coarsen: the new window merges into a wider one
            window = self.windows[int(t // self.width)]
        return window

    def observe(self, name: str, seconds: float) -> None:
        self.now().histogram(name).record(seconds)

    def observe_many(self, name: str, seconds: np.ndarray) -> None:
        self.now().histogram(name).record_many(seconds)

    def count(self, family: str, labels: tuple[str, ...], amount: float = 1) -> None:
        self.now().counters[(family, labels)] += amount

    def peak(self, level: str, source: str, value: float) -> None:
        self.now().peak(level, source, value)

    def spread(self, family: str, labels: tuple[str, ...], start: float, end: float) -> None:
        """Count the seconds from ``start`` to ``end`` (epoch) into the windows they fell in, so a
        quantity that accrues (session seconds) sits where it accrued, not where it was reported."""
        self.now()  # the window of now exists (and the grid is as coarse as it will be for this)
        while end // self.width - start // self.width >= self.max_windows:  # longer than the timeline
            self._coarsen()
        first, last = int(start // self.width), int(end // self.width)
        for index in range(first, last + 1):
            low, high = max(start, index * self.width), min(end, (index + 1) * self.width)
            if high > low:
                window = self.windows.get(index)
                if window is None:
                    window = self.windows[index] = Window()
                window.counters[(family, labels)] += high - low
        self._bound()

    # -- distribution ----------------------------------------------------------------------------

    def take_delta(self) -> dict[str, Any]:
        """The windows recorded since the last call, as plain data; start afresh (at the base width:
        a long call's seconds may have coarsened this delta, not the next ones)."""
        delta = {"width": self.width, "windows": [[i, w.to_dict()] for i, w in sorted(self.windows.items())]}
        self.windows = {}
        self.width = BASE_SECONDS
        return delta

    def merge(self, delta: dict[str, Any], source: str | None = None) -> None:
        """Fold a delta in: at the coarser of the two widths (both lie on the same grid)."""
        width = float(delta["width"])
        while self.width < width:
            self._coarsen()
        ratio = round(self.width / width)
        for index, data in delta["windows"]:
            key = index // ratio
            window = self.windows.get(key)
            if window is None:
                window = self.windows[key] = Window()
            window.merge(Window.from_dict(data), source)
        self._bound()

    # -- reading ---------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[tuple[float, Window]]:
        """(start in epoch seconds, window), oldest first; windows in which nothing happened are absent."""
        for index in sorted(self.windows):
            yield index * self.width, self.windows[index]

    def _bound(self) -> None:
        while len(self.windows) > 1 and max(self.windows) - min(self.windows) >= self.max_windows:
            self._coarsen()

    def _coarsen(self) -> None:
        """Double the width: each pair of neighbours on the grid merges into one."""
        merged: dict[int, Window] = {}
        for index, window in sorted(self.windows.items()):
            target = merged.get(index // 2)
            if target is None:
                merged[index // 2] = window
            else:
                target.merge(window)
        self.windows = merged
        self.width *= 2


class RecentWindows(Timeline):
    """The newest :data:`RECENT_WINDOWS` windows at the base width: the run as it is now at full
    resolution, beside the whole run's :class:`Timeline`, whose windows coarsen as it grows. Here
    the oldest window is dropped instead (the whole run's timeline holds it, merged), so this keeps
    a fixed memory too. It only records and merges; it never sends a delta."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(clock=clock, max_windows=RECENT_WINDOWS)

    def spread(self, family: str, labels: tuple[str, ...], start: float, end: float) -> None:
        """As :meth:`Timeline.spread`, over the windows kept: seconds older than those are dropped here."""
        first_kept = (end // self.width - self.max_windows + 1) * self.width
        super().spread(family, labels, max(start, first_kept), end)

    def merge(self, delta: dict[str, Any], source: str | None = None) -> None:
        """Fold a delta in at the base width; a window of a coarser delta lands on its first second."""
        ratio = max(1, round(float(delta["width"]) / self.width))
        for index, data in delta["windows"]:
            key = index * ratio
            window = self.windows.get(key)
            if window is None:
                window = self.windows[key] = Window()
            window.merge(Window.from_dict(data), source)
        self._bound()

    def _bound(self) -> None:
        while len(self.windows) > 1 and max(self.windows) - min(self.windows) >= self.max_windows:
            del self.windows[min(self.windows)]
