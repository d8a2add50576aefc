"""A call's peers, faked, on a virtual clock: the unit tier's one set of fakes.

:class:`VirtualClock` is the clock a :class:`~athos_load.call.Call` drives time with: it moves only
when the call sleeps, to the earliest of the call's deadline and the next scripted happening.
:class:`FakeTransport` is a transport (athos_load/transport.py) that is not a WebSocket: a
:class:`Platform` script decides which SDK events and persona frames come back, and when. So every
timing a call records is known exactly, and a call of minutes runs in milliseconds.
"""

from __future__ import annotations

import heapq
import itertools
import random
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import gevent.event

from athos_load.api import ApiError, Score, ScoreBoard
from athos_load.audio import Clip
from athos_load.call import Call, CallSettings, ScoreDrain
from athos_load.metrics import Metrics, Outcome, Timing
from athos_load.scenario import Scenario, Turn
from athos_load.session import SessionError
from athos_load.transport import CallListener
from athos_load.wire import (
    AudioFormat,
    CallRecord,
    CallStatus,
    Connecting,
    Ended,
    Error,
    Event,
    Ready,
    Redemption,
    Segment,
    Speaker,
    Speaking,
)
from support.locust_run import check_accounting as run_accounting

FMT = AudioFormat()
CLIP_FRAMES = 15  # 0.3 s of audio
SPEECH = (0.04, 0.26)  # where the rep speaks inside each clip
CALL_ID = "athos_call_test"


class VirtualClock:
    """Time that passes only when the call waits; scripted happenings run at their time."""

    def __init__(self, start: float | None = None) -> None:
        self.t = time.monotonic() if start is None else start
        self._due: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self.t

    def at(self, when: float, happening: Callable[[], None]) -> None:
        heapq.heappush(self._due, (when, next(self._order), happening))

    def sleep_until(self, deadline: float | None, wake: gevent.event.Event) -> None:
        """Run the next happening due by ``deadline`` (the call then looks again), or move to it."""
        if self._due and (deadline is None or self._due[0][0] <= deadline):
            when, _, happening = heapq.heappop(self._due)
            self.t = max(self.t, when)
            happening()
            return
        assert deadline is not None, "the call waits for nothing that can come: it would hang"
        self.t = max(self.t, deadline)


class FakeSpoken:
    def __init__(self, start: float, seconds: float) -> None:
        self.start, self.end = start, start + seconds


class Platform:
    """What the platform does in a test; override what the test is about. Times are on the
    virtual clock."""

    connect_seconds = 0.4
    refuse: str | None = None  # an error code that refuses the join
    reply_latency: float | tuple[float, ...] = 0.3  # the rep's speech end → personaSpeaking true
    reply_seconds = 1.0
    score_after: float | None = 2.5  # ended → call.scored; None: never scored

    def __init__(self, board: ScoreBoard | None = None) -> None:
        self.board = board

    def connect(self, session: FakeTransport) -> None:
        session.emit(Connecting())
        session.advance(self.connect_seconds)
        if self.refuse is not None:
            session.fail(self.refuse)
            raise SessionError(self.refuse, "refused")
        session.ready_at = session.clock
        session.emit(Ready("Pat", CALL_ID, "resume"))

    def turn(self, session: FakeTransport, index: int, utterance: FakeSpoken) -> None:
        """The rep's clip ``index`` is being sent; by default the persona answers it."""
        latency = self.reply_latency
        if isinstance(latency, tuple):
            latency = latency[index]
        session.persona(utterance.start + SPEECH[1] + latency, self.reply_seconds)

    def hangup(self, session: FakeTransport) -> None:
        session.end("hangup")

    def ended(self, session: FakeTransport) -> None:
        """The call ended: a completed one is scored ``score_after`` later."""
        completed = session.end_reason in ("hangup", "persona", "max_duration")
        if completed and self.board is not None and self.score_after is not None:
            self.board.deliver(Score(CALL_ID, 0.8, session.clock + self.score_after, "webhook"))


