"""Every recording the tool makes, as declared instruments in one object, exposed to Prometheus at
scrape time.

Each metric is an instrument declared once, in the manner of client_python's ``metrics.py``: its
Prometheus name, help text and label names are fixed when it is made (:class:`Counter`,
:class:`Histogram`). Recording names its labels (``metrics.setup_failed.inc(scenario="quick")``); a
missing, extra or misspelt label, or a value outside a label's fixed set (``outcome``, ``code``),
raises at once, and so does a lookup of an undeclared name: nothing is recorded under a key that is
never exported. :class:`Metrics` holds every instrument (:attr:`Metrics.instruments`, which refuses a
duplicate name), plus the levels (active calls, the generator's health) read at scrape time.

Each timing is observed once and lands in a :class:`Series`: classic bucket counts at the usual SLO
thresholds (so ``le``-ratio SLIs are exact and buckets add across workers and in PromQL) and a
:class:`~athos_load.histogram.LogHistogram` (0.1% percentiles for gates, reports and the JSON
summary). Everything is plain counts, so a worker's recordings travel to the master as a delta
(:meth:`Metrics.take_delta`) and merge there by addition (:meth:`Metrics.merge`); the master's
``/metrics`` is rendered from the merged counts by a custom collector, in the manner of
client_python's ``*MetricFamily`` collectors. Every recording also feeds the
:class:`~athos_load.timeline.Timeline`. Label values are low-cardinality by construction: a
scenario name, an :class:`Outcome`, an error code from the known list or ``other``, a worker
index; never a callId.
"""

from __future__ import annotations

import bisect
import enum
import re
from collections import Counter as Tally
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from .histogram import LogHistogram
from .timeline import RecentWindows, Timeline
from .wire import SCORE_FAILURE_REASONS, ErrorCode, reason_label

if TYPE_CHECKING:
    from .hearing import PersonaStream
    from .transcript import TranscriptCheck


class Timing(enum.StrEnum):
    """The timings the tool measures; the values are the JSON summary's keys."""

    CONNECT_READY = "connect_ready"
    RECONNECT = "reconnect"
    END_TO_SCORE = "end_to_score"
    PERSONA_RESPONSE = "persona_response"
    TOKEN_MINT = "token_mint"
    # what the rep hears (issue 18): persona_response's two halves, and the persona's audio itself
    TIME_TO_FIRST_WORD = "time_to_first_word"
    ENDPOINTING = "endpointing"
    RESPONSE = "response"
    SPEECH_ONSET = "speech_onset"
    PERSONA_AUDIO_LEAD = "persona_audio_lead"
    BARGE_IN = "barge_in"
    PERSONA_AUDIO_GAP = "persona_audio_gap"
    PERSONA_AUDIO_JITTER = "persona_audio_jitter"
    TRANSCRIPT_FETCH = "transcript_fetch"


class Outcome(enum.StrEnum):
    COMPLETED = "completed"  # the call ended normally (hang-up, persona closed, max duration)
    FAILED = "failed"  # refused, dropped for good, or an error ended it
    ABORTED = "aborted"  # cut off by the end of the run
    LOST = "lost"  # unfinished on a worker that disappeared (killed, cut off): counted by the master


class ScoreOutcome(enum.StrEnum):
    """What became of a completed call's score; the values are the JSON summary's keys."""

    SCORED = "scored"  # it arrived
    MISSING = "score_missing"  # the score timeout passed without it: the platform lost it
    PENDING = "score_pending"  # the run ended first (drain timeout): it could still arrive
    FAILED = "score_failed"  # call.scored said success false (with a reason): it will never be scored


SUB_SECOND = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
ROUND_TRIP = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True, slots=True)
class TimingSpec:
    """Everything declared about one timing, in one place: its histogram's help text and buckets,
    and the Locust entry a call makes of it (``request_type``; None: the metrics only). Its name
    (the :class:`Timing` value) is the summary's key, the Prometheus ``athos_<name>_seconds``, the
    gates' metric and the call's step."""

    doc: str
    buckets: tuple[float, ...] = SUB_SECOND
    request_type: str | None = None


