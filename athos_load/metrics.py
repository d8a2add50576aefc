"""Every recording the tool makes, in one object, exposed to Prometheus at scrape time.

Each timing is observed once and lands in a :class:`Series`: classic bucket counts at the usual SLO
thresholds (so ``le``-ratio SLIs are exact and buckets add across workers and in PromQL) and a
:class:`~athos_load.histogram.LogHistogram` (0.1% percentiles for gates, reports and the JSON
summary). Everything is plain counts, so a worker's recordings travel to the master as a delta
(:meth:`Metrics.take_delta`) and merge there by addition (:meth:`Metrics.merge`); the master's
``/metrics`` is rendered from the merged counts by a custom collector, in the manner of
client_python's ``*MetricFamily`` collectors. Label values are low-cardinality by construction:
a scenario name, an :class:`Outcome`, an error code from the known list or ``other``, a worker
index; never a callId.
"""

from __future__ import annotations

import bisect
import enum
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from .histogram import LogHistogram
from .timeline import Timeline
from .wire import ErrorCode


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


class ScoreOutcome(enum.StrEnum):
    """What became of a completed call's score; the values are the JSON summary's keys."""

    SCORED = "scored"  # it arrived
    MISSING = "score_missing"  # the score timeout passed without it: the platform lost it
    PENDING = "score_pending"  # the run ended first (drain timeout): it could still arrive