class FakeTransport:
    """A transport that is not a WebSocket: ``platform`` decides what comes back, and when."""

    def __init__(self, platform: Platform, clock: VirtualClock, *, listener: CallListener, **options: Any) -> None:
        self.platform = platform
        self.vclock = clock
        self.listener = listener
        self.options = options
        self.end_reason: str | None = None
        self.last_error: SessionError | None = None
        self.unknown_messages = 0
        self.said: list[FakeSpoken] = []
        self.ready_at: float | None = None
        self.closed = False
        self.ended = False
        self.persona_spoke: list[tuple[float, float]] = []  # the persona's utterances, as they happened
        self._persona_since: float | None = None

    @property
    def clock(self) -> float:
        return self.vclock.t

    @clock.setter
    def clock(self, value: float) -> None:
        self.vclock.t = value

    # -- the Transport protocol

    def connect(self) -> None:
        redeem = self.options.get("redeem")
        if redeem is not None:  # as the reference transport does, right after connecting (here: before the script)
            self.redemption = redeem()
        self.platform.connect(self)

    def say(self, clip: Clip) -> FakeSpoken:
        index = len(self.said)
        utterance = FakeSpoken(self.clock, clip.duration)
        self.said.append(utterance)
        self.vclock.at(self.clock, lambda: self._heard(index))  # once the call has taken it in
        return utterance

    def hangup(self, timeout: float | None = None) -> None:
        if not self.ended:
            self.platform.hangup(self)

    def wait_ended(self, timeout: float | None = None) -> bool:
        return self.ended

    def close(self) -> None:
        self.closed = True

    # -- what a platform script does

    def advance(self, seconds: float) -> None:
        self.clock += seconds

    def emit(self, message: Event) -> None:
        if isinstance(message, Speaking) and message.speaker is Speaker.PERSONA:
            if message.speaking:
                self._persona_since = self.clock
            elif self._persona_since is not None:
                self.persona_spoke.append((self._persona_since, self.clock))
                self._persona_since = None
        self.listener.event(message, self.clock)

    def persona(self, at: float, seconds: float) -> None:
        """The persona speaks from ``at`` for ``seconds`` (the clock moves past it now)."""
        self.clock = max(self.clock, at)
        self.emit(Speaking(Speaker.PERSONA, True))
        self.advance(seconds)
        self.emit(Speaking(Speaker.PERSONA, False))

    def persona_later(self, at: float, seconds: float) -> None:
        """The persona speaks from ``at`` for ``seconds``, whatever the call does meanwhile."""
        self.vclock.at(at, lambda: self.emit(Speaking(Speaker.PERSONA, True)))
        self.vclock.at(at + seconds, lambda: self.emit(Speaking(Speaker.PERSONA, False)))

    def user(self, at: float, speaking: bool) -> None:
        """The platform says it hears the rep start (or stop) at ``at``."""
        self.clock = max(self.clock, at)
        self.emit(Speaking(Speaker.USER, speaking))

    def hear(self, at: float, frame: bytes) -> None:
        """A persona audio frame arrives at ``at``."""
        self.clock = max(self.clock, at)
        self.listener.audio(frame, at)

    def fail(self, code: str) -> None:
        self.last_error = SessionError(code, "scripted")
        self.emit(Error(code, "scripted"))

    def end(self, reason: str) -> None:
        self.end_reason = reason
        self.ended = True
        self.emit(Ended(CALL_ID, 1.0, reason))
        self.platform.ended(self)

    def _heard(self, index: int) -> None:
        """The clip is on its way: the platform's reaction (the call waits out the clip itself)."""
        self.platform.turn(self, index, self.said[index])