TIMINGS: dict[Timing, TimingSpec] = {
    Timing.CONNECT_READY: TimingSpec(
        "connecting -> ready: token redeemed and persona ready to speak", request_type="WS"
    ),
    Timing.RECONNECT: TimingSpec(
        "reconnecting -> reconnected after a transient drop", (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0), "WS"
    ),
    Timing.END_TO_SCORE: TimingSpec(
        "ended -> call.scored received (webhook) or first poll that saw it scored",
        (1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0),
        "SCORE",
    ),
    Timing.PERSONA_RESPONSE: TimingSpec(
        "the rep stops speaking -> the persona starts speaking (turn latency)", request_type="WS"
    ),
    Timing.TOKEN_MINT: TimingSpec(
        "POST /api/external/v1/session round trip (a rep's first also registers it: POST /agents)", ROUND_TRIP, "POST"
    ),
    Timing.TIME_TO_FIRST_WORD: TimingSpec(
        "connecting -> the first persona audio frame with sound (a persona that greets)", request_type="AUDIO"
    ),
    Timing.ENDPOINTING: TimingSpec(
        "the rep's speech ends (known from the clip) -> userSpeaking false: the platform's endpointing",
        request_type="WS",
    ),
    Timing.RESPONSE: TimingSpec(
        "userSpeaking false -> personaSpeaking true: the platform's response time", request_type="WS"
    ),
    Timing.SPEECH_ONSET: TimingSpec(
        "the rep's speech starts (known from the clip) -> userSpeaking true", request_type="WS"
    ),
    Timing.PERSONA_AUDIO_LEAD: TimingSpec(
        "personaSpeaking true -> the first persona audio frame with sound",
        (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
        "AUDIO",
    ),
    Timing.BARGE_IN: TimingSpec(
        "the rep starts talking over the persona -> personaSpeaking false: how long it talks on", request_type="WS"
    ),
    Timing.PERSONA_AUDIO_GAP: TimingSpec(
        "a silence inside a persona utterance: frames more than two frame periods apart",
        (0.04, 0.06, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
    ),
    Timing.PERSONA_AUDIO_JITTER: TimingSpec(
        "a persona utterance's interarrival jitter (RFC 3550's estimator) at its end",
        (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1),
    ),
    Timing.TRANSCRIPT_FETCH: TimingSpec(
        "GET /api/external/v1/calls/:callId round trip: the score and transcript, once scored", ROUND_TRIP, "GET"
    ),
}
# The generator's own timings: no scenario, no Locust entry.
GENERATOR_BUCKETS: dict[str, tuple[float, ...]] = {
    "audio_send_lag": (0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.1, 0.25, 1.0),
    "loadgen_loop_lag": (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
}
BUCKETS: dict[str, tuple[float, ...]] = {**{t: spec.buckets for t, spec in TIMINGS.items()}, **GENERATOR_BUCKETS}
DOCS = {t: spec.doc for t, spec in TIMINGS.items()}
KNOWN_CODES = tuple(code.value for code in ErrorCode)
OTHER_CODE = "other"
# A histogram labelled with this gets the reporting worker's index as its value on the master.
SOURCE_LABEL = "worker"
LOOP_STALLS_KEPT = 1024  # the generator's latest loop stalls, to judge persona audio gaps by: 20 s of a saturated loop
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")

LabelKey = tuple[str, ...]  # label values, in the instrument's label-name order
_I = TypeVar("_I", bound="Instrument")


def code_label(code: object) -> str:
    """A known error code, or ``other``: a platform must not be able to grow our label set."""
    value = str(code)
    return value if value in KNOWN_CODES else OTHER_CODE


# -- instruments -----------------------------------------------------------------------------------


class Instrument:
    """A declared metric: its Prometheus name, help text and label names, fixed at creation.

    ``allowed`` fixes the values of some labels (an enum's members, the known error codes); the
    others take any string. :meth:`key` turns keyword labels into a series key and raises
    ``ValueError`` on a missing, extra or misspelt label name or a value outside its set.
    """

    __slots__ = ("name", "documentation", "labelnames", "_allowed")

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        allowed: Mapping[str, Iterable[object]] | None = None,
    ) -> None:
        for text in (name, *labelnames):
            if not _NAME.fullmatch(text):
                raise ValueError(f"{text!r} is not a valid Prometheus name")
        if len(set(labelnames)) != len(labelnames):
            raise ValueError(f"{name}: a label name is given twice in {list(labelnames)}")
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._allowed = {label: frozenset(map(str, values)) for label, values in (allowed or {}).items()}
        if stray := set(self._allowed) - set(self.labelnames):
            raise ValueError(f"{name}: allowed values for labels it does not have: {sorted(stray)}")

    def key(self, labels: Mapping[str, object]) -> LabelKey:
        """The series key for ``labels``, which must name every declared label and no other."""
        if len(labels) != len(self.labelnames) or not all(n in labels for n in self.labelnames):
            raise ValueError(f"{self.name}: labels {sorted(labels)} given, {list(self.labelnames)} declared")
        key = tuple(str(labels[n]) for n in self.labelnames)
        self.check(key)
        return key

    def check(self, key: Sequence[str]) -> None:
        """Raise ``ValueError`` unless ``key`` (label values in declared order) fits the declaration."""
        if len(key) != len(self.labelnames):
            raise ValueError(f"{self.name}: {len(key)} label values for labels {list(self.labelnames)}")
        for label, value in zip(self.labelnames, key, strict=True):
            allowed = self._allowed.get(label)
            if allowed is not None and value not in allowed:
                raise ValueError(f"{self.name}: {label}={value!r} is not one of {sorted(allowed)}")

    def matcher(self, match: Mapping[str, object]) -> Callable[[LabelKey], bool]:
        """A test of series keys against some labels' values (``outcome="failed"``); the names are checked."""
        if stray := set(match) - set(self.labelnames):
            raise ValueError(f"{self.name}: no label {sorted(stray)} (labels: {list(self.labelnames)})")
        wanted = []
        for label, value in match.items():
            allowed = self._allowed.get(label)
            if allowed is not None and str(value) not in allowed:
                raise ValueError(f"{self.name}: {label}={str(value)!r} is not one of {sorted(allowed)}")
            wanted.append((self.labelnames.index(label), str(value)))
        return lambda key: all(key[i] == v for i, v in wanted)

    def family(self) -> Metric:
        """The instrument's values as a metric family, for the collector."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, labels={list(self.labelnames)})"


class Counter(Instrument):
    """A counter family, exposed as ``<name>_total``. ``on_inc(name, key, amount)`` sees every
    increment as it happens (the timeline); a merged delta does not pass through it."""

    __slots__ = ("values", "_on_inc")

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        allowed: Mapping[str, Iterable[object]] | None = None,
        on_inc: Callable[[str, LabelKey, float], None] | None = None,
    ) -> None:
        super().__init__(name, documentation, labelnames, allowed=allowed)
        self.values: dict[LabelKey, float] = {}
        self._on_inc = on_inc

    def inc(self, amount: float = 1, **labels: object) -> None:
        if amount < 0:
            raise ValueError(f"{self.name}: a counter only goes up ({amount})")
        key = self.key(labels)
        self.values[key] = self.values.get(key, 0) + amount
        if self._on_inc is not None:
            self._on_inc(self.name, key, amount)

    def touch(self, **labels: object) -> None:
        """Create the series at zero, so it is exported before its first increment."""
        self.values.setdefault(self.key(labels), 0)

    def total(self, **match: object) -> float:
        """The sum over the series whose labels match, by name: ``total(outcome="failed")``."""
        return self.total_of(self.values.items(), **match)

    def total_of(self, values: Iterable[tuple[LabelKey, float]], **match: object) -> float:
        """Like :meth:`total`, over ``(key, value)`` pairs of this counter kept elsewhere (a window)."""
        matches = self.matcher(match)
        return sum((n for key, n in values if matches(key)), 0)

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.documentation, labels=list(self.labelnames))
        for key, n in sorted(self.values.items()):
            family.add_metric(list(key), n)
        return family


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
        if len(data["b"]) != len(series.buckets):
            raise ValueError(f"{len(data['b'])} bucket counts for {len(bounds)} bounds")
        series.buckets[:] = data["b"]
        series.log = LogHistogram.from_dict(data["h"])
        return series

    def family_sample(self) -> tuple[list[tuple[str, float]], float]:
        cumulative = np.cumsum(self.buckets)
        buckets = [(_le(b), float(c)) for b, c in zip(self.bounds, cumulative[:-1], strict=True)]
        buckets.append(("+Inf", float(cumulative[-1])))
        return buckets, self.log.sum


class Histogram(Instrument):
    """A histogram family of :class:`Series`, exposed as ``<name>_bucket/_sum/_count``.

    ``short_name`` names it in the JSON summary, the timeline and worker deltas (``connect_ready``
    for ``athos_connect_ready_seconds``). A delta carries a series' labels as one string, so a
    histogram has at most one label. ``on_observe(short_name, values)`` sees every observation.
    """

    __slots__ = ("short_name", "bounds", "series", "_on_observe")

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        short_name: str,
        bounds: tuple[float, ...],
        on_observe: Callable[[str, float | np.ndarray], None] | None = None,
    ) -> None:
        super().__init__(name, documentation, labelnames)
        if len(self.labelnames) > 1:
            raise ValueError(f"{name}: a histogram has at most one label (deltas carry it as one string)")
        if list(bounds) != sorted(bounds):
            raise ValueError(f"{name}: bucket bounds must increase")
        self.short_name = short_name
        self.bounds = tuple(bounds)
        self.series: dict[LabelKey, Series] = {}
        self._on_observe = on_observe

    def observe(self, seconds: float, **labels: object) -> None:
        self._series(self.key(labels)).observe(seconds)
        if self._on_observe is not None:
            self._on_observe(self.short_name, seconds)

    def observe_many(self, seconds: list[float] | np.ndarray, **labels: object) -> None:
        """A batch of observations in one numpy pass."""
        array = np.asarray(seconds, dtype=np.float64)
        self._series(self.key(labels)).observe_many(array)
        if self._on_observe is not None:
            self._on_observe(self.short_name, array)

    def touch(self, **labels: object) -> None:
        """Create the series at zero, so it is exported before its first observation."""
        self._series(self.key(labels))

    def merged(self, since: Mapping[LabelKey, LogHistogram] | None = None, **match: object) -> LogHistogram:
        """The percentiles' histogram over the series whose labels match; with ``since`` (copies of
        series taken earlier, by label values) only what each series recorded after its copy."""
        matches = self.matcher(match)
        merged = LogHistogram()
        for key, series in self.series.items():
            if matches(key):
                earlier = since.get(key) if since else None
                merged.merge(series.log if earlier is None else series.log.since(earlier))
        return merged

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.documentation, labels=list(self.labelnames) or None)
        for key, series in sorted(self.series.items()):
            family.add_metric(list(key), *series.family_sample())
        return family

    def _series(self, key: LabelKey) -> Series:
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = Series(self.bounds)
        return series


# -- the recordings of a process -------------------------------------------------------------------


class Metrics:
    """The recordings of one process (or, on a master, the merge of every worker's).

    Every instrument is an attribute, declared in ``__init__``; :attr:`instruments` holds them by
    Prometheus name. :attr:`registry` (a ``CollectorRegistry`` of its own, so tests and processes
    never share one) serves them. Levels (active sessions, generator health) are per ``source``: a
    worker reports its own, and the master shows each worker's latest.
    """

    def __init__(self, source: str = "local") -> None:
        self.source = source
        self.instruments: dict[str, Instrument] = {}  # by Prometheus name, in exposition order
        self._histograms: dict[str, Histogram] = {}  # by short name
        self.active: dict[str, Tally[str]] = {source: Tally()}  # source -> scenario -> calls
        self.health: dict[str, dict[str, float]] = {}  # source -> cpu_seconds, memory_bytes, saturated
        self.users = 0
        self.timeline = Timeline()  # the same recordings over time, for reports and baselines
        # the newest windows at full resolution, for the live tab; on the whole run's clock
        self.recent = RecentWindows(clock=lambda: self.timeline.clock())
        self.warmup_until: float | None = None  # epoch seconds; the run's timings leave out what came before
        self._at_warmup: dict[str, dict[LabelKey, LogHistogram]] = {}  # each series as it stood then

        def histogram(name: str, doc: str, labels: Sequence[str], short_name: str) -> Histogram:
            return self.add(
                Histogram(
                    name, doc, labels, short_name=short_name, bounds=BUCKETS[short_name], on_observe=self._observed
                )
            )

        self.timings = {t: histogram(f"athos_{t.value}_seconds", DOCS[t], ("scenario",), t.value) for t in Timing}
        self.audio_send_lag = histogram(
            "athos_audio_send_lag_seconds",
            "how late each outgoing audio frame left versus its real-time due time",
            (),
            "audio_send_lag",
        )

        def counter(
            name: str, doc: str, *labels: str, allowed: Mapping[str, Iterable[object]] | None = None
        ) -> Counter:
            return self.add(Counter(name, doc, labels, allowed=allowed, on_inc=self._counted))

        self.sessions_started = counter("athos_sessions_started", "calls started", "scenario")
        self.sessions = counter(
            "athos_sessions", "finished calls by outcome", "scenario", "outcome", allowed={"outcome": Outcome}
        )
        self.errors = counter(
            "athos_errors",
            "error events and failed steps by code",
            "code",
            allowed={"code": (*KNOWN_CODES, OTHER_CODE)},
        )
        self.reconnects = counter("athos_reconnects", "transient drops (reconnecting events)", "scenario")
        self.scores = counter("athos_scores", "completed calls whose score arrived", "scenario")
        self.setup_failed = counter(
            "athos_setup_failed", "calls that failed before ready (mint or connect)", "scenario"
        )
        self.scores_missing = counter(
            "athos_scores_missing", "completed calls never scored within the score timeout", "scenario"
        )
        self.scores_pending = counter(
            "athos_scores_pending",
            "completed calls still unscored when the run ended, before their score timeout",
            "scenario",
        )
        self.scores_failed = counter(
            "athos_scores_failed",
            "completed calls the platform could not score (call.scored with success false), by reason",
            "scenario",
            "reason",
            allowed={"reason": (*sorted(SCORE_FAILURE_REASONS), OTHER_CODE)},
        )
        self.calls_redeemed = counter(
            "athos_calls_redeemed",
            "session tokens redeemed: calls the platform started, each one spending tenant quota",
            "scenario",
        )
        self.barge_ins_ignored = counter(
            "athos_barge_ins_ignored",
            "barge-ins the persona did not yield to within the barge-in timeout (it talked on over the rep)",
            "scenario",
        )
        self.persona_audio_seconds = counter(
            "athos_persona_audio_seconds", "seconds of persona audio received while it spoke", "scenario"
        )
        self.persona_underruns = counter(
            "athos_persona_underruns",
            "persona audio frames that came after the client's jitter buffer needed them (a click or hole a rep hears)",
            "scenario",
        )
        self.persona_dead_air = counter(
            "athos_persona_dead_air_seconds",
            "seconds of silence inside persona utterances (its audio gaps)",
            "scenario",
        )
        self.generator_gaps = counter(
            "athos_loadgen_persona_gaps",
            "gaps in the persona's audio that the generator's own stalled loop made (it read the frames late): "
            "not counted as the platform's gaps, dead air or underruns",
            "scenario",
        )
        # the generator's latest event-loop stalls, (from, to) monotonic, from its health monitor
        self.loop_stalls: deque[tuple[float, float]] = deque(maxlen=LOOP_STALLS_KEPT)
        self.transcript_turns = counter(
            "athos_transcript_turns", "rep turns held against the platform's transcripts", "scenario"
        )
        self.transcript_missing = counter(
            "athos_transcript_missing", "rep turns no transcript segment covered", "scenario"
        )
        self.transcript_misaligned = counter(
            "athos_transcript_misaligned",
            "rep turns whose transcript segment starts or ends off their speech by more than the tolerance",
            "scenario",
        )
        self.transcript_words = counter(
            "athos_transcript_words", "words the reps said, where the platform returned words to compare", "scenario"
        )
        self.transcript_word_errors = counter(
            "athos_transcript_word_errors", "substituted, deleted and inserted words in those transcripts", "scenario"
        )
        self.unknown_messages = counter(
            "athos_unknown_messages",
            "server messages of a type this version does not know, ignored (a newer platform build may add one)",
            "scenario",
        )
        # counted when a call ends, but into the windows over which its seconds accrued (call_finished)
        self.session_seconds = self.add(
            Counter(
                "athos_session_seconds",
                "seconds of calls from ready to their end; reconnects per session-minute = "
                "60 * athos_reconnects_total / athos_session_seconds_total",
                ("scenario",),
            )
        )
        self.loop_lag = histogram(
            "athos_loadgen_loop_lag_seconds",
            "how late the generator's event loop woke up",
            (SOURCE_LABEL,),
            "loadgen_loop_lag",
        )
        self.score_counters = {
            ScoreOutcome.SCORED: self.scores,
            ScoreOutcome.MISSING: self.scores_missing,
            ScoreOutcome.PENDING: self.scores_pending,
            ScoreOutcome.FAILED: self.scores_failed,
        }
        for code in (*KNOWN_CODES, OTHER_CODE):
            self.errors.touch(code=code)  # known codes exist at zero from the start
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    def add(self, instrument: _I) -> _I:
        """Hold ``instrument``; a second instrument of the same name is an error, as in a registry."""
        if instrument.name in self.instruments:
            raise ValueError(f"metric {instrument.name} is declared twice")
        if isinstance(instrument, Histogram):
            if instrument.short_name in self._histograms:
                raise ValueError(f"a histogram named {instrument.short_name} is declared twice")
            self._histograms[instrument.short_name] = instrument
        self.instruments[instrument.name] = instrument
        return instrument

    @property
    def _timelines(self) -> tuple[Timeline, RecentWindows]:
        """Where every recording also goes: the whole run's windows and the newest ones."""
        return self.timeline, self.recent

    def _counted(self, name: str, key: LabelKey, amount: float) -> None:
        for timeline in self._timelines:
            timeline.count(name, key, amount)

    def _observed(self, short_name: str, seconds: float | np.ndarray) -> None:
        for timeline in self._timelines:
            if isinstance(seconds, np.ndarray):
                timeline.observe_many(short_name, seconds)
            else:
                timeline.observe(short_name, seconds)

    # -- instruments by name -----------------------------------------------------------------------

    @property
    def _counters(self) -> list[Counter]:
        return [i for i in self.instruments.values() if isinstance(i, Counter)]

    @property
    def histograms(self) -> list[Histogram]:
        return list(self._histograms.values())

    def counter(self, name: str) -> Counter:
        """The counter declared as ``name`` (without ``_total``); ``KeyError`` if there is none."""
        instrument = self.instruments.get(name)
        if not isinstance(instrument, Counter):
            raise KeyError(f"no counter {name} is declared")  # a typo must not read or write a lost series
        return instrument

    def histogram(self, short_name: str) -> Histogram:
        """The histogram a timing's name stands for (``connect_ready``); ``KeyError`` if there is none."""
        histogram = self._histograms.get(short_name)
        if histogram is None:
            raise KeyError(f"no histogram {short_name} is declared")
        return histogram

    def declare(self, scenarios: list[str]) -> None:
        """Create every per-scenario series at zero, so dashboards and ``increase()`` see the
        first event (a series that appears with its first sample hides that sample from rates)."""
        for scenario in scenarios:
            for histogram in self.timings.values():
                histogram.touch(scenario=scenario)
            for counter in self._counters:
                if counter.labelnames == ("scenario",):
                    counter.touch(scenario=scenario)
            for outcome in Outcome:
                self.sessions.touch(scenario=scenario, outcome=outcome)
            for reason in (*SCORE_FAILURE_REASONS, OTHER_CODE):
                self.scores_failed.touch(scenario=scenario, reason=reason)
            self.active[self.source][scenario] += 0

    def end_warmup(self) -> None:
        """The warm-up (a soak's ramp) is over: from now on the run's timings (summary, gates) leave
        out what came before, and so do drift and change-points. The exported Prometheus series
        stay whole (a counter never goes back); the first call settles it, later ones do nothing."""
        if self.warmup_until is not None:
            return
        self.warmup_until = self.timeline.clock()
        self._at_warmup = {h.short_name: {key: s.log.copy() for key, s in h.series.items()} for h in self.histograms}

    # -- recording -------------------------------------------------------------------------------

    def call_started(self, scenario: str) -> None:
        self.sessions_started.inc(scenario=scenario)
        self.active[self.source][scenario] += 1
        self._peak_active()

    def _peak_active(self) -> None:
        for timeline in self._timelines:
            timeline.peak("active_calls", self.source, sum(self.active[self.source].values()))

    def call_finished(self, scenario: str, outcome: Outcome, connected_seconds: float = 0.0) -> None:
        """A call is accounted for; ``connected_seconds`` from ready to its end count as session time."""
        self.sessions.inc(scenario=scenario, outcome=outcome)
        self._peak_active()  # the level this call was part of
        self.active[self.source][scenario] -= 1
        if connected_seconds > 0:
            self.session_seconds.inc(connected_seconds, scenario=scenario)
            end = self.timeline.clock()
            key = self.session_seconds.key({"scenario": scenario})
            for timeline in self._timelines:
                timeline.spread(self.session_seconds.name, key, end - connected_seconds, end)

    def score_settled(self, scenario: str, outcome: ScoreOutcome, reason: str | None = None) -> None:
        if outcome is ScoreOutcome.FAILED:
            self.scores_failed.inc(scenario=scenario, reason=reason_label(reason))
        else:
            self.score_counters[outcome].inc(scenario=scenario)

    def error(self, code: object) -> None:
        self.errors.inc(code=code_label(code))

    def reconnect(self, scenario: str) -> None:
        self.reconnects.inc(scenario=scenario)

    def audio_send_lags(self, seconds: list[float] | np.ndarray) -> None:
        """A batch of per-frame send lags from the pacer (one numpy pass, not a call per frame)."""
        self.audio_send_lag.observe_many(seconds)

    def record_health(self, sample: dict[str, float], *, saturated_for: float = 0.0) -> None:
        """The generator's latest health sample; ``saturated_for`` seconds since the last were saturated."""
        self.health[self.source] = sample
        for timeline in self._timelines:
            timeline.peak("cpu_ratio", self.source, sample.get("cpu_ratio", 0.0))
            timeline.peak("rss_bytes", self.source, sample.get("memory_bytes", 0.0))
            timeline.peak("open_fds", self.source, sample.get("open_fds", 0.0))
            timeline.peak("users", self.source, self.users)
        self._peak_active()  # every second, so a window of long calls with no start or end shows them
        if saturated_for:
            for timeline in self._timelines:
                timeline.count("saturated_seconds", (), saturated_for)

    # -- distribution: worker deltas, merged on the master -----------------------------------------

    def take_delta(self) -> dict[str, Any]:
        """Everything recorded since the last call, as plain data, and start afresh.

        ``series``: ``[short_name, label value or "", series]``; ``counters``: ``[name, [label
        values], n]``. Levels (active calls, health) are sent as they are, not as differences.
        """
        delta = {
            "series": [
                [h.short_name, key[0] if key else "", s.to_dict()]
                for h in self.histograms
                for key, s in h.series.items()
                if s.log.count
            ],
            "counters": [[c.name, list(key), n] for c in self._counters for key, n in c.values.items() if n],
            "active": dict(self.active[self.source]),
            "health": self.health.get(self.source, {}),
            "timeline": self.timeline.take_delta(),
        }
        for histogram in self.histograms:
            histogram.series = {}
        for counter in self._counters:
            counter.values = {}
        return delta

    def merge(self, delta: dict[str, Any], source: str) -> None:
        """Add a worker's delta in. Every name and label in it is checked before anything is added,
        so a delta this version cannot read raises and changes nothing."""
        series = []
        for short_name, label, data in delta["series"]:
            histogram = self.histogram(short_name)
            key: LabelKey = () if not histogram.labelnames else (label,)
            if histogram.labelnames == (SOURCE_LABEL,):
                key = (source,)  # the master names the worker
            histogram.check(key)
            series.append((histogram, key, Series.from_dict(histogram.bounds, data)))
        counts = []
        for name, labels, n in delta["counters"]:
            counter = self.counter(name)
            counter.check(tuple(labels))
            counts.append((counter, tuple(labels), n))
        for histogram, key, incoming in series:
            if key in histogram.series:
                histogram.series[key].merge(incoming)
            else:
                histogram.series[key] = incoming
        for counter, key, n in counts:
            counter.values[key] = counter.values.get(key, 0) + n
        self.active[source] = Tally(delta["active"])
        for timeline in self._timelines:
            timeline.merge(delta["timeline"], source)
        if delta["health"]:
            self.health[source] = delta["health"]

    # -- reading ---------------------------------------------------------------------------------

    def timing(self, timing: str, scenario: str | None = None) -> LogHistogram:
        """One timing over every scenario, or one scenario's (none, for a histogram not kept per
        scenario), after the warm-up when one ended (:meth:`end_warmup`)."""
        histogram = self.histogram(str(timing))
        since = self._at_warmup.get(histogram.short_name)
        if scenario is None:
            return histogram.merged(since)
        if "scenario" not in histogram.labelnames:
            return LogHistogram()
        return histogram.merged(since, scenario=scenario)

    def total(self, name: str, **match: object) -> float:
        """The sum of a counter's series whose labels match, by name: ``total("athos_sessions", outcome="failed")``."""
        return self.counter(name).total(**match)

    @property
    def counters(self) -> Tally[tuple[str, LabelKey]]:
        """Every counter series as ``{(name, label values): n}``: a snapshot, for reading."""
        return Tally({(c.name, key): n for c in self._counters for key, n in c.values.items()})

    def reconnects_per_session_minute(self) -> float | None:
        """Transient drops per minute of connected call time; None before any call time."""
        seconds = self.session_seconds.total()
        return round(60.0 * self.reconnects.total() / seconds, 4) if seconds > 0 else None

    def call_setup(self, scenario: str | None = None) -> tuple[int, float]:
        """Calls that reached ready, and calls that tried (ready + failed before ready), over the
        whole run (warm-up included, as every count is)."""
        match = {"scenario": scenario} if scenario else {}
        ready = self.timings[Timing.CONNECT_READY].merged(**match).count
        return ready, ready + self.setup_failed.total(**match)

    def active_calls(self) -> int:
        return sum(sum(per.values()) for per in self.active.values())

    def summary(self) -> dict[str, Any]:
        """The JSON summary: per timing count/min/p50/p95/p99/max (seconds), calls, errors."""
        accounting = self._accounting(lambda counter: counter.values.items())
        return {
            **{t.value: self.timing(t).summary() for t in Timing},
            "calls": accounting["calls"],
            "reconnects": accounting["reconnects"],
            "reconnects_per_session_minute": self.reconnects_per_session_minute(),
            "session_minutes": round(accounting["session_seconds"] / 60.0, 3),
            "call_setup": self._call_setup_summary(),
            "barge_ins_ignored": self.barge_ins_ignored.total(),
            "persona_audio": self._persona_audio_summary(),
            "transcript": self._transcript_summary(),
            "unknown_messages": self.unknown_messages.total(),
            "score_failed_reasons": {
                reason: self.scores_failed.total(reason=reason)
                for reason in sorted({key[1] for key, n in self.scores_failed.values.items() if n})
            },
            "quota": {"calls": self.calls_redeemed.total(), "tokens": self.timing(Timing.TOKEN_MINT).count},
            "errors": accounting["errors"],
            "audio_send_lag": self.timing("audio_send_lag").summary(),
            "warmup_until": self.warmup_until,
        }

    def persona_minute_rate(self, counter: Counter) -> float | None:
        """``counter`` per minute of persona audio received (underruns, dead air); None before any."""
        seconds = self.persona_audio_seconds.total()
        return round(60.0 * counter.total() / seconds, 6) if seconds > 0 else None

    def persona_utterance_done(self, scenario: str, stream: PersonaStream) -> None:
        """A persona utterance ended: its audio's continuity as the rep's client played it."""
        if not stream.frames:
            return
        self.persona_audio_seconds.inc(stream.seconds, scenario=scenario)
        if stream.frames > 1:
            self.timings[Timing.PERSONA_AUDIO_JITTER].observe(stream.jitter, scenario=scenario)
        gaps, underruns, ours = stream.judge(self.loop_stalls)
        for gap in gaps:
            self.timings[Timing.PERSONA_AUDIO_GAP].observe(gap, scenario=scenario)
        if gaps:
            self.persona_dead_air.inc(sum(gaps), scenario=scenario)
        if underruns:
            self.persona_underruns.inc(underruns, scenario=scenario)
        if ours:
            self.generator_gaps.inc(ours, scenario=scenario)

    def _persona_audio_summary(self) -> dict[str, Any]:
        return {
            "minutes": round(self.persona_audio_seconds.total() / 60.0, 3),
            "underruns": self.persona_underruns.total(),
            "underruns_per_persona_minute": self.persona_minute_rate(self.persona_underruns),
            "dead_air_seconds": round(self.persona_dead_air.total(), 3),
            "dead_air_per_persona_minute": self.persona_minute_rate(self.persona_dead_air),
            "generator_gaps": self.generator_gaps.total(),
        }

    def transcript_checked(self, scenario: str, result: TranscriptCheck) -> None:
        self.transcript_turns.inc(result.turns, scenario=scenario)
        self.transcript_missing.inc(result.missing, scenario=scenario)
        self.transcript_misaligned.inc(result.misaligned, scenario=scenario)
        self.transcript_words.inc(result.words, scenario=scenario)
        self.transcript_word_errors.inc(result.word_errors, scenario=scenario)

    def transcript_wer(self) -> float | None:
        """The word error rate over every checked transcript that had words (None: none had)."""
        words = self.transcript_words.total()
        return round(self.transcript_word_errors.total() / words, 6) if words else None

    def _transcript_summary(self) -> dict[str, Any]:
        return {
            "turns": self.transcript_turns.total(),
            "missing": self.transcript_missing.total(),
            "misaligned": self.transcript_misaligned.total(),
            "words": self.transcript_words.total(),
            "wer": self.transcript_wer(),
        }

    def _call_setup_summary(self) -> dict[str, Any]:
        ready, tried = self.call_setup()
        return {"ready": ready, "tried": tried, "rate": round(ready / tried, 6) if tried else None}

    def timeline_summary(self) -> dict[str, Any]:
        """The run over time, for the JSON summary: per window (``start`` in epoch seconds) each
        timing's count and percentiles with its histogram (``h``, what baselines compare), the
        calls, errors, reconnects, session and saturated seconds, and the peaks of the levels;
        ``recent``: the newest windows at full resolution, alike."""
        return {
            "window_seconds": self.timeline.width,
            "warmup_until": self.warmup_until,
            "windows": self._windows(self.timeline),
            "recent": {"window_seconds": self.recent.width, "windows": self._windows(self.recent)},
        }

    def _windows(self, timeline: Timeline) -> list[dict[str, Any]]:
        windows = []
        for start, window in timeline:
            entry: dict[str, Any] = {"start": start}
            for name, hist in sorted(window.timings.items()):
                entry[name] = {**hist.summary(), "h": hist.to_dict()}
            entry.update(self._accounting(_window_values(window.counters)))
            entry["saturated_seconds"] = window.counters[("saturated_seconds", ())]
            entry["active_calls"] = window.level("active_calls")
            entry["users"] = window.level("users", max)  # a master counts every worker's users
            entry["cpu_ratio"] = window.level("cpu_ratio", max)
            entry["rss_bytes"] = window.level("rss_bytes")  # every process's peak, summed: the generator's
            entry["open_fds"] = window.level("open_fds")
            windows.append(entry)
        return windows

    def _accounting(self, values: Callable[[Counter], Iterable[tuple[LabelKey, float]]]) -> dict[str, Any]:
        """Calls by outcome and score, errors by code, reconnects and session seconds, from the
        counters' values (``values(counter)``: the run's, or one window's)."""
        calls = {"started": self.sessions_started.total_of(values(self.sessions_started))}
        for outcome in Outcome:
            calls[outcome.value] = self.sessions.total_of(values(self.sessions), outcome=outcome)
        for outcome, counter in self.score_counters.items():
            calls[outcome.value] = counter.total_of(values(counter))
        return {
            "calls": calls,
            "errors": {key[0]: n for key, n in sorted(values(self.errors)) if n},
            "reconnects": self.reconnects.total_of(values(self.reconnects)),
            "session_seconds": self.session_seconds.total_of(values(self.session_seconds)),
        }


def _window_values(
    counts: Mapping[tuple[str, LabelKey], float],
) -> Callable[[Counter], Iterable[tuple[LabelKey, float]]]:
    """A window's counts (keyed by counter name and label values) as each counter's own values."""
    return lambda counter: [(key, n) for (name, key), n in counts.items() if name == counter.name]


class TallyCollector:
    """A tally kept elsewhere (``Counter`` by outcome) exposed as one counter family at scrape
    time: the webhook receiver's deliveries by outcome, ``athos_webhooks_total{outcome}``."""

    def __init__(self, name: str, documentation: str, label: str, tally: Callable[[], Mapping[str, float]]) -> None:
        self.name, self.documentation, self.label, self.tally = name, documentation, label, tally

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=[self.label])
        for value, n in sorted(self.tally().items()):
            family.add_metric([value], n)
        yield family


class _Collector:
    """Renders :class:`Metrics` at scrape time: every declared instrument, then the levels."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        for instrument in m.instruments.values():
            if instrument is not m.loop_lag:  # shown with the generator's health, below
                yield instrument.family()
        active = GaugeMetricFamily("athos_sessions_active", "calls in progress", labels=["scenario"])
        per_scenario: Tally[str] = Tally()
        for levels in m.active.values():
            per_scenario.update(levels)
        for scenario, n in sorted(per_scenario.items()):
            active.add_metric([scenario], n)
        yield active
        yield GaugeMetricFamily("athos_loadgen_users", "Locust users running", value=m.users)
        yield from _health_families(m)


def _health_families(m: Metrics) -> Iterator[Metric]:
    labels = [SOURCE_LABEL]
    cpu = CounterMetricFamily("athos_loadgen_cpu_seconds", "CPU time of the generator process", labels=labels)
    memory = GaugeMetricFamily("athos_loadgen_memory_bytes", "resident memory of the generator", labels=labels)
    fds = GaugeMetricFamily("athos_loadgen_open_fds", "open file descriptors of the generator", labels=labels)
    saturated = GaugeMetricFamily(
        "athos_loadgen_saturated",
        "1 when the generator is saturated: its timings are not to be trusted",
        labels=labels,
    )
    for source, health in sorted(m.health.items()):
        cpu.add_metric([source], health.get("cpu_seconds", 0.0))
        memory.add_metric([source], health.get("memory_bytes", 0.0))
        fds.add_metric([source], health.get("open_fds", 0.0))
        saturated.add_metric([source], health.get("saturated", 0.0))
    yield from (cpu, memory, fds, saturated, m.loop_lag.family())


def _le(bound: float) -> str:
    return repr(float(bound))
