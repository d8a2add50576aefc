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
        line = f"{timing.value:<18}{stats['count']:>8}" + "".join(f"{c:>10}" for c in cells)
        if timing is Timing.RECONNECT:
            rate = summary.get("reconnects_per_session_minute")
            shown = "-" if rate is None else f"{rate:.3g}"
            line += f"   reconnects per session-minute: {shown}"
        lines.append(line)
    calls = summary["calls"]
    lines.append("calls: " + ", ".join(f"{k} {_n(v)}" for k, v in calls.items()))
    if summary.get("errors"):
        lines.append("errors: " + ", ".join(f"{k} {_n(v)}" for k, v in summary["errors"].items()))
    saturated = summary.get("saturated_seconds") or 0
    if saturated:
        lines.append(
            f"generator saturated for {saturated:.0f} s: latencies recorded then include the generator's own delay"
        )
    return "\n".join(lines)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def _n(value: float) -> str:
    return f"{value:g}"