class FakeApi:
    def __init__(self, refuse: str | None = None) -> None:
        self.refuse = refuse
        self.refuse_redeem: str | None = None
        self.refuse_fetch: str | None = None
        self.transcript: Callable[[], tuple[Segment, ...]] | None = None  # what GET /calls/:id returns
        self.redeemed: list[tuple[str, str]] = []

    def mint_token(self, platform_agent_id: str | None = None) -> Any:
        if self.refuse is not None:
            raise ApiError(self.refuse, "refused", 429, "req_mint")
        return SimpleNamespace(token="token-1")

    def redeem(self, token: str, drill_key: str) -> Redemption:
        if self.refuse_redeem is not None:
            raise ApiError(self.refuse_redeem, "refused", 503, "req_redeem")
        self.redeemed.append((token, drill_key))
        return Redemption("ws://redeemed/v1/realtime", "ticket-1", CALL_ID, "Fake")

    def get_call(self, call_id: str) -> CallRecord:
        if self.refuse_fetch is not None:
            raise ApiError(self.refuse_fetch, "no such call", 404, "req_get")
        transcript = self.transcript() if self.transcript is not None else ()
        return CallRecord(call_id, CallStatus.SCORED, "fake-drill", score=80.0, transcript=transcript)


class Harness:
    """One process's shared settings (real Metrics, ScoreBoard and ScoreDrain), a virtual clock,
    and what Locust saw."""

    def __init__(
        self, *, score_timeout: float = 5.0, mint_refused: str | None = None, transcript_check: bool = False
    ) -> None:
        self.metrics = Metrics()
        self.metrics.declare(["fake"])
        self.board = ScoreBoard()
        self.drain = ScoreDrain()
        self.clock = VirtualClock()
        self.sessions: list[FakeTransport] = []
        self.reports: list[dict[str, Any]] = []
        self.announced: list[str] = []
        self.platform: Platform = Platform(self.board)
        self.settings = CallSettings(
            api=FakeApi(mint_refused),  # type: ignore[arg-type]
            ws_url="ws://fake/v1/realtime",
            board=self.board,
            metrics=self.metrics,
            pacer=None,  # type: ignore[arg-type]
            audio=FMT,
            drain=self.drain,
            score_timeout=score_timeout,
            transcript_check=transcript_check,
            announce=self.announced.append,
            transport=self._transport,  # type: ignore[arg-type]
        )

    def _transport(self, **options: Any) -> FakeTransport:
        session = FakeTransport(self.platform, self.clock, **options)
        self.sessions.append(session)
        return session

    def call(self, platform: type[Platform] = Platform, **scenario: Any) -> Call:
        self.platform = platform(self.board)
        return Call(
            self.settings, make_scenario(**scenario), lambda **kw: self.reports.append(kw), random.Random(1), self.clock
        )

    def run(self, platform: type[Platform] = Platform, **scenario: Any) -> Call:
        """One call to its end (score included)."""
        call = self.call(platform, **scenario)
        with gevent.Timeout(10):
            call.run()
        return call

    def entries(self, name: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.reports if name is None or r["name"] == name]

    def calls(self) -> dict[str, Any]:
        return self.metrics.summary()["calls"]

    def errors(self) -> dict[str, Any]:
        return self.metrics.summary()["errors"]


def make_clip() -> Clip:
    return Clip(None, FMT, (bytes(FMT.frame_bytes),) * CLIP_FRAMES, (SPEECH,))


def make_scenario(*, turns: int | tuple = 2, **fields: Any) -> Scenario:
    clip = make_clip()
    return Scenario(
        name="fake", drill="fake-drill",
        turns=turns if isinstance(turns, tuple) else tuple(Turn(clip, f"{i}.wav") for i in range(turns)),
        **{"think_time": (0.0, 0.0), "reply_timeout": 2.0, "max_call_seconds": 30.0, **fields},
    )  # fmt: skip


def observed(metrics: Metrics, timing: Timing) -> list[float]:
    """The values a timing holds, as its histogram reads them back (within 0.1%)."""
    values, counts = metrics.timing(timing).buckets()
    return [float(v) for v, n in zip(values, counts, strict=True) for _ in range(int(n))]


def check_accounting(metrics: Metrics, calls: list[Call]) -> None:
    """The run's accounting holds (support.locust_run's rule), and each of ``calls`` is counted
    once, as its own outcome."""
    summary = metrics.summary()
    run_accounting(summary)
    c = summary["calls"]
    assert c["started"] == len(calls)
    for outcome in Outcome:
        assert c[outcome.value] == sum(call.outcome is outcome for call in calls), outcome
    assert metrics.active_calls() == 0