SUB_SECOND = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
BUCKETS: dict[str, tuple[float, ...]] = {
    Timing.CONNECT_READY: SUB_SECOND,
    Timing.PERSONA_RESPONSE: SUB_SECOND,
    Timing.TOKEN_MINT: (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    Timing.RECONNECT: (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
    Timing.END_TO_SCORE: (1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0),
    "audio_send_lag": (0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.1, 0.25, 1.0),
    "loadgen_loop_lag": (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
}
DOCS = {
    Timing.CONNECT_READY: "connecting -> ready: token redeemed and persona ready to speak",
    Timing.RECONNECT: "reconnecting -> reconnected after a transient drop",
    Timing.END_TO_SCORE: "ended -> call.scored received (webhook) or first poll that saw it scored",
    Timing.PERSONA_RESPONSE: "the rep stops speaking -> the persona starts speaking (turn latency)",
    Timing.TOKEN_MINT: "POST /v1/sessions round trip",
}
KNOWN_CODES = tuple(code.value for code in ErrorCode)
# counter family -> (help, label names); exposed with the ``_total`` suffix
COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "athos_sessions_started": ("calls started", ("scenario",)),
    "athos_sessions": ("finished calls by outcome", ("scenario", "outcome")),
    "athos_errors": ("error events and failed steps by code", ("code",)),
    "athos_reconnects": ("transient drops (reconnecting events)", ("scenario",)),
    "athos_scores": ("completed calls whose score arrived", ("scenario",)),
    "athos_setup_failed": ("calls that failed before ready (mint or connect)", ("scenario",)),
    "athos_scores_missing": ("completed calls never scored within the score timeout", ("scenario",)),
    "athos_scores_pending": (
        "completed calls still unscored when the run ended, before their score timeout",
        ("scenario",),
    ),
    "athos_unknown_messages": (
        "server messages of a type this version does not know, ignored (a newer platform build may add one)",
        ("scenario",),
    ),
    "athos_session_seconds": (
        "seconds of calls from ready to their end; reconnects per session-minute = "
        "60 * athos_reconnects_total / athos_session_seconds_total",
        ("scenario",),
    ),
}
SCORE_FAMILIES = {
    ScoreOutcome.SCORED: "athos_scores",
    ScoreOutcome.MISSING: "athos_scores_missing",
    ScoreOutcome.PENDING: "athos_scores_pending",
}


def code_label(code: object) -> str:
    """A known error code, or ``other``: a platform must not be able to grow our label set."""
    value = str(code)
    return value if value in KNOWN_CODES else "other"


class Series:
    """One histogram series: classic buckets for Prometheus plus a LogHistogram for percentiles."""

    __slots__ = ("bounds", "buckets", "log")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.buckets = np.zeros(len(bounds) + 1, dtype=np.int64)  # non-cumulative; the last is +Inf
        self.log = LogHistogram()

    def observe(self, value: float) -> None:
        self.buckets[bisect.bisect_left(self.bounds, value)] += 1  # le: value <= bound
        self.log.record(value)

    def observe_many(self, values: list[float] | np.ndarray) -> None:
        array = np.asarray(values, dtype=np.float64)
        np.add.at(self.buckets, np.searchsorted(self.bounds, array, side="left"), 1)
        self.log.record_many(array)

    def merge(self, other: Series) -> None:
        self.buckets += other.buckets
        self.log.merge(other.log)

    def to_dict(self) -> dict[str, Any]:
        return {"b": self.buckets.tolist(), "h": self.log.to_dict()}

    @classmethod
    def from_dict(cls, bounds: tuple[float, ...], data: dict[str, Any]) -> Series:
        series = cls(bounds)
        series.buckets[:] = data["b"]
        series.log = LogHistogram.from_dict(data["h"])
        return series

    def family_sample(self) -> tuple[list[tuple[str, float]], float]:
        cumulative = np.cumsum(self.buckets)
        buckets = [(_le(b), float(c)) for b, c in zip(self.bounds, cumulative[:-1], strict=True)]
        buckets.append(("+Inf", float(cumulative[-1])))
        return buckets, self.log.sum


class Metrics:
    """The recordings of one process (or, on a master, the merge of every worker's).

    Register :meth:`collector` in a ``CollectorRegistry`` to serve them; :attr:`registry` is one
    made for that. Levels (active sessions, generator health) are per ``source``: a worker
    reports its own, and the master shows each worker's latest.
    """

    def __init__(self, source: str = "local") -> None:
        self.source = source
        self.series: dict[tuple[str, str], Series] = {}  # (timing or lag name, scenario or source)
        self.counters: Counter[tuple[str, tuple[str, ...]]] = Counter()
        self.active: dict[str, Counter[str]] = {source: Counter()}  # source -> scenario -> calls
        self.health: dict[str, dict[str, float]] = {}  # source -> cpu_seconds, memory_bytes, saturated
        self.users = 0
        self.timeline = Timeline()  # the same recordings over time, for reports and baselines
        for code in (*KNOWN_CODES, "other"):
            self.counters[("athos_errors", (code,))] += 0  # known codes exist at zero from the start
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    def declare(self, scenarios: list[str]) -> None:
        """Create every per-scenario series at zero, so dashboards and ``increase()`` see the
        first event (a series that appears with its first sample hides that sample from rates)."""
        for scenario in scenarios:
            for timing in Timing:
                self.series.setdefault((timing.value, scenario), Series(BUCKETS[timing]))
            for family, (_, labels) in COUNTERS.items():
                if labels == ("scenario",):
                    self.counters[(family, (scenario,))] += 0
            for outcome in Outcome:
                self.counters[("athos_sessions", (scenario, outcome.value))] += 0
            self.active[self.source][scenario] += 0

    # -- recording -------------------------------------------------------------------------------

    def observe(self, timing: str, seconds: float, label: str = "") -> None:
        key = (str(timing), label)
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = Series(BUCKETS[key[0]])
        series.observe(seconds)
        self.timeline.observe(key[0], seconds)

    def count(self, family: str, *labels: str, amount: float = 1) -> None:
        if family not in COUNTERS or len(labels) != len(COUNTERS[family][1]):
            raise KeyError(f"no counter {family} with {len(labels)} labels")  # a typo would never be exported
        self.counters[(family, labels)] += amount
        self.timeline.count(family, labels, amount)

    def call_started(self, scenario: str) -> None:
        self.count("athos_sessions_started", scenario)
        self.active[self.source][scenario] += 1
        self._peak_active()

    def _peak_active(self) -> None:
        self.timeline.peak("active_calls", self.source, sum(self.active[self.source].values()))

    def call_finished(self, scenario: str, outcome: Outcome, connected_seconds: float = 0.0) -> None:
        """A call is accounted for; ``connected_seconds`` from ready to its end count as session time."""
        self.count("athos_sessions", scenario, outcome.value)
        self._peak_active()  # the level this call was part of
        self.active[self.source][scenario] -= 1
        if connected_seconds > 0:
            self.count("athos_session_seconds", scenario, amount=connected_seconds)

    def score_settled(self, scenario: str, outcome: ScoreOutcome) -> None:
        self.count(SCORE_FAMILIES[outcome], scenario)

    def error(self, code: object) -> None:
        self.count("athos_errors", code_label(code))

    def reconnect(self, scenario: str) -> None:
        self.count("athos_reconnects", scenario)

    def audio_send_lags(self, seconds: list[float] | np.ndarray) -> None:
        """A batch of per-frame send lags from the pacer (one numpy pass, not a call per frame)."""
        key = ("audio_send_lag", "")
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = Series(BUCKETS["audio_send_lag"])
        array = np.asarray(seconds, dtype=np.float64)
        series.observe_many(array)
        self.timeline.observe_many("audio_send_lag", array)

    def record_health(self, sample: dict[str, float], *, saturated_for: float = 0.0) -> None:
        """The generator's latest health sample; ``saturated_for`` seconds since the last were saturated."""
        self.health[self.source] = sample
        self.timeline.peak("cpu_ratio", self.source, sample.get("cpu_ratio", 0.0))
        self.timeline.peak("users", self.source, self.users)
        self._peak_active()  # every second, so a window of long calls with no start or end shows them
        if saturated_for:
            self.timeline.count("saturated_seconds", (), saturated_for)

    # -- distribution: worker deltas, merged on the master -----------------------------------------

    def take_delta(self) -> dict[str, Any]:
        """Everything recorded since the last call, as plain data, and start afresh.

        Levels (active calls, health) are sent as they are, not as differences.
        """
        delta = {
            "series": [[name, label, s.to_dict()] for (name, label), s in self.series.items() if s.log.count],
            "counters": [[family, list(labels), n] for (family, labels), n in self.counters.items() if n],
            "active": dict(self.active[self.source]),
            "health": self.health.get(self.source, {}),
            "timeline": self.timeline.take_delta(),
        }
        self.series = {}
        self.counters = Counter()
        return delta

    def merge(self, delta: dict[str, Any], source: str) -> None:
        for name, label, data in delta["series"]:
            incoming = Series.from_dict(BUCKETS[name], data)
            key = (name, source if name == "loadgen_loop_lag" else label)
            if key in self.series:
                self.series[key].merge(incoming)
            else:
                self.series[key] = incoming
        for family, labels, n in delta["counters"]:
            self.counters[(family, tuple(labels))] += n
        self.active[source] = Counter(delta["active"])
        self.timeline.merge(delta["timeline"], source)
        if delta["health"]:
            self.health[source] = delta["health"]

    # -- reading ---------------------------------------------------------------------------------

    def timing(self, timing: str, scenario: str | None = None) -> LogHistogram:
        """One timing over every scenario, or one scenario's."""
        merged = LogHistogram()
        for (name, label), series in self.series.items():
            if name == timing and (scenario is None or label == scenario):
                merged.merge(series.log)
        return merged

    def total(self, family: str, **match: str) -> float:
        return total(self.counters, family, **match)

    def reconnects_per_session_minute(self) -> float | None:
        """Transient drops per minute of connected call time; None before any call time."""
        seconds = self.total("athos_session_seconds")
        return round(60.0 * self.total("athos_reconnects") / seconds, 4) if seconds > 0 else None

    def active_calls(self) -> int:
        return sum(sum(per.values()) for per in self.active.values())

    def summary(self) -> dict[str, Any]:
        """The JSON summary: per timing count/min/p50/p95/p99/max (seconds), calls, errors."""
        accounting = _accounting(self.counters)
        return {
            **{t.value: self.timing(t).summary() for t in Timing},
            "calls": accounting["calls"],
            "reconnects": accounting["reconnects"],
            "reconnects_per_session_minute": self.reconnects_per_session_minute(),
            "session_minutes": round(accounting["session_seconds"] / 60.0, 3),
            "unknown_messages": self.total("athos_unknown_messages"),
            "errors": accounting["errors"],
            "audio_send_lag": self.timing("audio_send_lag").summary(),
        }

    def timeline_summary(self) -> dict[str, Any]:
        """The run over time, for the JSON summary: per window (``start`` in epoch seconds) each
        timing's count and percentiles with its histogram (``h``, what baselines compare), the
        calls, errors, reconnects, session and saturated seconds, and the peaks of the levels."""
        windows = []
        for start, window in self.timeline:
            entry: dict[str, Any] = {"start": start}
            for name, hist in sorted(window.timings.items()):
                entry[name] = {**hist.summary(), "h": hist.to_dict()}
            entry.update(_accounting(window.counters))
            entry["saturated_seconds"] = window.counters[("saturated_seconds", ())]
            entry["active_calls"] = window.level("active_calls")
            entry["users"] = window.level("users", max)  # a master counts every worker's users
            entry["cpu_ratio"] = window.level("cpu_ratio", max)
            windows.append(entry)
        return {"window_seconds": self.timeline.width, "windows": windows}


def total(counters: Counter[tuple[str, tuple[str, ...]]], family: str, **match: str) -> float:
    """The sum of a counter family's values whose labels match, by name: ``outcome="failed"``."""
    names = COUNTERS[family][1]
    wanted = {names.index(k): v for k, v in match.items()}
    return sum(
        n for (fam, labels), n in counters.items() if fam == family and all(labels[i] == v for i, v in wanted.items())
    )


def _accounting(counters: Counter[tuple[str, tuple[str, ...]]]) -> dict[str, Any]:
    """Calls by outcome and score, errors by code, reconnects and session seconds, from counts."""
    calls = {"started": total(counters, "athos_sessions_started")}
    for outcome in Outcome:
        calls[outcome.value] = total(counters, "athos_sessions", outcome=outcome.value)
    for outcome, family in SCORE_FAMILIES.items():
        calls[outcome.value] = total(counters, family)
    return {
        "calls": calls,
        "errors": {labels[0]: n for (fam, labels), n in sorted(counters.items()) if fam == "athos_errors" and n},
        "reconnects": total(counters, "athos_reconnects"),
        "session_seconds": total(counters, "athos_session_seconds"),
    }


class _Collector:
    """Renders :class:`Metrics` at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        for timing in Timing:
            family = HistogramMetricFamily(f"athos_{timing.value}_seconds", DOCS[timing], labels=["scenario"])
            for (name, scenario), series in sorted(m.series.items()):
                if name == timing:
                    buckets, total = series.family_sample()
                    family.add_metric([scenario], buckets, total)
            yield family
        lag = HistogramMetricFamily(
            "athos_audio_send_lag_seconds", "how late each outgoing audio frame left versus its real-time due time"
        )
        series = m.series.get(("audio_send_lag", ""))
        if series is not None:
            lag.add_metric([], *series.family_sample())
        yield lag
        for family_name, (doc, labels) in COUNTERS.items():
            family = CounterMetricFamily(family_name, doc, labels=list(labels))
            for (fam, values), n in sorted(m.counters.items()):
                if fam == family_name:
                    family.add_metric(list(values), n)
            yield family
        active = GaugeMetricFamily("athos_sessions_active", "calls in progress", labels=["scenario"])
        per_scenario: Counter[str] = Counter()
        for levels in m.active.values():
            per_scenario.update(levels)
        for scenario, n in sorted(per_scenario.items()):
            active.add_metric([scenario], n)
        yield active
        yield GaugeMetricFamily("athos_loadgen_users", "Locust users running", value=m.users)
        yield from _health_families(m)


def _health_families(m: Metrics) -> Iterator[Metric]:
    cpu = CounterMetricFamily("athos_loadgen_cpu_seconds", "CPU time of the generator process", labels=["worker"])
    memory = GaugeMetricFamily("athos_loadgen_memory_bytes", "resident memory of the generator", labels=["worker"])
    saturated = GaugeMetricFamily(
        "athos_loadgen_saturated",
        "1 when the generator is saturated: its timings are not to be trusted",
        labels=["worker"],
    )
    for source, health in sorted(m.health.items()):
        cpu.add_metric([source], health.get("cpu_seconds", 0.0))
        memory.add_metric([source], health.get("memory_bytes", 0.0))
        saturated.add_metric([source], health.get("saturated", 0.0))
    lag = HistogramMetricFamily(
        "athos_loadgen_loop_lag_seconds", "how late the generator's event loop woke up", labels=["worker"]
    )
    for (name, source), series in sorted(m.series.items()):
        if name == "loadgen_loop_lag":
            lag.add_metric([source], *series.family_sample())
    yield from (cpu, memory, saturated, lag)


def _le(bound: float) -> str:
    return repr(float(bound))
