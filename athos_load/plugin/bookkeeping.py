"""Locust's own bookkeeping, kept bounded for soaks.

On a local or master runner Locust keeps, for the whole run, every stats entry's requests and
failures per second (``num_reqs_per_sec``, ``num_fail_per_sec``: a dict key per entry per second)
and a row of ``stats.history`` every 5 s for the web UI's charts and the HTML report. Over days
that is the generator's memory growing with time, which a soak would read as a leak. What Locust
shows from them is bounded: the current RPS looks back 12 s, and the charts need the run's shape,
not every 5-second row. So :func:`trim` drops per-second counts older than :data:`KEEP_SECONDS`
and, past :data:`MAX_HISTORY` rows, keeps every other row of the older half of the history: the
charts still span the whole run, coarser the further back, and totals, CSVs and percentiles
(kept elsewhere in the entry) are untouched.
"""

from __future__ import annotations

import copy
import sys

from locust.stats import RequestStats

KEEP_SECONDS = 60  # per-second counts feed only the current RPS, which reads the last 12 s
MAX_HISTORY = 2000  # rows of stats history (5 s apart: 2.8 hours at full resolution)
TRIM_EVERY = 30.0  # seconds between trims


def trim(stats: RequestStats, now: float) -> None:
    """Bound ``stats`` (a local or master runner's) as of wall-clock ``now``."""
    cutoff = int(now) - KEEP_SECONDS
    for entry in (stats.total, *stats.entries.values()):
        for name in ("num_reqs_per_sec", "num_fail_per_sec"):
            per_second = getattr(entry, name)
            if per_second and min(per_second) < cutoff:
                # a new dict, not deletions: CPython keeps a dict's table at its largest size
                kept = copy.copy(per_second)  # the same kind of dict (Locust's defaultdict)
                kept.clear()
                kept.update((second, n) for second, n in per_second.items() if second >= cutoff)
                setattr(entry, name, kept)
    history = stats.history
    if len(history) > MAX_HISTORY:
        half = len(history) // 2
        history[:] = history[:half:2] + history[half:]


def footprint(stats: RequestStats) -> dict[str, int]:
    """What Locust's bookkeeping holds now: history rows, per-second keys, and their size in bytes
    (the containers and their rows, ``sys.getsizeof``: an estimate, for the summary of a soak)."""
    entries = (stats.total, *stats.entries.values())
    per_second = [getattr(e, name) for e in entries for name in ("num_reqs_per_sec", "num_fail_per_sec")]
    size = sys.getsizeof(stats.history) + sum(sys.getsizeof(row) for row in stats.history)
    size += sum(sys.getsizeof(d) for d in per_second)
    return {
        "history_rows": len(stats.history),
        "per_second_keys": sum(len(d) for d in per_second),
        "bytes": size,
    }
