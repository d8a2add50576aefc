"""A run's verdict (passed, failed or invalid, with the reasons) and its exit codes: each code
means one thing to a CI job (see docs/ci.md).

Locust itself exits 0, 1 (a request failed, with no verdict of ours) or 2 (bad input or a crash);
the tool's own verdicts take codes Locust never uses.
"""

from __future__ import annotations

import enum
from typing import Any

from .gates import GateResult, RegressionResult, format_value


class ExitCode(enum.IntEnum):
    PASSED = 0
    USAGE = 2  # a bad option, file or target, found before or as the run started (Locust's code for bad input)
    GATE_FAILED = 3  # the run is valid and a gate failed (a capacity search found no good level)
    INVALID = 4  # the run's numbers cannot be trusted


SATURATED_SHARE = 0.10  # a run saturated longer than this share of its time is invalid


def verdict(
    results: list[GateResult | RegressionResult],
    summary: dict[str, Any],
    *,
    duration: float,
    frame_seconds: float,
    aborted_by: GateResult | None = None,
) -> dict[str, Any]:
    """``passed``, ``failed`` or ``invalid``, with the reasons, for the JSON summary.

    Invalid (the numbers cannot be trusted) wins over failed: no call completed, a gate had too few
    samples, a generator was saturated for more than :data:`SATURATED_SHARE` of the run, a worker
    was lost mid-run, or the audio send lag p99 exceeded one frame. A run stopped by an
    ``abort_on_fail`` gate has failed.
    """
    invalid: list[str] = []
    if summary["calls"]["completed"] == 0:
        invalid.append("no call completed")
    for result in results:
        if result.passed is None:
            invalid.append(f"{result.gate}: {result.shortfall()}")
    saturated = summary.get("saturated_seconds") or 0.0
    if duration > 0 and saturated > SATURATED_SHARE * duration:
        invalid.append(
            f"the generator was saturated for {saturated:.0f} s of {duration:.0f} s "
            f"(more than {SATURATED_SHARE:.0%}): its latencies include its own delay"
        )
    for worker in summary.get("lost_workers") or []:
        invalid.append(
            f"worker {worker['worker']} was lost ({worker['why']}) at {worker['at']}: "
            f"{worker['calls_lost']:g} unfinished calls counted lost"
        )
    lag = (summary.get("audio_send_lag") or {}).get("p99")
    if lag is not None and lag > frame_seconds:
        invalid.append(f"audio send lag p99 {lag * 1000:.1f} ms exceeded one frame ({frame_seconds * 1000:.0f} ms)")
    failed = [f"{r.gate}: observed {format_value(r)}" for r in results if r.passed is False]
    if aborted_by is not None:
        # stopped because a gate failed on enough samples: that failure stands, however short the run
        failed = failed or [f"{aborted_by.gate}: observed {format_value(aborted_by)}"]
        return {
            "status": "failed",
            "reasons": failed,
            "aborted": f"stopped early: {aborted_by.gate} failed (observed {format_value(aborted_by)})",
        }
    status = "invalid" if invalid else "failed" if failed else "passed"
    return {"status": status, "reasons": invalid if invalid else failed}
