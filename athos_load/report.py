"""Human-readable views of a run's JSON summary."""

from __future__ import annotations

from typing import Any

from .metrics import Timing


def format_table(summary: dict[str, Any]) -> str:
    """The short table a headless run prints at the end: timings in ms, then call outcomes."""
    lines = [f"{'athos timing':<18}{'count':>8}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'max ms':>10}"]
    for timing in Timing:
        stats = summary[timing.value]
        cells = [_ms(stats[k]) for k in ("p50", "p95", "p99", "max")]
        lines.append(f"{timing.value:<18}{stats['count']:>8}" + "".join(f"{c:>10}" for c in cells))
    calls = summary["calls"]
    lines.append("calls: " + ", ".join(f"{k} {v}" for k, v in calls.items()))
    if summary.get("errors"):
        lines.append("errors: " + ", ".join(f"{k} {v}" for k, v in summary["errors"].items()))
    return "\n".join(lines)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"
