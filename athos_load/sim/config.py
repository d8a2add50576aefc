"""The simulator's knobs: one frozen config, its command line, and the latency distributions."""

from __future__ import annotations

import argparse
import math
import os
import random
from dataclasses import dataclass, field
from typing import Any

from athos_load.wire import SERVER_ERROR_CODES, ErrorCode

# z-score of the 95th percentile of a standard normal: turns (median, p95) into a lognormal sigma.
_Z95 = 1.6448536269514722

# Drills the simulator knows out of the box, with the persona that plays each.
DEFAULT_DRILLS: dict[str, str] = {
    "ma-full-sale": "Dana Whitfield",
    "cold-call-discovery": "Marcus Lee",
    "objection-handling": "Priya Raman",
    "renewal-upsell": "Tom Becker",
    "callback-discovery": "Nina Alvarez",
}
ANY_DRILL_PERSONA = "Alex Morgan"
# Drills whose persona greets the rep right after ready, with the greeting's length in seconds
# (``--greeting-drills``; the other drills greet for ``--greeting`` seconds, by default not at all).
DEFAULT_GREETING_DRILLS: dict[str, float] = {"callback-discovery": 1.5}
# The built-in simulator's public credentials, for runs against it only. A launcher hands others
# through these environment variables, never on the command line (``ps`` shows command lines).
SIM_API_KEY = "sim-key"
SIM_WEBHOOK_SECRET = "whsec_athos_sim"
API_KEY_ENV = "ATHOS_SIM_API_KEY"
WEBHOOK_SECRET_ENV = "ATHOS_SIM_WEBHOOK_SECRET"


@dataclass(frozen=True, slots=True)
class Distribution:
    """A latency or duration distribution in seconds, written as a short spec string.

    ``fixed:0.2``, ``uniform:1,3`` or ``lognormal:0.15,0.4`` (median, p95). Lognormal is the shape
    service latencies have in practice: a body near the median and a long right tail.
    """

    kind: str
    a: float
    b: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> Distribution:
        kind, _, args = spec.partition(":")
        try:
            values = [float(v) for v in args.split(",")] if args else []
        except ValueError:
            raise ValueError(f"{spec!r}: arguments must be numbers") from None
        if any(not math.isfinite(v) or v < 0 for v in values):
            raise ValueError(f"{spec!r}: arguments must be finite and >= 0")
        if kind == "fixed" and len(values) == 1:
            return cls("fixed", values[0])
        if kind == "uniform" and len(values) == 2 and values[0] <= values[1]:
            return cls("uniform", values[0], values[1])
        if kind == "lognormal" and len(values) == 2 and 0 < values[0] <= values[1]:
            return cls("lognormal", values[0], values[1])
        raise ValueError(f"{spec!r}: expected fixed:X, uniform:LO,HI or lognormal:MEDIAN,P95 (MEDIAN <= P95)")

    def sample(self, rng: random.Random) -> float:
        if self.kind == "fixed":
            return self.a
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b)
        sigma = math.log(self.b / self.a) / _Z95
        return rng.lognormvariate(math.log(self.a), sigma)

    def __str__(self) -> str:
        if self.kind == "fixed":
            return f"fixed:{self.a:g}"
        return f"{self.kind}:{self.a:g},{self.b:g}"


