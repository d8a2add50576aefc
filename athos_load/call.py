"""One synthetic rep's call, end to end, on gevent: mint, connect, speak the scenario's turns,
hang up, wait for the score.

:class:`Call` is a thin driver: every decision (turn-taking, what is timed, how the call is
accounted) is :class:`~athos_load.conversation.Conversation`'s, fed what the REST client and the
transport (:mod:`athos_load.transport`) saw, with the time they saw it. The driver does the
blocking work, moves time, and writes what the conversation records through one method,
:meth:`Call._write`, to both :class:`~athos_load.metrics.Metrics` and ``report`` (the Locust request
event, injected by the user): one Locust entry per step, named from a fixed vocabulary
(:class:`~athos_load.conversation.Step`), never an id.

Every started call is accounted for exactly once, as completed, failed or aborted (cut off by the
end of the run); a completed call is then scored, score_missing, score_pending or score_failed.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import gevent
import gevent.event
import gevent.pool

from .api import ApiError, AthosApi, ScoreBoard
from .conversation import Conversation, Emitted, HangUp, Heard, Speak, Step, TranscriptChecked
from .hearing import JITTER_BUFFER
from .metrics import TIMINGS, Metrics, Outcome, ScoreOutcome
from .pacer import AudioPacer
from .scenario import Scenario
from .session import RoleplaySession, SessionError
from .transport import Transport, TransportError, TransportFactory
from .wire import AudioFormat, Event, Redemption

logger = logging.getLogger(__name__)

# Locust's request event, as ``report(request_type=…, name=…, response_time=ms|None, exception=…)``.
Report = Callable[..., Any]
ABORT_HANGUP_SECONDS = 3.0  # at the run's end, how long a call may take to hang up (or resume to do so)

# A timed step records its timing (metrics.TIMINGS declares each: help, buckets, Locust request type).
TIMED_STEPS = {Step(t.value): t for t in TIMINGS if t.value in Step.__members__.values()}
# The steps that are one Locust entry each (named by their value), and their request type.
REQUEST_TYPES = {
    **{step: TIMINGS[t].request_type for step, t in TIMED_STEPS.items() if TIMINGS[t].request_type},
    Step.CALL: "CALL",
}
SETUP_STEPS = frozenset({Step.TOKEN_MINT, Step.CONNECT_READY})


class CallFailure(Exception):
    """What a failed step reports: its text is the error code alone, so failures group by code."""

    def __init__(self, code: object) -> None:
        super().__init__(str(code))
        self.code = str(code)


@dataclass
class CallSettings:
    """Process-wide settings every call shares (from the ``--athos-*`` options)."""

    api: AthosApi
    ws_url: str
    board: ScoreBoard
    metrics: Metrics
    pacer: AudioPacer
    audio: AudioFormat
    drain: ScoreDrain
    score_timeout: float = 120.0
    connect_timeout: float = 15.0
    jitter_buffer: float = JITTER_BUFFER  # the rep's client's playout buffer (--athos-jitter-buffer-ms)
    transcript_check: bool = False  # after the score, hold the transcript against what the rep said
    announce: Callable[[str], None] | None = None  # tell a master which worker waits for this callId
    # the realtime leg (athos_load/transport.py); a user's ``transport`` attribute overrides it
    transport: TransportFactory = RoleplaySession
    # set when the run's stop begins (Locust's test_stopping), cleared when a run starts; shared by
    # every user's copy of these settings
    stopping: gevent.event.Event = field(default_factory=gevent.event.Event)


class Clock(Protocol):
    """Where a driver's time comes from: gevent's real time, or a test's virtual clock."""

    def now(self) -> float: ...

    def sleep_until(self, deadline: float | None, wake: gevent.event.Event) -> None:
        """Return at ``deadline`` (None: no deadline) or as soon as ``wake`` is set, if sooner."""
        ...


class RealTime:
    """The monotonic clock, and gevent's wait."""

    now = staticmethod(time.monotonic)

    @staticmethod
    def sleep_until(deadline: float | None, wake: gevent.event.Event) -> None:
        wake.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))


REAL_TIME = RealTime()


