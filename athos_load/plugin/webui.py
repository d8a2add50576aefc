"""The run in progress, in Locust's web UI: three tabs beside Locust's own.

Locust's tables show its own percentiles per step. What a release is judged on is the tool's:
0.1% histograms, the gates, the calls' accounting, scoring, the generator's health. The tabs show
those while the run goes on, read from the objects the summary and the gates read (on a master,
every worker's recordings merged), so the end of the run holds no surprise. The third tab is the
run as it is now: the newest windows at full resolution (a second each), one row each; drift and
change-points over the whole run close the run tab.

Locust's extension mechanism: ``extended_tabs`` and ``extended_tables`` in the page's template
arguments declare the tabs and their columns; an ``extended_stats`` entry in the ``/stats/requests``
JSON that the page polls carries their rows. ``/?tab=athos`` opens the first tab.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from flask import request

from .. import trends
from ..gates import Gate, GateResult, Regression, RegressionResult, format_value
from ..metrics import Metrics, Outcome, ScoreOutcome, Timing
from ..report import clock_text, count_text, ms_text, trend_rows
from ..trends import changes, drifts

logger = logging.getLogger(__name__)

TIMINGS_TAB = "athos"
RUN_TAB = "athos-run"
WINDOWS_TAB = "athos-windows"
TABS = [
    {"title": "Athos timings", "key": TIMINGS_TAB},
    {"title": "Athos run", "key": RUN_TAB},
    {"title": "Athos over time", "key": WINDOWS_TAB},
]
SHOWN_WINDOWS = 30  # the newest windows in the tab, at full resolution; the report plots the whole run
TRENDS_EVERY = 5.0  # seconds between recomputing windows, drift and change-points for the tab
# column keys are plain words: the page camel-cases the keys it is given, and a plain word stays as it is
TABLES = [
    {
        "key": TIMINGS_TAB,
        "structure": [
            {"key": "timing", "title": "Timing"},
            {"key": "count", "title": "Count"},
            {"key": "p50", "title": "p50 ms"},
            {"key": "p95", "title": "p95 ms"},
            {"key": "p99", "title": "p99 ms"},
            {"key": "max", "title": "Max ms"},
        ],
    },
    {
        "key": RUN_TAB,
        "structure": [
            {"key": "what", "title": "What"},
            {"key": "value", "title": "Now"},
            {"key": "state", "title": "State"},
        ],
    },
    {
        "key": WINDOWS_TAB,
        "structure": [
            {"key": "start", "title": "Window from"},
            {"key": "active", "title": "Calls active"},
            {"key": "ready", "title": "connect_ready p95 ms"},
            {"key": "response", "title": "persona_response p95 ms"},
            {"key": "reconnects", "title": "Reconnects per session-min"},
            {"key": "errors", "title": "Errors per call"},
            {"key": "scores", "title": "Scores missing / pending"},
            {"key": "generator", "title": "Generator"},
        ],
    },
]
STATS_PATH = "/stats/requests"  # what the page polls, under any --web-base-path


def install_tab(environment: Any, rows: Callable[[], list[dict[str, Any]]]) -> None:
    """Add the tabs to ``environment.web_ui`` (Locust's ``WebUI``); ``rows()`` gives their rows
    now (:func:`extended_stats`), read at every poll, so they follow the run.

    Locust merges its own template arguments into ``template_args`` on every page load, so keys
    set once stay. The rows are added to each ``/stats/requests`` answer; anything going wrong
    there is logged once and leaves Locust's own answer as it was.
    """
    web_ui = environment.web_ui
    args = web_ui.template_args
    ours = {tab["key"] for tab in TABS}
    args["extended_tabs"] = [t for t in args.get("extended_tabs") or [] if t.get("key") not in ours] + TABS
    args["extended_tables"] = [t for t in args.get("extended_tables") or [] if t.get("key") not in ours] + TABLES
    failed = False

    def add_rows(response: Any) -> Any:
        nonlocal failed
        if not request.path.endswith(STATS_PATH) or response.status_code != 200 or response.direct_passthrough:
            return response
        try:
            body = json.loads(response.get_data())
            others = [s for s in body.get("extended_stats") or [] if s.get("key") not in ours]
            body["extended_stats"] = others + rows()
            response.set_data(json.dumps(body))
        except Exception:  # noqa: BLE001 - Locust's own stats page must keep working
            if not failed:
                failed = True
                logger.exception("athos-load: the web UI's Athos tabs cannot be filled; they stay as they were")
        return response

    web_ui.app.after_request(add_rows)


class OverTime:
    """The run over time for the tabs: the newest windows' rows and the drift and change-point rows,
    recomputed at most every :data:`TRENDS_EVERY` seconds (the windows' histograms are re-read and
    the fits redone each time: a few ms that a tab polled every two seconds need not pay each poll)."""

    def __init__(self, metrics: Metrics, every: float = TRENDS_EVERY, clock: Callable[[], float] = time.monotonic):
        self.metrics, self.every, self.clock = metrics, every, clock
        self._at = -math.inf
        self.windows: list[dict[str, str]] = []
        self.trends: list[dict[str, str]] = []

    def refresh(self) -> None:
        if self.clock() - self._at < self.every:
            return
        self._at = self.clock()
        timeline = self.metrics.timeline_summary()
        names = [t.value for t in Timing]
        summary = {"drift": drifts(timeline, names), "change_points": changes(timeline, names)}
        self.trends = [_row(what, value, state) for what, value, state in trend_rows(summary)]
        recent = timeline["recent"]  # the newest windows at full resolution
        newest = reversed(recent["windows"][-SHOWN_WINDOWS:])
        self.windows = [window_row(w, recent["window_seconds"]) for w in newest]


def extended_stats(
    metrics: Metrics, gates: list[Gate | Regression], frame_seconds: float, over_time: OverTime | None = None
) -> list[dict[str, Any]]:
    """The rows of the tabs, as ``/stats/requests`` carries them."""
    summary = metrics.summary()
    over_time = over_time or OverTime(metrics)
    over_time.refresh()
    return [
        {"key": TIMINGS_TAB, "data": timing_rows(summary)},
        {"key": RUN_TAB, "data": run_rows(metrics, summary, gates, frame_seconds) + over_time.trends},
        {"key": WINDOWS_TAB, "data": over_time.windows},
    ]


def window_row(window: dict[str, Any], width: float) -> dict[str, str]:
    """One window of :meth:`Metrics.timeline_summary` as the tab shows it (``-``: nothing to say)."""
    reconnects, errors = (trends.RATES[name](window) for name in ("reconnects_per_session_minute", "errors"))
    rss, cpu = window.get("rss_bytes"), window.get("cpu_ratio")
    generator = "-" if rss is None else f"{rss / 2**20:.0f} MiB, CPU {cpu or 0:.0%}"
    return {
        "start": f"{clock_text(window['start'])} ({width:g} s)",
        "active": count_text(window.get("active_calls") or 0),
        "ready": ms_text((window.get("connect_ready") or {}).get("p95")),
        "response": ms_text((window.get("persona_response") or {}).get("p95")),
        "reconnects": "-" if reconnects is None else f"{reconnects:.3g}",
        "errors": "-" if errors is None else f"{errors:.3g}",
        "scores": " / ".join(
            count_text(window["calls"].get(o.value, 0)) for o in (ScoreOutcome.MISSING, ScoreOutcome.PENDING)
        ),
        "generator": generator,
    }


def timing_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per timing of :meth:`Metrics.summary`: count and percentiles in ms (``-``: none yet)."""
    rows = []
    for timing in Timing:
        stats = summary[timing.value]
        cells = {k: ms_text(stats[k]) for k in ("p50", "p95", "p99", "max")}
        rows.append({"timing": timing.value, "count": stats["count"], **cells})
    return rows


def run_rows(
    metrics: Metrics, summary: dict[str, Any], gates: list[Gate | Regression], frame_seconds: float
) -> list[dict[str, Any]]:
    """Calls by outcome, scores, errors, reconnects, the generator's health, then each gate now."""
    calls = summary["calls"]
    # live: completed calls whose score has not come yet; after the drain, exactly score_pending
    settled = (ScoreOutcome.SCORED, ScoreOutcome.MISSING, ScoreOutcome.FAILED)
    pending = calls[Outcome.COMPLETED.value] - sum(calls[o.value] for o in settled)
    rows = [
        _row("calls started", count_text(calls["started"])),
        _row("calls in progress", str(metrics.active_calls())),
        *(_row(f"calls {outcome.value}", count_text(calls[outcome.value])) for outcome in Outcome),
        _row("scores arrived", count_text(calls[ScoreOutcome.SCORED.value])),
        _row("scores pending", count_text(pending), "waiting for call.scored" if pending else ""),
        _row(
            "scores missing",
            count_text(calls[ScoreOutcome.MISSING.value]),
            "lost by the platform" if calls[ScoreOutcome.MISSING.value] else "",
        ),
        _row(
            "scores failed",
            count_text(calls[ScoreOutcome.FAILED.value]),
            ", ".join(f"{k} {count_text(n)}" for k, n in (summary.get("score_failed_reasons") or {}).items()),
        ),
        _row("errors", ", ".join(f"{code} {count_text(n)}" for code, n in summary["errors"].items()) or "none"),
    ]
    rate = summary["reconnects_per_session_minute"]  # None until a call that reached ready has ended
    session = f"{count_text(summary['reconnects'])} reconnects in {summary['session_minutes']:.1f} session-minutes"
    shown = "- (no call has ended yet)" if rate is None else f"{rate:.3g} ({session})"
    rows.append(_row("reconnects per session-minute", shown))
    rows += [_generator_row(source, health) for source, health in sorted(metrics.health.items())]
    lag = summary["audio_send_lag"]["p99"]
    if lag is not None:
        late = lag > frame_seconds
        rows.append(
            _row(
                "audio send lag p99",
                f"{lag * 1000:.1f} ms (a frame is {frame_seconds * 1000:.0f} ms)",
                "late: the run is invalid" if late else "on time",
            )
        )
    for gate in gates:
        # a baseline comparison is a bootstrap: a tenth of the resamples keeps a poll cheap for the
        # generator's own loop (the verdict at the end uses them all)
        result = gate.evaluate(metrics, resamples=200) if isinstance(gate, Regression) else gate.evaluate(metrics)
        rows.append(gate_row(result))
    return rows


def gate_row(result: GateResult | RegressionResult) -> dict[str, str]:
    """A gate as it stands now: passing, failing, or not enough samples yet to judge it."""
    gate = result.gate
    what = f"gate {gate}" + (" (stops the run when failing)" if gate.abort_on_fail else "")
    value = format_value(result)
    counted = isinstance(result, GateResult) and result.gate.aggregate not in ("count", "value")
    if result.observed is not None and counted:  # a count has no sample size
        value += f" over {result.samples} sample{'s' if result.samples != 1 else ''}"
    if isinstance(result, RegressionResult) and result.passed is None:
        state = f"not enough data: {result.shortfall()}"
    elif result.passed is None:
        state = f"not enough samples ({result.samples} of {gate.min_samples})"
    else:
        state = "passing" if result.passed else "failing"
    return _row(what, value, state)


def _generator_row(source: str, health: dict[str, float]) -> dict[str, str]:
    cpu, lag, memory = (health.get(k, 0.0) for k in ("cpu_ratio", "loop_lag_p99", "memory_bytes"))
    value = f"CPU {cpu:.0%} of a core, loop lag p99 {lag * 1000:.1f} ms, memory {memory / 2**20:.0f} MiB"
    seconds = health.get("saturated_seconds", 0.0)
    if seconds:
        value += f", saturated {seconds:.0f} s so far"
    state = "saturated: its timings include its own delay" if health.get("saturated") else "healthy"
    what = {"local": "generator", "master": "master (runs no users)"}.get(source, f"generator {source}")
    return _row(what, value, state)


def _row(what: str, value: str, state: str = "") -> dict[str, str]:
    return {"what": what, "value": value, "state": state}