@dataclass(frozen=True, slots=True)
class Degradation:
    """A platform that gets worse as it runs, for soak tests (drift and change-point detection):
    ready and response latencies are multiplied by :meth:`factor`, the product of

    * ``growth``: ``1 + growth * hours since start`` (latency that creeps up: 0.2 is +20% an hour);
    * ``step``: ``step_factor`` from ``step_at`` seconds after start on (a bad deploy at minute M);
    * ``leak``: ``1 + leak * calls served / 1000`` (a leak: slower with every call it has made).
    """

    growth: float = 0.0
    step_at: float = 0.0
    step_factor: float = 1.0
    leak: float = 0.0

    def factor(self, elapsed: float, served: int) -> float:
        step = self.step_factor if self.step_factor != 1.0 and elapsed >= self.step_at else 1.0
        return (1.0 + self.growth * elapsed / 3600.0) * step * (1.0 + self.leak * served / 1000.0)

    @staticmethod
    def parse_step(text: str) -> tuple[float, float]:
        """``AT:FACTOR``: seconds after start, and the multiplier from then on."""
        at, sep, factor = text.partition(":")
        try:
            values = (float(at), float(factor))
        except ValueError:
            values = (math.nan, math.nan)
        if not sep or not all(math.isfinite(v) for v in values) or values[0] < 0 or values[1] <= 0:
            raise ValueError(f"{text!r}: expected AT:FACTOR (seconds >= 0, a factor > 0), e.g. 600:1.5")
        return values


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Every knob of the simulator; the defaults are a healthy platform with realistic latencies."""

    host: str = "127.0.0.1"
    port: int = 0
    api_key: str = SIM_API_KEY
    tls_cert: str | None = None
    tls_key: str | None = None
    truth_log: str | None = None
    seed: int | None = None
    ws_reader: str = "tap"
    # tokens and drills
    token_ttl: float = 300.0
    mint_rate: float = 0.0
    drills: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_DRILLS))
    any_drill: bool = False
    # capacity and injected errors
    max_calls: int = 0
    error_rate: float = 0.0
    error_code: str = ErrorCode.INTERNAL_ERROR.value
    join_timeout: float = 10.0
    # latencies
    ready_latency: Distribution = Distribution("lognormal", 0.15, 0.4)
    response_latency: Distribution = Distribution("lognormal", 0.6, 1.2)
    score_delay: Distribution = Distribution("lognormal", 2.0, 5.0)
    persona_utterance: Distribution = Distribution("uniform", 1.0, 3.0)
    load_slowdown: float = 0.5
    latency_scale: float = 1.0
    degradation: Degradation = Degradation()
    # conversation
    greeting: float = 0.0
    greeting_drills: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_GREETING_DRILLS))
    persona_turns: int = 0
    max_call_seconds: float = 600.0
    vad_threshold_db: float = -40.0
    vad_hangover_ms: float = 300.0
    # what the rep hears (each off by default; the truth log records every draw)
    endpointing_delay: Distribution = Distribution("fixed", 0.0)
    persona_audio_delay: Distribution = Distribution("fixed", 0.0)
    barge_in_ignore: float = 0.0
    barge_in_yield: Distribution = Distribution("fixed", 0.0)
    persona_gaps: float = 0.0
    persona_gap: Distribution = Distribution("fixed", 0.2)
    persona_jitter: Distribution = Distribution("fixed", 0.0)
    transcript_drop: float = 0.0
    transcript_merge: float = 0.0
    transcript_shift: float = 0.0
    transcript_shift_by: float = 1.0
    # transient drops: a few, so a first run against the defaults shows reconnects (about 5 in the
    # README's minute of 20 reps); a drop is resumed and the conversation goes on where it was
    drops_per_minute: float = 0.3
    drop_after: float = 0.0
    resume_window: float = 10.0
    resume_fail_rate: float = 0.0
    # scoring and webhooks
    scorers: int = 16  # ~8 calls/s at the default 2 s median: a 200-rep run does not build a backlog
    webhook_url: str | None = None
    webhook_secret: str = SIM_WEBHOOK_SECRET
    webhook_retries: int = 1  # Athos retries a failed delivery once, about 5 minutes later
    webhook_retry_delay: float = 300.0
    score_fail_rate: float = 0.0  # calls whose scoring fails: call.scored success false, SCORING_INCOMPLETE
    unavailable_rate: float = 0.0  # redeems answered 503 SERVICE_UNAVAILABLE (no persona free; token spent)
    quota_calls: int = 0  # the tenant's allowance of session tokens (0: unlimited); then TENANT_QUOTA_EXCEEDED
    webhook_failure_rate: float = 0.0
    webhook_duplicate_rate: float = 0.0
    call_retention: float = 3600.0
    max_retained_calls: int = 100_000

    def persona_for(self, drill_key: str) -> str | None:
        """The persona playing a drill, or None if the platform does not know the drill."""
        persona = self.drills.get(drill_key)
        if persona is None and self.any_drill:
            return ANY_DRILL_PERSONA
        return persona

    def greeting_for(self, drill_key: str) -> float:
        """Seconds the persona greets for right after ready on this drill; 0 = no greeting."""
        return self.greeting_drills.get(drill_key, self.greeting)

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> SimConfig:
        parser = build_parser()
        ns = parser.parse_args(argv)
        unknown = sorted(set(ns.greeting_drills) - set(ns.drills))
        # a typo would silently never greet; the default is left alone when --drills replaces its drill
        if unknown and not ns.any_drill and ns.greeting_drills != DEFAULT_GREETING_DRILLS:
            parser.error(f"--greeting-drills: unknown drill(s) {', '.join(unknown)} (not in --drills)")
        values: dict[str, Any] = {k: v for k, v in vars(ns).items() if k != "log_level"}
        values["api_key"] = values["api_key"] or os.environ.get(API_KEY_ENV) or SIM_API_KEY
        values["webhook_secret"] = values["webhook_secret"] or os.environ.get(WEBHOOK_SECRET_ENV) or SIM_WEBHOOK_SECRET
        step_at, step_factor = values.pop("latency_step") or (0.0, 1.0)
        values["degradation"] = Degradation(
            values.pop("latency_growth"), step_at, step_factor, values.pop("leak_slowdown")
        )
        return cls(**values)


# -- command line ----------------------------------------------------------------------------------


def _step(text: str) -> tuple[float, float]:
    try:
        return Degradation.parse_step(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _distribution(spec: str) -> Distribution:
    try:
        return Distribution.parse(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text}: a probability must be within [0, 1]")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text}: must be a finite number >= 0")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text}: must be a finite number > 0")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: must be >= 0")
    return value


def _pairs(text: str, what: str) -> list[tuple[str, str]]:
    """``KEY=VALUE,...`` as (key, value) pairs; ``what`` names the value in the error."""
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise argparse.ArgumentTypeError(f"{item!r}: expected KEY={what}")
        pairs.append((key.strip(), value.strip()))
    return pairs


def _drills(text: str) -> dict[str, str]:
    drills = dict(_pairs(text, "PERSONA"))
    if not drills:
        raise argparse.ArgumentTypeError("at least one KEY=PERSONA is needed")
    return drills


def _greeting_drills(text: str) -> dict[str, float]:
    greetings: dict[str, float] = {}
    for key, seconds in _pairs(text, "SECONDS"):
        try:
            greetings[key] = _non_negative(seconds)
        except (ValueError, argparse.ArgumentTypeError):
            raise argparse.ArgumentTypeError(f"{key}={seconds!r}: SECONDS must be a finite number >= 0") from None
    return greetings  # empty ('') is allowed: no drill greets but by --greeting


def build_parser() -> argparse.ArgumentParser:
    d = SimConfig()
    p = argparse.ArgumentParser(
        prog="athos-sim",
        description="The built-in Athos platform simulator: REST, realtime WebSocket, scoring and webhooks, "
        "with every fault a knob. Distributions are fixed:X, uniform:LO,HI or lognormal:MEDIAN,P95 (seconds).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("server")
    g.add_argument("--host", default=d.host, help="address to listen on")
    g.add_argument("--port", type=int, default=d.port, help="port to listen on; 0 picks a free port")
    g.add_argument(
        "--api-key",
        default=None,
        help=f"the Bearer key REST calls must present; default: ${API_KEY_ENV}, else {d.api_key!r} "
        "(the variable keeps a real key off the command line)",
    )
    g.add_argument("--tls-cert", default=None, help="PEM certificate: serve https:// and wss:// (with --tls-key)")
    g.add_argument("--tls-key", default=None, help="PEM private key for --tls-cert")
    g.add_argument("--truth-log", default=None, help="write the ground-truth JSON lines here")
    g.add_argument("--seed", type=int, default=None, help="seed for every random draw (latencies, faults)")
    g.add_argument("--log-level", default="warning", help="stderr log level (debug, info, warning, error)")
    g.add_argument(
        "--ws-reader",
        choices=("tap", "aiohttp"),
        default=d.ws_reader,
        help="tap: call frames are parsed in data_received (fast); aiohttp: every frame goes "
        "through aiohttp's reader and a task wake-up (the fallback, for comparison)",
    )

    g = p.add_argument_group("tokens and drills")
    g.add_argument("--token-ttl", type=_non_negative, default=d.token_ttl, help="seconds a minted token stays valid")
    g.add_argument(
        "--mint-rate",
        type=_non_negative,
        default=d.mint_rate,
        help="tokens per second the mint endpoint grants (token bucket); 0 = unlimited",
    )
    g.add_argument(
        "--drills",
        type=_drills,
        default=",".join(f"{key}={persona}" for key, persona in d.drills.items()),  # argparse applies type
        metavar="KEY=PERSONA,...",
        help="replace the known drills and their personas",
    )
    g.add_argument("--any-drill", action="store_true", help="accept any drill key")

    g = p.add_argument_group("capacity and errors")
    g.add_argument(
        "--max-calls",
        type=_count,
        default=d.max_calls,
        help="concurrent calls before joins get concurrency_limit; 0 = unlimited",
    )
    g.add_argument(
        "--error-rate",
        type=_probability,
        default=d.error_rate,
        help="probability that a join is refused with --error-code",
    )
    g.add_argument(
        "--error-code",
        default=d.error_code,
        choices=sorted(str(c) for c in SERVER_ERROR_CODES),
        help="code of the injected join errors",
    )
    g.add_argument(
        "--join-timeout",
        type=_non_negative,
        default=d.join_timeout,
        help="seconds a new connection has to send join or resume; 0 = no limit",
    )

    g = p.add_argument_group("latencies")
    g.add_argument("--ready-latency", type=_distribution, default=d.ready_latency, help="join -> ready")
    g.add_argument(
        "--response-latency",
        type=_distribution,
        default=d.response_latency,
        help="rep stops speaking -> persona starts",
    )
    g.add_argument("--score-delay", type=_distribution, default=d.score_delay, help="time a scorer spends on one call")
    g.add_argument(
        "--persona-utterance", type=_distribution, default=d.persona_utterance, help="length of one persona utterance"
    )
    g.add_argument(
        "--load-slowdown",
        type=_non_negative,
        default=d.load_slowdown,
        help="ready and response latencies are multiplied by 1 + F * active_calls / 100",
    )
    g.add_argument(
        "--latency-scale",
        type=_positive,
        default=d.latency_scale,
        help="ready and response latencies are multiplied by F: 1.3 is a release 30%% slower (baseline tests)",
    )
    g.add_argument(
        "--latency-growth",
        type=_non_negative,
        default=d.degradation.growth,
        help="degradation over time: latencies are multiplied by 1 + F * hours since start (0.2: +20%% an hour)",
    )
    g.add_argument(
        "--latency-step",
        type=_step,
        default=None,
        metavar="AT:FACTOR",
        help="a step change: latencies are multiplied by FACTOR from AT seconds after start on (600:1.5)",
    )
    g.add_argument(
        "--leak-slowdown",
        type=_non_negative,
        default=d.degradation.leak,
        help="a leak: latencies are multiplied by 1 + F * calls served / 1000",
    )

    g = p.add_argument_group("conversation")
    g.add_argument(
        "--greeting",
        type=_non_negative,
        default=d.greeting,
        help="seconds the persona speaks right after ready; 0 = no greeting",
    )
    g.add_argument(
        "--greeting-drills",
        type=_greeting_drills,
        default=",".join(f"{key}={seconds:g}" for key, seconds in d.greeting_drills.items()),  # argparse applies type
        metavar="KEY=SECONDS,...",
        help="per-drill greetings, overriding --greeting for those drills (KEY=0: that drill does not "
        "greet; '' for none)",
    )
    g.add_argument(
        "--persona-turns",
        type=_count,
        default=d.persona_turns,
        help="the persona ends the call after this many answers; 0 = never",
    )
    g.add_argument(
        "--max-call-seconds",
        type=_non_negative,
        default=d.max_call_seconds,
        help="calls are ended (reason max_duration) after this long; 0 = no limit",
    )
    g.add_argument(
        "--vad-threshold-db",
        type=float,
        default=d.vad_threshold_db,
        help="frame RMS in dBFS above which rep audio is speech",
    )
    g.add_argument(
        "--vad-hangover-ms", type=_non_negative, default=d.vad_hangover_ms, help="non-speech that ends a rep utterance"
    )

    g = p.add_argument_group("what the rep hears")
    g.add_argument(
        "--endpointing-delay",
        type=_distribution,
        default=d.endpointing_delay,
        help="slow endpointing: after the VAD's hangover, this long more before userSpeaking false (and the answer)",
    )
    g.add_argument(
        "--persona-audio-delay",
        type=_distribution,
        default=d.persona_audio_delay,
        help="personaSpeaking true is sent, and the utterance's audio starts this much later",
    )
    g.add_argument(
        "--barge-in-ignore",
        type=_probability,
        default=d.barge_in_ignore,
        help="probability that the persona talks on when the rep barges in",
    )
    g.add_argument(
        "--barge-in-yield",
        type=_distribution,
        default=d.barge_in_yield,
        help="a persona that yields to a barge-in stops this long after it heard the rep start",
    )
    g.add_argument(
        "--persona-gaps",
        type=_non_negative,
        default=d.persona_gaps,
        help="stalls in the persona's audio per minute of it (Poisson; more under load, as latencies)",
    )
    g.add_argument(
        "--persona-gap", type=_distribution, default=d.persona_gap, help="how long one stall of the persona's audio is"
    )
    g.add_argument(
        "--persona-jitter",
        type=_distribution,
        default=d.persona_jitter,
        help="extra lateness of each persona audio frame, the stream's pace kept (more under load)",
    )
    g.add_argument(
        "--transcript-drop",
        type=_probability,
        default=d.transcript_drop,
        help="probability that a rep utterance is left out of the transcript (more under load)",
    )
    g.add_argument(
        "--transcript-merge",
        type=_probability,
        default=d.transcript_merge,
        help="probability that a rep utterance is merged into the rep's segment before it (more under load)",
    )
    g.add_argument(
        "--transcript-shift",
        type=_probability,
        default=d.transcript_shift,
        help="probability that a rep segment is shifted by --transcript-shift-by seconds (more under load)",
    )
    g.add_argument(
        "--transcript-shift-by", type=float, default=d.transcript_shift_by, help="seconds a shifted segment moves"
    )

    g = p.add_argument_group("transient drops")
    g.add_argument(
        "--drops-per-minute",
        type=_non_negative,
        default=d.drops_per_minute,
        help="abrupt connection drops per active call-minute (Poisson); 0 for none",
    )
    g.add_argument(
        "--drop-after",
        type=_non_negative,
        default=d.drop_after,
        help="drop every call once, this many seconds after ready; 0 = off",
    )
    g.add_argument(
        "--resume-window",
        type=_non_negative,
        default=d.resume_window,
        help="seconds a dropped call can be resumed before it ends (reason dropped)",
    )
    g.add_argument(
        "--resume-fail-rate",
        type=_probability,
        default=d.resume_fail_rate,
        help="probability that a valid resume fails with unknown_call (the call is lost)",
    )

    g = p.add_argument_group("scoring and webhooks")
    g.add_argument("--scorers", type=_count, default=d.scorers, help="scoring workers draining the queue")
    g.add_argument(
        "--webhook-url", default=None, help="where call.scored is POSTed (none: no webhooks, poll GET /calls)"
    )
    g.add_argument(
        "--webhook-secret",
        default=None,
        help=f"HMAC secret of the webhook signature; default: ${WEBHOOK_SECRET_ENV}, else {d.webhook_secret!r}",
    )
    g.add_argument(
        "--webhook-retries",
        type=_count,
        default=d.webhook_retries,
        help="retries after a failed delivery, each --webhook-retry-delay later (Athos: one, ~5 minutes later)",
    )
    g.add_argument(
        "--webhook-retry-delay",
        type=_non_negative,
        default=d.webhook_retry_delay,
        help="seconds between a failed delivery and its retry (make it short for tests)",
    )
    g.add_argument(
        "--score-fail-rate",
        type=_probability,
        default=d.score_fail_rate,
        help="fraction of calls whose scoring fails: call.scored with success false, reason SCORING_INCOMPLETE",
    )
    g.add_argument(
        "--unavailable-rate",
        type=_probability,
        default=d.unavailable_rate,
        help="probability that a redeem finds no persona: 503 SERVICE_UNAVAILABLE (the session token is spent)",
    )
    g.add_argument(
        "--quota-calls",
        type=_count,
        default=d.quota_calls,
        help="session tokens the tenant may mint (0: unlimited); then 403 TENANT_QUOTA_EXCEEDED",
    )
    g.add_argument(
        "--webhook-failure-rate",
        type=_probability,
        default=d.webhook_failure_rate,
        help="probability that a delivery attempt fails without being sent",
    )
    g.add_argument(
        "--webhook-duplicate-rate",
        type=_probability,
        default=d.webhook_duplicate_rate,
        help="probability that a delivered event is delivered once more (same X-Athos-Webhook-Id)",
    )
    g.add_argument(
        "--call-retention", type=_non_negative, default=d.call_retention, help="seconds a scored call stays queryable"
    )
    g.add_argument(
        "--max-retained-calls",
        type=_count,
        default=d.max_retained_calls,
        help="scored calls kept in memory at most; the oldest are evicted",
    )
    return p