class Call:
    """Runs one call of ``scenario``. Create one per call; :meth:`run` does everything."""

    def __init__(
        self, settings: CallSettings, scenario: Scenario, report: Report, rng: random.Random, clock: Clock = REAL_TIME
    ) -> None:
        self.settings = settings
        self.scenario = scenario
        self.report = report
        self.clock = clock
        self.transport: Transport | None = None
        self.adopted = False  # handed to the drain at the end of the run
        self.score: float | None = None  # its overallScore, fetched once it scored
        self._changed = gevent.event.Event()  # set on every event: the conversation may go on
        self.conversation = Conversation(
            scenario,
            lambda: scenario.think(rng),
            clock.now(),
            frame_seconds=settings.audio.frame_seconds,
            jitter_buffer=settings.jitter_buffer,
            stopping=settings.stopping.is_set,
        )
        self._flush()

    @property
    def outcome(self) -> Outcome | None:
        return self.conversation.outcome

    @property
    def call_id(self) -> str | None:
        return self.conversation.call_id

    @property
    def ended_at(self) -> float | None:
        return self.conversation.ended_at

    # -- the flow --------------------------------------------------------------------------------

    def run(self) -> None:
        c = self.conversation
        try:
            if self._connect():
                self._converse()
                self._settle()
        except gevent.GreenletExit:
            if c.completed and not c.score_settled:
                self.settings.drain.adopt(self)  # the score may still come: wait for it past this user
            else:
                self._abort()
            raise
        finally:
            if c.outcome is None:  # an unexpected exception: still accounted for once
                c.failed_internally(self.clock.now(), self._unknown())
                self._flush()
            if self.transport is not None:
                self.transport.close()

    def _connect(self) -> bool:
        s, c = self.settings, self.conversation
        started = time.perf_counter()
        try:
            token = s.api.mint_token().token
        except ApiError as exc:
            _log_api_error("token_mint", exc)
            c.mint_failed(exc.code, self.clock.now())
            self._flush()
            return False
        c.minted(time.perf_counter() - started)
        self._flush()
        transport = self.transport = s.transport(
            listener=self,
            token=token,
            drill_key=self.scenario.drill,
            url=s.ws_url,
            audio=s.audio,
            pacer=s.pacer,
            connect_timeout=s.connect_timeout,
            redeem=lambda: self._redeem(token),
        )
        try:
            transport.connect()
        except TransportError as exc:
            c.connect_failed(str(exc.code), self.clock.now())
            self._flush()
            return False
        c.connected(self.clock.now())
        self._flush()
        return True

    def _redeem(self, token: str) -> Redemption:
        """Inside connect(), as the SDK does: the token for the call's connection ticket and URL
        (``--athos-ws-url``, when given, overrides the URL). Every redeemed call spends quota."""
        s = self.settings
        try:
            redemption = s.api.redeem(token, self.scenario.drill)
        except ApiError as exc:
            _log_api_error("redeem", exc)
            raise SessionError(
                exc.code, exc.message + (f" (request {exc.request_id})" if exc.request_id else "")
            ) from None
        s.metrics.calls_redeemed.inc(scenario=self.scenario.name)
        if s.ws_url:
            redemption = dataclasses.replace(redemption, connection_url=s.ws_url)
        return redemption

    def _converse(self) -> None:
        """Move time for the conversation: do what it asks, sleep until its deadline or an event."""
        c, transport = self.conversation, self.transport
        assert transport is not None
        while True:
            self._changed.clear()  # before looking: any event from here on wakes the wait below
            if transport.wait_ended(0):
                c.transport_over(self.clock.now())
            action = c.poll(self.clock.now())
            self._flush()
            if isinstance(action, Speak):
                spoken = transport.say(self.scenario.turns[action.turn].clip)
                c.spoke(spoken.start, spoken.end)
            elif isinstance(action, HangUp):
                break
            else:
                self.clock.sleep_until(c.next_deadline(), self._changed)
        transport.hangup()

    def _settle(self) -> None:
        """Account for the call; for a completed call, wait for its score."""
        s, c, transport = self.settings, self.conversation, self.transport
        assert transport is not None
        reason = transport.end_reason
        error = transport.last_error
        completed = c.hung_up(reason, None if error is None else str(error.code), self._unknown(), self.clock.now())
        self._flush()
        if not completed:
            return
        if s.announce is not None and c.call_id is not None:
            s.announce(c.call_id)
        self.await_score(s.score_timeout)

    def await_score(self, timeout: float) -> None:
        """Wait for this completed call's score: end_to_score, a missing or a failed score; once
        scored, fetch the score itself (and the transcript to check) with GET /calls/:callId."""
        c = self.conversation
        if c.call_id is None or c.ended_at is None:
            return
        try:
            score = self.settings.board.wait(c.call_id, timeout)
        except gevent.GreenletExit:
            if not self.adopted:
                raise
            c.score_pending()
            self._flush()
            return
        if score is not None and score.failed:  # call.scored with success false: it will never be scored
            c.score_failed(score.failed)
        else:
            c.scored(None if score is None else score.at)
        self._flush()
        if score is not None and not score.failed and not self._ending:
            self._fetch_score()

    def _fetch_score(self) -> None:
        """``GET /calls/:callId``: the score the webhook does not carry, and the transcript, held
        against what the rep said when the transcript check is on (athos_load/transcript.py)."""
        c = self.conversation
        assert c.call_id is not None
        started = time.perf_counter()
        try:
            record = self.settings.api.get_call(c.call_id)
        except ApiError as exc:
            _log_api_error("transcript_fetch", exc)
            c.transcript_failed(exc.code)
        else:
            self.score = record.score
            check = self.settings.transcript_check and bool(c.spoken)
            c.transcript(record.transcript if check else None, time.perf_counter() - started)
        self._flush()

    @property
    def _ending(self) -> bool:
        return self.settings.stopping.is_set() or self.conversation.aborting

    def _abort(self) -> None:
        """The run is ending under this call: hang up cleanly (a call in a reconnect resumes just to
        hang up), count it once, and add no error: what fails now is the stop, not the platform."""
        c, transport = self.conversation, self.transport
        if c.outcome is None:
            c.abort_began()
            if transport is not None and not transport.wait_ended(0):
                transport.hangup(timeout=ABORT_HANGUP_SECONDS)
            c.aborted(self.clock.now(), self._unknown())
            self._flush()

    def _unknown(self) -> int:
        return 0 if self.transport is None else self.transport.unknown_messages

    # -- CallListener: what the transport saw ------------------------------------------------------

    def event(self, message: Event, at: float) -> None:
        self.conversation.event(message, at)
        self._flush()
        self._changed.set()

    def audio(self, frame: bytes, at: float) -> None:
        c = self.conversation
        c.audio(frame, at)
        if c.has_records:  # most frames record nothing
            self._flush()

    # -- recording -------------------------------------------------------------------------------

    def _flush(self) -> None:
        for emitted in self.conversation.records_to_emit():
            self._write(emitted)

    def _write(self, emitted: Emitted) -> None:
        """The one path from a call to Locust and the metrics. A success with a timing observes it;
        a failure is one Locust entry with its code and no response time. What else each counts:

        * ``STARTED``: a call started (and is active). ``DROP``: a reconnect (transient drop).
        * an error the conversation ``counted``: ``athos_errors``; a failed ``TOKEN_MINT`` or
          ``CONNECT_READY``: a setup failure; an ignored ``BARGE_IN``: ``barge_ins_ignored``.
        * ``CALL``: the call's accounting, its session seconds and ignored messages; an aborted call
          has no Locust entry. ``END_TO_SCORE``: the score's fate; a pending one has no Locust entry.
        """
        m, scenario = self.settings.metrics, self.scenario.name
        if isinstance(emitted, Heard):
            m.persona_utterance_done(scenario, emitted.stream)
            return
        if isinstance(emitted, TranscriptChecked):
            m.transcript_checked(scenario, emitted.result)
            return
        step, seconds, error, outcome = emitted.step, emitted.seconds, emitted.error, emitted.outcome
        if error is not None:
            if emitted.counted:
                m.error(error)
            if step in SETUP_STEPS:
                m.setup_failed.inc(scenario=scenario)
        elif step in TIMED_STEPS and seconds is not None:
            m.timings[TIMED_STEPS[step]].observe(seconds, scenario=scenario)
        if step is Step.STARTED:
            m.call_started(scenario)
        elif step is Step.DROP:
            m.reconnect(scenario)
        elif step is Step.CALL:
            assert isinstance(outcome, Outcome)
            m.call_finished(scenario, outcome, emitted.connected)
            if emitted.unknown:
                m.unknown_messages.inc(emitted.unknown, scenario=scenario)
        elif step is Step.END_TO_SCORE:
            assert isinstance(outcome, ScoreOutcome)
            m.score_settled(scenario, outcome, reason=error if outcome is ScoreOutcome.FAILED else None)
        elif step is Step.BARGE_IN and error is not None:
            m.barge_ins_ignored.inc(scenario=scenario)
        if step in REQUEST_TYPES and outcome not in (Outcome.ABORTED, ScoreOutcome.PENDING):
            self.report(
                request_type=REQUEST_TYPES[step],
                name=step.value,
                # A failed step has no duration worth a percentile (a no_reply would show as its
                # timeout): Locust counts it without one, as the tool's own table leaves it out.
                response_time=None if error is not None or seconds is None else seconds * 1000.0,
                response_length=0,
                exception=None if error is None else CallFailure(error),
                context={"scenario": scenario},
            )


_LOGGED: dict[tuple[str, str], float] = {}  # (step, code) -> when it was last logged
LOG_EVERY = 10.0  # seconds between two log lines of the same failure: a failing platform fails every call


def _log_api_error(step: str, exc: ApiError) -> None:
    """A failed REST step, with the platform's request id (what Athos support asks for)."""
    key, now = (step, str(exc.code)), time.monotonic()
    if now - _LOGGED.get(key, -LOG_EVERY) >= LOG_EVERY:
        _LOGGED[key] = now
        logger.warning("call failed at %s: %s", step, exc)


class ScoreDrain:
    """Completed calls whose user was stopped while they waited for a score keep waiting here,
    so a short run still measures end→score; :meth:`wait` bounds how long the run's end waits."""

    def __init__(self) -> None:
        self._group = gevent.pool.Group()

    def adopt(self, call: Call) -> None:
        call.adopted = True
        assert call.ended_at is not None
        remaining = call.settings.score_timeout - (call.clock.now() - call.ended_at)
        self._group.spawn(call.await_score, max(0.0, remaining))

    @property
    def pending(self) -> int:
        return len(self._group)

    def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` for pending scores; the ones still missing then are counted so."""
        self._group.join(timeout)
        self._group.kill(block=True, timeout=5)
