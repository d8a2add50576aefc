"""One synthetic rep's call, end to end: mint, connect, speak the scenario's turns, hang up, wait
for the score. Every step is timed into :class:`~athos_load.metrics.Metrics` and reported through
``report`` (the Locust request event, injected by the user), one entry per step, from a fixed
vocabulary of names: never an id.

Every started call is accounted for exactly once, as completed, failed or aborted (cut off by the
end of the run); a completed call is then scored or score_missing.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.event
import gevent.pool

from .api import ApiError, AthosApi, ScoreBoard
from .metrics import Metrics, Outcome, Timing
from .pacer import AudioPacer
from .protocol import AudioFormat, ErrorCode
from .scenario import HangupPolicy, Scenario
from .session import RoleplaySession, SessionError, SessionEvent

logger = logging.getLogger(__name__)

# Locust's request event, as ``report(request_type=…, name=…, response_time=ms|None, exception=…)``.
Report = Callable[..., Any]
COMPLETED_REASONS = frozenset({"hangup", "persona", "max_duration"})


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
    announce: Callable[[str], None] | None = None  # tell a master which worker waits for this callId


class Call:
    """Runs one call of ``scenario``. Create one per call; :meth:`run` does everything."""

    def __init__(self, settings: CallSettings, scenario: Scenario, report: Report, rng: random.Random) -> None:
        self.settings = settings
        self.scenario = scenario
        self.report = report
        self.rng = rng
        self.session: RoleplaySession | None = None
        self.outcome: Outcome | None = None
        self.ended_at: float | None = None
        self.call_id: str | None = None
        # turn-taking state, updated by listeners in the session's reader greenlet
        self._rep_stopped_at: float | None = None  # when the rep's last utterance's speech ends
        self._persona_starts = 0
        self._persona_speaking = False
        self._changed = gevent.event.Event()
        self._reconnecting_at: float | None = None
        self._connecting_at: float | None = None
        self._persona_starts_before = 0
        self._started = time.monotonic()
        self._deadline = self._started + scenario.max_call_seconds
        self._score_settled = False  # end_to_score or score_missing recorded
        self.adopted = False  # handed to the drain at the end of the run

    # -- the flow --------------------------------------------------------------------------------

    def run(self) -> None:
        metrics, name = self.settings.metrics, self.scenario.name
        metrics.call_started(name)
        try:
            if self._connect():
                self._converse()
                self._hang_up()
                self._settle()
        except gevent.GreenletExit:
            if self.outcome is Outcome.COMPLETED and not self._score_settled:
                self.settings.drain.adopt(self)  # the score may still come: wait for it past this user
            else:
                self._abort()
            raise
        finally:
            if self.outcome is None:  # an unexpected exception: still accounted for once
                self._finish(Outcome.FAILED, "internal")
            if self.session is not None:
                self.session.close()

    def _connect(self) -> bool:
        s = self.settings
        started = time.perf_counter()
        try:
            token = s.api.mint_token(self.scenario.drill).token
        except ApiError as exc:
            self.settings.metrics.error(exc.code)
            self._step("POST", "token_mint", time.perf_counter() - started, exc.code)
            self._finish(Outcome.FAILED, exc.code)
            return False
        self._step("POST", "token_mint", time.perf_counter() - started, None, Timing.TOKEN_MINT)
        session = self.session = RoleplaySession.create(
            token=token,
            drill_key=self.scenario.drill,
            url=s.ws_url,
            audio=s.audio,
            pacer=s.pacer,
            connect_timeout=s.connect_timeout,
        )
        for event, listener in (
            ("connecting", self._on_connecting),
            ("personaSpeaking", self._on_persona),
            ("reconnecting", self._on_reconnecting),
            ("reconnected", self._on_reconnected),
            ("error", self._on_error),
            ("ended", self._on_ended),
        ):
            session.on(event, listener)
        try:
            session.connect()
        except SessionError as exc:
            elapsed = time.monotonic() - (self._connecting_at or time.monotonic())
            self._step("WS", "connect_ready", elapsed, exc.code)
            self._finish(Outcome.FAILED, exc.code)
            return False
        ready_at = time.monotonic()
        self._step("WS", "connect_ready", ready_at - (self._connecting_at or ready_at), None, Timing.CONNECT_READY)
        self._deadline = ready_at + self.scenario.max_call_seconds
        return True

    def _converse(self) -> None:
        scenario = self.scenario
        for index, turn in enumerate(scenario.turns):
            if self._over():
                return
            if turn.barge_in is not None:
                # talk over the persona: wait for it to start, then cut in
                self._wait(lambda: self._persona_speaking, scenario.reply_timeout)
                gevent.sleep(turn.barge_in)
            elif index > 0:
                self._wait_reply(scenario.reply_timeout)
                gevent.sleep(scenario.think(self.rng))
            if turn.pause_before:
                gevent.sleep(turn.pause_before)
            if self._over():
                return
            assert self.session is not None
            utterance = self.session.say(turn.clip.frames)
            if turn.clip.speech_end is not None:
                # known from the audio itself, so turn latency does not wait for the platform's VAD
                self._rep_stopped_at = utterance.start + turn.clip.speech_end
                self._persona_starts_before = self._persona_starts
            utterance.wait(timeout=max(0.0, utterance.end - time.monotonic()) + 5.0)

    def _hang_up(self) -> None:
        session = self.session
        assert session is not None
        policy = self.scenario.hangup
        if policy is HangupPolicy.AFTER_LAST_REPLY and not self._over():
            self._wait_reply(self.scenario.reply_timeout)
        elif policy is HangupPolicy.PERSONA_CLOSES:
            session.wait_ended(max(0.0, self._deadline - time.monotonic()))
        session.hangup()

    def _settle(self) -> None:
        """Record the outcome; for a completed call, wait for its score."""
        session = self.session
        assert session is not None
        reason = session.end_reason
        if reason not in COMPLETED_REASONS:
            code = session.last_error.code if session.last_error else reason
            self._finish(Outcome.FAILED, code)
            return
        self._finish(Outcome.COMPLETED, None)
        if self.settings.announce is not None and self.call_id is not None:
            self.settings.announce(self.call_id)
        self.await_score(self.settings.score_timeout)

    def await_score(self, timeout: float) -> None:
        """Wait for this completed call's score; records end_to_score or a missing score."""
        s = self.settings
        if self.call_id is None or self.ended_at is None:
            return
        try:
            score = s.board.wait(self.call_id, timeout)
        except gevent.GreenletExit:
            if self.adopted:  # the drain time is over: the score is missing
                score = None
            else:
                raise
        self._score_settled = True
        if score is None:
            s.metrics.scored(self.scenario.name, False)
            self._step("SCORE", "end_to_score", time.monotonic() - self.ended_at, "score_missing")
            return
        s.metrics.scored(self.scenario.name, True)
        self._step("SCORE", "end_to_score", max(0.0, score.at - self.ended_at), None, Timing.END_TO_SCORE)

    def _abort(self) -> None:
        """The run is ending under this call: hang up cleanly, count it once."""
        if self.outcome is None:
            if self.session is not None and not self.session.wait_ended(0):
                self.session.hangup(timeout=2.0)
            self._finish(Outcome.ABORTED, None)

    # -- listeners -------------------------------------------------------------------------------

    def _on_connecting(self, event: SessionEvent) -> None:
        self._connecting_at = event.at

    def _on_persona(self, event: SessionEvent) -> None:
        speaking = bool(event.payload and event.payload["speaking"])
        self._persona_speaking = speaking
        if speaking:
            self._persona_starts += 1
            stopped = self._rep_stopped_at
            if stopped is not None and event.at >= stopped:
                self._rep_stopped_at = None
                self._step("WS", "persona_response", event.at - stopped, None, Timing.PERSONA_RESPONSE)
        self._changed.set()

    def _on_reconnecting(self, event: SessionEvent) -> None:
        self._reconnecting_at = event.at
        self.settings.metrics.reconnect(self.scenario.name)

    def _on_reconnected(self, event: SessionEvent) -> None:
        if self._reconnecting_at is not None:
            self._step("WS", "reconnect", event.at - self._reconnecting_at, None, Timing.RECONNECT)
            self._reconnecting_at = None

    def _on_error(self, event: SessionEvent) -> None:
        assert event.payload is not None
        code = event.payload["code"]
        self.settings.metrics.error(code)
        if self._reconnecting_at is not None:
            self._step("WS", "reconnect", event.at - self._reconnecting_at, code)
            self._reconnecting_at = None

    def _on_ended(self, event: SessionEvent) -> None:
        assert event.payload is not None
        self.ended_at = event.at
        self.call_id = event.payload["callId"] or None
        self._changed.set()

    # -- helpers ---------------------------------------------------------------------------------

    def _over(self) -> bool:
        assert self.session is not None
        return self.session.wait_ended(0) or time.monotonic() >= self._deadline

    def _wait(self, condition: Callable[[], bool], timeout: float) -> bool:
        deadline = min(time.monotonic() + timeout, self._deadline)
        while not condition():
            if self._over():
                return False
            self._changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (not self._changed.wait(remaining) and not condition()):
                return False
        return True

    def _wait_reply(self, timeout: float) -> None:
        """Wait until the persona has answered the rep's last turn and finished speaking."""
        before = self._persona_starts_before
        replied = self._wait(lambda: self._persona_starts > before and not self._persona_speaking, timeout)
        if not replied and not self._over():
            self.settings.metrics.error(ErrorCode.NO_REPLY)
            self._step("WS", "persona_response", timeout, ErrorCode.NO_REPLY)
            self._rep_stopped_at = None

    def _step(self, kind: str, name: str, seconds: float, error: object | None, timing: Timing | None = None) -> None:
        """One Locust entry for one step; a successful timed step also goes to the metrics."""
        if error is None and timing is not None:
            self.settings.metrics.observe(timing, seconds, self.scenario.name)
        self.report(
            request_type=kind,
            name=name,
            response_time=seconds * 1000.0,
            response_length=0,
            exception=None if error is None else CallFailure(error),
            context={"scenario": self.scenario.name},
        )

    def _finish(self, outcome: Outcome, error: object | None) -> None:
        """Account for the call once; completed and failed calls are one ``call`` entry each."""
        self.outcome = outcome
        self.settings.metrics.call_finished(self.scenario.name, outcome)
        if outcome is not Outcome.ABORTED:
            self._step("CALL", "call", time.monotonic() - self._started, error)


class ScoreDrain:
    """Completed calls whose user was stopped while they waited for a score keep waiting here,
    so a short run still measures end→score; :meth:`wait` bounds how long the run's end waits."""

    def __init__(self) -> None:
        self._group = gevent.pool.Group()

    def adopt(self, call: Call) -> None:
        call.adopted = True
        assert call.ended_at is not None
        remaining = call.settings.score_timeout - (time.monotonic() - call.ended_at)
        self._group.spawn(call.await_score, max(0.0, remaining))

    @property
    def pending(self) -> int:
        return len(self._group)

    def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` for pending scores; the ones still missing then are counted so."""
        self._group.join(timeout)
        self._group.kill(block=True, timeout=5)
