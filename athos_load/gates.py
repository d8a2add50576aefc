"""CI gates: k6-style thresholds on the tool's own recordings (the run's verdict: athos_load/verdict.py).

A gates file is YAML, a mapping from metric to a list of thresholds, as k6 users write them::

    connect_ready: ["p(95) < 1.5s", "p(99) < 3s"]
    persona_response{scenario:ma-full-sale}: ["med < 800ms"]
    errors: ["rate < 0.01"]
    errors{code:no_reply}: ["count == 0"]
    scores_missing: ["count == 0"]
    call_setup: ["rate > 0.99"]
    reconnects_per_session_minute: ["value < 0.05"]
    end_to_score:
      - threshold: "p(99) < 90s"
        abort_on_fail: true       # stop the run as soon as this fails on enough samples
        delay_abort_eval: 30s     # not before 30 s into the run

A timing (:class:`~athos_load.metrics.Timing`, or ``audio_send_lag``) takes ``avg``, ``min``,
``max``, ``med``, ``p(N)`` and ``count``, with a unit on every duration (``ms``, ``s``, ``m``: a
bare number would be read as milliseconds by a k6 user and as seconds by anyone else). The counted
metrics take ``count`` and ``rate`` (:data:`RATES` says rate of what); the per-minute rates
(:data:`VALUES`: reconnects per session-minute, underruns and dead air per persona-minute) take
``value``. Values are the tool's 0.1% histograms and exact counters, never Locust's percentiles.

With ``--athos-baseline`` (a previous run's JSON summary), a ``regression`` entry holds relative
limits, ``TIMING.STAT: N%`` with STAT ``pN``, ``med`` or ``avg``::

    regression: {connect_ready.p95: 10%, persona_response.p50: 10%}

and the run fails when it is worse than the baseline by more than N% with 95% confidence
(:mod:`athos_load.baseline` says how); :data:`DEFAULT_REGRESSION` applies when the file has none.

A gate needs enough samples to mean something: ``p(N)`` needs ``ceil(100 / (100 - N))`` (p(95): 20,
p(99): 100), every other aggregate at least one. A gate without them is *insufficient*, and the run is
then invalid rather than passed or failed.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from . import trends
from .baseline import CONFIDENCE, MIN_WINDOWS, RESAMPLES, Baseline, Comparison, compare
from .metrics import KNOWN_CODES, Metrics, Outcome, Timing
from .trends import Drift
from .userfiles import read_yaml, shown

TIMINGS = (*(t.value for t in Timing), "audio_send_lag")
# counted metric -> (what ``count`` is, what ``rate`` is)
RATES = {
    "errors": "error events (of one code with {code:X}) per call started",
    "scores_missing": "completed calls whose score never came, over completed calls",
    "call_setup": "calls that reached ready over calls that tried (ready + failed before ready)",
    "barge_ins_ignored": "barge-ins the persona talked on through, over barge-ins made",
}
VALUES = {
    "reconnects_per_session_minute": "transient drops per minute of connected call time",
    "underruns_per_persona_minute": "persona audio frames later than the client's jitter buffer, per minute of it",
    "dead_air_per_persona_minute": "seconds of silence inside persona utterances, per minute of its audio",
    "transcript_wer": "word error rate of the rep's words in the checked transcripts",
}
METRICS = (*TIMINGS, *RATES, *VALUES, *trends.LEVELS)
# audio_send_lag is the generator's, not a scenario's: it has no scenario label to filter by
FILTERS = {
    "scenario": (
        *(t.value for t in Timing),
        "scores_missing",
        "call_setup",
        "barge_ins_ignored",
        "transcript_missing",
        "transcript_misaligned",
    ),
    "code": ("errors",),
}

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0}
_METRIC = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<key>\w+):(?P<value>[^{}]+)\})?$")
_EXPRESSION = re.compile(
    r"^\s*(?P<agg>avg|min|max|med|count|rate|value|p\((?P<q>[0-9.]+)\))\s*"
    r"(?P<op><=|>=|==|!=|<|>)\s*(?P<number>[0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*(?P<unit>ms|s|m)?\s*$"
)
# drift(p95) < 10%/h: a timing's percentile growing by at most a tenth of its level an hour;
# a rate's in its own units: errors: drift < 0.01/h (error events per call, up by 0.01 an hour)
_DRIFT = re.compile(
    r"^\s*drift(?:\((?:p(?P<q>[0-9]+(?:\.[0-9]+)?)|(?P<med>med))\))?\s*(?P<op><=|>=|<|>)\s*"
    r"(?P<number>-?[0-9]*\.?[0-9]+)\s*(?P<pct>%)?/h\s*$"
)
_REGRESSION = re.compile(r"^(?P<name>[a-z_]+)\.(?P<stat>avg|med|p(?P<q>[0-9]+(?:\.[0-9]+)?))$")
_PERCENT = re.compile(r"^\s*(?P<number>[0-9]*\.?[0-9]+)\s*%\s*$")
DEFAULT_REGRESSION = {"connect_ready.p95": "10%", "persona_response.p50": "10%", "persona_response.p95": "10%"}
_DURATION = re.compile(r"^\s*(?P<number>[0-9]*\.?[0-9]+)\s*(?P<unit>ms|s|m)\s*$")


class GatesError(ValueError):
    """A gates file with a mistake; the text reads ``FILE:LINE: what is wrong``."""


@dataclass(frozen=True)
class Gate:
    """One threshold on one metric."""

    metric: str  # as written, e.g. "connect_ready{scenario:quick}"
    name: str  # the metric alone
    filter: tuple[str, str] | None  # ("scenario", "quick")
    expression: str  # as written, e.g. "p(95) < 1.5s"
    aggregate: str  # avg, min, max, med, p, count, rate, value
    quantile: float | None  # for p(N)
    op: str
    limit: float  # in seconds for durations
    abort_on_fail: bool = False
    delay_abort_eval: float = 0.0
    line: int = 0

    @property
    def min_samples(self) -> int:
        if self.aggregate == "drift":
            return trends.MIN_WINDOWS
        return _min_samples(self.quantile if self.aggregate == "p" else None)

    def evaluate(self, metrics: Metrics) -> GateResult:
        if self.aggregate == "drift":
            return self._evaluate_drift(metrics)
        observed, samples = observe(metrics, self)
        enough = observed is not None and samples >= self.min_samples
        passed = bool(enough and OPERATORS[self.op](observed, self.limit))
        return GateResult(self, observed, samples, passed if enough else None)

    def _evaluate_drift(self, metrics: Metrics) -> GateResult:
        """Fails only when the whole interval lies past the limit: noise alone rarely fails it."""
        found = trends.metric_drift(metrics.timeline_summary(), self.name, self.quantile)
        if found is None:
            return GateResult(self, None, 0, None)
        bound = found.low if self.op in ("<", "<=") else found.high  # the end nearest the limit
        return GateResult(self, found.per_hour, found.windows, bool(OPERATORS[self.op](bound, self.limit)), found)

    def __str__(self) -> str:
        return f"{self.metric}: {self.expression}"


@dataclass(frozen=True)
class GateResult:
    gate: Gate
    observed: float | None
    samples: int
    passed: bool | None  # None: too few samples to judge
    drift: Drift | None = None  # for a drift gate: the slope's interval

    def shortfall(self) -> str:
        unit = "windows" if self.gate.aggregate == "drift" else "samples"
        return f"{self.samples} {unit}, at least {self.gate.min_samples} needed to judge it"

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.gate.metric,
            "threshold": self.gate.expression,
            "observed": self.observed,
            "shown": format_value(self),
            "samples": self.samples,
            "min_samples": self.gate.min_samples,
            "passed": self.passed,
            "abort_on_fail": self.gate.abort_on_fail,
            **({"interval": [self.drift.low, self.drift.high]} if self.drift is not None else {}),
        }


def _min_samples(quantile: float | None) -> int:
    """p(N) needs ceil(100 / (100 - N)) samples; anything else one."""
    if quantile is None or quantile >= 100:
        return 1
    return max(1, math.ceil(100.0 / (100.0 - quantile) - 1e-9))


@dataclass(frozen=True)
class Regression:
    """A relative limit against the baseline run: ``connect_ready.p95: 10%``."""

    metric: str  # as written, e.g. "connect_ready.p95"
    name: str  # the timing
    quantile: float | None  # None: the mean
    limit: float  # 0.10 for 10%
    line: int = 0
    baseline: Baseline | None = field(default=None, compare=False)  # bound from --athos-baseline
    abort_on_fail: ClassVar[bool] = False
    delay_abort_eval: ClassVar[float] = 0.0

    @property
    def expression(self) -> str:
        return f"at most {self.limit:.0%} worse than the baseline"

    @property
    def min_samples(self) -> int:
        return _min_samples(self.quantile)

    def evaluate(self, metrics: Metrics, *, resamples: int = RESAMPLES) -> RegressionResult:
        """This run so far against the baseline (fewer ``resamples``: a rougher bound, sooner)."""
        if self.baseline is None:
            raise RuntimeError(f"{self}: no baseline bound")
        current = [window.timings[self.name] for _, window in metrics.timeline if self.name in window.timings]
        comparison = compare(self.baseline.histograms(self.name), current, self.quantile, resamples=resamples)
        enough = (
            comparison.lower is not None
            and comparison.samples >= self.min_samples
            and comparison.windows >= MIN_WINDOWS
        )
        passed = comparison.lower <= 1.0 + self.limit if enough else None
        return RegressionResult(self, comparison, passed)

    def __str__(self) -> str:
        return f"{self.metric}: {self.expression}"


@dataclass(frozen=True)
class RegressionResult:
    gate: Regression
    comparison: Comparison
    passed: bool | None  # None: too few samples or windows to judge

    @property
    def observed(self) -> float | None:
        """How much worse (+) or better (-) than the baseline, as a fraction."""
        ratio = self.comparison.ratio
        return None if ratio is None else ratio - 1.0

    @property
    def samples(self) -> int:
        return self.comparison.samples

    def shortfall(self) -> str:
        c = self.comparison
        return (
            f"{c.samples} samples in {c.windows} windows (the fewer of the two runs); at least "
            f"{self.gate.min_samples} samples and {MIN_WINDOWS} windows needed to compare with the baseline"
        )

    def shown(self) -> str:
        c = self.comparison
        if c.ratio is None or c.lower is None or c.baseline is None or c.current is None:
            return "no data"
        return (
            f"{c.ratio - 1:+.1%} ({_duration(c.baseline)} → {_duration(c.current)}; "
            f"at least {c.lower - 1:+.1%} with {CONFIDENCE:.0%} confidence)"
        )

    def to_dict(self) -> dict[str, Any]:
        c = self.comparison
        return {
            "metric": self.gate.metric,
            "threshold": self.gate.expression,
            "observed": self.observed,
            "shown": self.shown(),
            "samples": self.samples,
            "min_samples": self.gate.min_samples,
            "passed": self.passed,
            "abort_on_fail": False,
            "baseline": c.baseline,
            "current": c.current,
            "lower_bound": None if c.lower is None else c.lower - 1.0,
            "windows": c.windows,
        }


# -- reading a file --------------------------------------------------------------------------------


def load_gates(path: str | Path) -> list[Gate | Regression]:
    """Every gate of a file, or :class:`GatesError` naming the file, the line and the mistake."""
    root = read_yaml(path, GatesError, nodes=True)
    path = shown(path)  # as messages show it
    if root is None:
        raise GatesError(f"{path}: empty; expected a mapping from metric to thresholds")
    if not isinstance(root, yaml.MappingNode):
        raise GatesError(f"{path}:{root.start_mark.line + 1}: expected a mapping from metric to thresholds")
    gates: list[Gate | Regression] = []
    for key_node, value_node in root.value:
        where = f"{path}:{key_node.start_mark.line + 1}"
        metric = str(key_node.value).strip()
        if metric == "regression":
            gates += _parse_regressions(value_node, path)
            continue
        name, filt = _parse_metric(metric, where)
        items = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
        if isinstance(value_node, yaml.MappingNode):
            items = [value_node]
        if not items:
            raise GatesError(f"{where}: {metric}: no thresholds")
        for item in items:
            line = item.start_mark.line + 1
            gates.append(_parse_threshold(metric, name, filt, item, f"{path}:{line}", line))
    return gates


def _parse_regressions(node: yaml.Node, path: str) -> list[Regression]:
    where = f"{path}:{node.start_mark.line + 1}"
    if not isinstance(node, yaml.MappingNode) or not node.value:
        raise GatesError(f"{where}: regression: expected a mapping like {{connect_ready.p95: 10%}}")
    return [
        _regression(str(k.value), str(v.value), f"{path}:{k.start_mark.line + 1}", k.start_mark.line + 1)
        for k, v in node.value
    ]


def _regression(metric: str, limit: str, where: str, line: int = 0) -> Regression:
    match = _REGRESSION.match(metric.strip())
    if not match or match["name"] not in TIMINGS:
        raise GatesError(
            f"{where}: regression: {metric!r}: expected TIMING.STAT, TIMING one of {', '.join(TIMINGS)} "
            "and STAT pN, med or avg (connect_ready.p95)"
        )
    percent = _PERCENT.match(limit)
    if not percent:
        raise GatesError(f"{where}: regression: {metric}: {limit!r}: expected a percentage like 10%")
    stat = match["stat"]
    quantile = None if stat == "avg" else 50.0 if stat == "med" else float(match["q"])
    if quantile is not None and not 0 < quantile < 100:
        raise GatesError(f"{where}: regression: {metric}: pN needs 0 < N < 100")
    return Regression(metric.strip(), match["name"], quantile, float(percent["number"]) / 100.0, line)


def default_regressions() -> list[Regression]:
    """The limits a baseline is held to when the gates file names none."""
    return [_regression(metric, limit, "default") for metric, limit in DEFAULT_REGRESSION.items()]


def _parse_metric(metric: str, where: str) -> tuple[str, tuple[str, str] | None]:
    match = _METRIC.match(metric)
    if not match:
        raise GatesError(f"{where}: {metric!r}: expected METRIC or METRIC{{scenario:NAME}}")
    name = match["name"]
    if name not in METRICS:
        raise GatesError(f"{where}: unknown metric {name!r} (known: {', '.join(METRICS)})")
    if match["key"] is None:
        return name, None
    key, value = match["key"], match["value"].strip()
    if name not in FILTERS.get(key, ()):
        allowed = [k for k, names in FILTERS.items() if name in names]
        hint = f"{name} takes {{{allowed[0]}:…}}" if allowed else f"{name} takes no filter"
        raise GatesError(f"{where}: {metric!r}: cannot filter by {key!r} ({hint})")
    if key == "code" and value not in KNOWN_CODES:
        raise GatesError(f"{where}: {metric!r}: unknown error code {value!r}")
    return name, (key, value)


def _parse_threshold(
    metric: str, name: str, filt: tuple[str, str] | None, node: yaml.Node, where: str, line: int
) -> Gate:
    abort, delay = False, 0.0
    if isinstance(node, yaml.MappingNode):
        fields = {str(k.value): v for k, v in node.value}
        unknown = set(fields) - {"threshold", "abort_on_fail", "delay_abort_eval"}
        if unknown or "threshold" not in fields:
            raise GatesError(
                f"{where}: a threshold object has 'threshold' and optionally 'abort_on_fail', 'delay_abort_eval'"
                + (f" (not {', '.join(sorted(unknown))})" if unknown else "")
            )
        abort_text = str(fields["abort_on_fail"].value) if "abort_on_fail" in fields else "false"
        if abort_text not in ("true", "false"):
            raise GatesError(f"{where}: abort_on_fail: expected true or false, got {abort_text!r}")
        abort = abort_text == "true"
        if "delay_abort_eval" in fields:
            text = str(fields["delay_abort_eval"].value)
            match = _DURATION.match(text)
            if not match:
                raise GatesError(f"{where}: delay_abort_eval: {text!r} is not a duration like 30s or 500ms")
            delay = float(match["number"]) * UNITS[match["unit"]]
        node = fields["threshold"]
    if not isinstance(node, yaml.ScalarNode):
        raise GatesError(f'{where}: {metric}: a threshold is a string like "p(95) < 1.5s"')
    expression = str(node.value)
    drifting = _DRIFT.match(expression)
    if drifting:
        timing = name in (t.value for t in Timing)
        has_quantile = drifting["q"] is not None or drifting["med"] is not None
        if not (timing or name in trends.LEVELS or name in trends.RATES):
            raise GatesError(
                f"{where}: {metric}: {expression!r}: drift is of a timing's percentile, "
                f"a rate ({', '.join(trends.RATES)}) or the generator's {', '.join(trends.LEVELS)}"
            )
        form = "drift(pN) < X%/h" if timing else "drift < X/h" if name in trends.RATES else "drift < X%/h"
        if timing != has_quantile or (drifting["pct"] is None) != (name in trends.RATES):
            raise GatesError(f"{where}: {metric}: {expression!r}: {name} takes {form}")
        if filt is not None:
            raise GatesError(f"{where}: {metric}: {expression!r}: drift is over the whole run: no filter")
        quantile = None if not timing else 50.0 if drifting["med"] else float(drifting["q"])
        if quantile is not None and not 0 < quantile < 100:
            raise GatesError(f"{where}: {metric}: {expression!r}: drift(pN) needs 0 < N < 100")
        limit = float(drifting["number"]) / (100.0 if drifting["pct"] else 1.0)
        return Gate(metric, name, filt, expression, "drift", quantile, drifting["op"], limit, abort, delay, line)
    match = _EXPRESSION.match(expression)
    if not match:
        raise GatesError(
            f'{where}: {metric}: {expression!r}: expected AGGREGATE OP VALUE, e.g. "p(95) < 1.5s" '
            "(avg, min, max, med, p(N), count, rate, value; <, <=, >, >=, ==, !=), or drift(pN) < X%/h"
        )
    aggregate = "p" if match["q"] is not None else match["agg"]
    quantile = float(match["q"]) if match["q"] is not None else None
    if quantile is not None and not 0 < quantile <= 100:
        raise GatesError(f"{where}: {metric}: {expression!r}: p(N) needs 0 < N <= 100")
    allowed = _aggregates(name)
    if aggregate not in allowed:
        raise GatesError(f"{where}: {metric}: {expression!r}: {name} takes {', '.join(allowed)}")
    limit = float(match["number"])
    unit = match["unit"]
    if name in TIMINGS and aggregate != "count":
        if unit is None:
            raise GatesError(f"{where}: {metric}: {expression!r}: give the unit (ms, s or m)")
        limit *= UNITS[unit]
    elif unit is not None:
        raise GatesError(f"{where}: {metric}: {expression!r}: {aggregate} takes no unit")
    return Gate(metric, name, filt, expression, aggregate, quantile, match["op"], limit, abort, delay, line)


def _aggregates(name: str) -> tuple[str, ...]:
    if name in TIMINGS:
        return ("avg", "min", "max", "med", "p", "count")
    if name in RATES:
        return ("count", "rate")
    if name in trends.LEVELS:
        return ("drift",)
    return ("value",)


# -- observing -------------------------------------------------------------------------------------


def observe(metrics: Metrics, gate: Gate) -> tuple[float | None, int]:
    """The gate's observed value and the samples behind it (None when there is nothing to judge)."""
    scenario = gate.filter[1] if gate.filter and gate.filter[0] == "scenario" else None
    if gate.name in TIMINGS:
        hist = metrics.timing(gate.name, scenario)
        if gate.aggregate == "count":
            return float(hist.count), max(1, hist.count)
        if hist.count == 0:
            return None, 0
        value = {
            "avg": lambda: hist.sum / hist.count,
            "min": lambda: hist.min,
            "max": lambda: hist.max,
            "med": lambda: hist.percentile(50),
            "p": lambda: hist.percentile(gate.quantile or 0.0),
        }[gate.aggregate]()
        return value, hist.count
    if gate.name in VALUES:
        value = {
            "reconnects_per_session_minute": metrics.reconnects_per_session_minute,
            "underruns_per_persona_minute": lambda: metrics.persona_minute_rate(metrics.persona_underruns),
            "dead_air_per_persona_minute": lambda: metrics.persona_minute_rate(metrics.persona_dead_air),
            "transcript_wer": metrics.transcript_wer,
        }[gate.name]()
        return value, 0 if value is None else 1
    match = {"scenario": scenario} if scenario else {}
    if gate.name == "errors":
        code = gate.filter[1] if gate.filter else None
        count = metrics.total("athos_errors", code=code) if code else metrics.total("athos_errors")
        denominator = metrics.total("athos_sessions_started")
    elif gate.name == "scores_missing":
        count = metrics.total("athos_scores_missing", **match)
        denominator = metrics.total("athos_sessions", outcome=Outcome.COMPLETED.value, **match)
    elif gate.name in ("transcript_missing", "transcript_misaligned"):
        count = metrics.total(f"athos_{gate.name}", **match)
        denominator = metrics.total("athos_transcript_turns", **match)
    elif gate.name == "barge_ins_ignored":
        count = metrics.total("athos_barge_ins_ignored", **match)
        denominator = count + metrics.timings[Timing.BARGE_IN].merged(**match).count
    else:  # call_setup
        count, denominator = metrics.call_setup(scenario)
    if gate.aggregate == "count":
        return float(count), 1
    if denominator == 0:
        return None, 0
    return count / denominator, int(denominator)


# -- showing a result ------------------------------------------------------------------------------


def format_value(result: GateResult | RegressionResult) -> str:
    """The observed value in the gate's own terms (durations in ms or s)."""
    if isinstance(result, RegressionResult):
        return result.shown()
    value = result.observed
    if value is None:
        return "no data"
    if result.drift is not None:
        return result.drift.shown()
    if result.gate.name in TIMINGS and result.gate.aggregate != "count":
        return _duration(value)
    if result.gate.aggregate == "count":
        return f"{value:g}"
    return f"{value:.4g}"


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.1f}ms" if seconds < 1 else f"{seconds:.3f}s"
