"""Every instrument the tool records into, in one object: Prometheus series and bounded histograms.

Each timing is observed once and lands in two places: a classic Prometheus histogram (fixed
buckets at the usual SLO thresholds, so ``le``-ratio SLIs are exact and buckets add across
workers) and a :class:`~athos_load.histogram.LogHistogram` (1% percentiles for gates, reports and
the JSON summary). Label values are low-cardinality by construction: a scenario name, an
:class:`Outcome`, an error code from the known list or ``other``; never a callId.
"""

from __future__ import annotations

import enum
from collections import Counter
from typing import Any

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client import Counter as PromCounter
from prometheus_client import Histogram as PromHistogram

from .histogram import LogHistogram
from .protocol import ErrorCode


class Timing(enum.StrEnum):
    """The timings the tool measures; the values are the JSON summary's keys."""

    CONNECT_READY = "connect_ready"
    RECONNECT = "reconnect"
    END_TO_SCORE = "end_to_score"
    PERSONA_RESPONSE = "persona_response"
    TOKEN_MINT = "token_mint"


class Outcome(enum.StrEnum):
    COMPLETED = "completed"  # the call ended normally (hang-up, persona closed, max duration)
    FAILED = "failed"  # refused, dropped for good, or an error ended it
    ABORTED = "aborted"  # cut off by the end of the run


SUB_SECOND = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
BUCKETS: dict[Timing, tuple[float, ...]] = {
    Timing.CONNECT_READY: SUB_SECOND,
    Timing.PERSONA_RESPONSE: SUB_SECOND,
    Timing.TOKEN_MINT: (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    Timing.RECONNECT: (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
    Timing.END_TO_SCORE: (1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0),
}
AUDIO_LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.1, 0.25, 1.0)
DOCS = {
    Timing.CONNECT_READY: "connecting -> ready: token redeemed and persona ready to speak",
    Timing.RECONNECT: "reconnecting -> reconnected after a transient drop",
    Timing.END_TO_SCORE: "ended -> call.scored received (webhook) or first poll that saw it scored",
    Timing.PERSONA_RESPONSE: "the rep stops speaking -> the persona starts speaking (turn latency)",
    Timing.TOKEN_MINT: "POST /v1/sessions round trip",
}
KNOWN_CODES = tuple(code.value for code in ErrorCode)


def code_label(code: object) -> str:
    """A known error code, or ``other``: a platform must not be able to grow our label set."""
    value = str(code)
    return value if value in KNOWN_CODES else "other"


class Metrics:
    """The tool's recordings for one process. Pass a fresh ``registry`` in tests."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.timings: dict[Timing, LogHistogram] = {t: LogHistogram() for t in Timing}
        self.calls: Counter[str] = Counter()  # started, completed, failed, aborted, scored, score_missing
        self.errors: Counter[str] = Counter()
        self.reconnects = 0
        self.audio_lag = LogHistogram()
        r = self.registry
        self._prom_timings = {
            t: PromHistogram(f"athos_{t.value}_seconds", DOCS[t], ["scenario"], buckets=BUCKETS[t], registry=r)
            for t in Timing
        }
        self._active = Gauge("athos_sessions_active", "calls in progress", ["scenario"], registry=r)
        self._sessions = PromCounter("athos_sessions", "finished calls by outcome", ["scenario", "outcome"], registry=r)
        self._errors = PromCounter("athos_errors", "error events and failed steps by code", ["code"], registry=r)
        self._reconnects = PromCounter(
            "athos_reconnects", "transient drops (reconnecting events)", ["scenario"], registry=r
        )
        self._missing = PromCounter(
            "athos_scores_missing", "ended calls never scored within the score timeout", ["scenario"], registry=r
        )
        self._lag = PromHistogram(
            "athos_audio_send_lag_seconds",
            "how late each outgoing audio frame left versus its real-time due time",
            buckets=AUDIO_LAG_BUCKETS,
            registry=r,
        )
        for code in KNOWN_CODES + ("other",):
            self._errors.labels(code)  # known codes exist at zero from the start

    def observe(self, timing: Timing, seconds: float, scenario: str) -> None:
        self.timings[timing].record(seconds)
        self._prom_timings[timing].labels(scenario).observe(seconds)

    def call_started(self, scenario: str) -> None:
        self.calls["started"] += 1
        self._active.labels(scenario).inc()

    def call_finished(self, scenario: str, outcome: Outcome) -> None:
        self.calls[outcome.value] += 1
        self._active.labels(scenario).dec()
        self._sessions.labels(scenario, outcome.value).inc()

    def scored(self, scenario: str, scored: bool) -> None:
        """A completed call's score arrived (True) or never did (False)."""
        self.calls["scored" if scored else "score_missing"] += 1
        if not scored:
            self._missing.labels(scenario).inc()

    def error(self, code: object) -> None:
        label = code_label(code)
        self.errors[label] += 1
        self._errors.labels(label).inc()

    def reconnect(self, scenario: str) -> None:
        self.reconnects += 1
        self._reconnects.labels(scenario).inc()

    def audio_send_lag(self, seconds: float) -> None:
        self.audio_lag.record(seconds)
        self._lag.observe(seconds)

    def summary(self) -> dict[str, Any]:
        """The JSON summary: per timing count/min/p50/p95/p99/max (seconds), calls, errors."""
        calls = {k: self.calls[k] for k in ("started", "completed", "failed", "aborted", "scored", "score_missing")}
        return {
            **{t.value: self.timings[t].summary() for t in Timing},
            "calls": calls,
            "reconnects": self.reconnects,
            "errors": dict(sorted(self.errors.items())),
            "audio_send_lag": self.audio_lag.summary(),
        }
