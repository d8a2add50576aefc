"""One synthetic rep's call, end to end: mint, connect, speak the scenario's turns, hang up, wait
for the score.

Everything a call records goes through one method, :meth:`Call._record`, which feeds both
:class:`~athos_load.metrics.Metrics` and ``report`` (the Locust request event, injected by the
user): one Locust entry per step, named from a fixed vocabulary (:class:`Step`), never an id. Its
table says which record counts what, errors included.

Every started call is accounted for exactly once, as completed, failed or aborted (cut off by the
end of the run); a completed call is then scored, score_missing, score_pending or score_failed.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gevent
import gevent.event
import gevent.pool

from .api import ApiError, AthosApi, ScoreBoard
from .hearing import JITTER_BUFFER, PersonaStream, has_sound
from .metrics import Metrics, Outcome, ScoreOutcome, Timing
from .pacer import AudioPacer
from .scenario import HangupPolicy, Scenario
from .session import RoleplaySession, SessionError, SessionEvent
from .transcript import SpokenTurn, check
from .wire import AudioFormat, Ended, Error, ErrorCode, Redemption, Speaking

logger = logging.getLogger(__name__)

# Locust's request event, as ``report(request_type=…, name=…, response_time=ms|None, exception=…)``.
Report = Callable[..., Any]
# Makes a call's session: ``RoleplaySession.create``'s keywords in, a session out (tests pass a fake).
SessionFactory = Callable[..., RoleplaySession]
COMPLETED_REASONS = frozenset({"hangup", "persona", "max_duration"})
ABORT_HANGUP_SECONDS = 3.0  # at the run's end, how long a call may take to hang up (or resume to do so)


class Step(enum.StrEnum):
    """Everything a call records, from a fixed vocabulary. The steps in ``REQUEST_TYPES`` are one
    Locust entry each, named by their value; the others reach the metrics only."""

    STARTED = "started"
    TOKEN_MINT = "token_mint"
    CONNECT_READY = "connect_ready"
    PERSONA_RESPONSE = "persona_response"
    DROP = "drop"  # a transient drop (reconnecting); RECONNECT times its recovery
    RECONNECT = "reconnect"
    ERROR = "error"  # an error event from the session
    CALL = "call"  # the call is accounted for: completed, failed or aborted
    END_TO_SCORE = "end_to_score"
    TIME_TO_FIRST_WORD = "time_to_first_word"
    ENDPOINTING = "endpointing"
    RESPONSE = "response"
    SPEECH_ONSET = "speech_onset"
    PERSONA_AUDIO_LEAD = "persona_audio_lead"
    BARGE_IN = "barge_in"  # failed: the persona talked on over the rep (BARGE_IN_TIMEOUT)
    TRANSCRIPT_FETCH = "transcript_fetch"


REQUEST_TYPES = {
    Step.TOKEN_MINT: "POST",
    Step.CONNECT_READY: "WS",
    Step.PERSONA_RESPONSE: "WS",
    Step.RECONNECT: "WS",
    Step.CALL: "CALL",
    Step.END_TO_SCORE: "SCORE",
    Step.TIME_TO_FIRST_WORD: "AUDIO",
    Step.ENDPOINTING: "WS",
    Step.RESPONSE: "WS",
    Step.SPEECH_ONSET: "WS",
    Step.PERSONA_AUDIO_LEAD: "AUDIO",
    Step.BARGE_IN: "WS",
    Step.TRANSCRIPT_FETCH: "GET",
}
TIMINGS = {
    Step.TOKEN_MINT: Timing.TOKEN_MINT,
    Step.CONNECT_READY: Timing.CONNECT_READY,
    Step.PERSONA_RESPONSE: Timing.PERSONA_RESPONSE,
    Step.RECONNECT: Timing.RECONNECT,
    Step.END_TO_SCORE: Timing.END_TO_SCORE,
    Step.TIME_TO_FIRST_WORD: Timing.TIME_TO_FIRST_WORD,
    Step.ENDPOINTING: Timing.ENDPOINTING,
    Step.RESPONSE: Timing.RESPONSE,
    Step.SPEECH_ONSET: Timing.SPEECH_ONSET,
    Step.PERSONA_AUDIO_LEAD: Timing.PERSONA_AUDIO_LEAD,
    Step.BARGE_IN: Timing.BARGE_IN,
    Step.TRANSCRIPT_FETCH: Timing.TRANSCRIPT_FETCH,
}
# Steps whose failure is counted by a counter of its own, never as an error: a score the platform
# lost (scores_missing), a barge-in the persona talked through (barge_ins_ignored).
COUNTED_APART = frozenset({Step.END_TO_SCORE, Step.BARGE_IN})
BARGE_IN_TIMEOUT = 2.0  # seconds the persona may talk on over the rep before the barge-in counts as ignored
SETUP_STEPS = frozenset({Step.TOKEN_MINT, Step.CONNECT_READY})
# Steps that fail because of an error already counted (the error event that refused the join or
# the resume, or that ended the call; the failed step that failed the call).
CONSEQUENCES = frozenset({Step.CONNECT_READY, Step.RECONNECT, Step.CALL})
# What a call still records once the run's stop has begun: its accounting, and the score of a call
# that ended (the drain waits for those). Anything else it would time or fail then is the stop's
# doing: Locust stops every user at once, and the loop busy with that reads the platform late.
KEPT_WHILE_STOPPING = frozenset({Step.STARTED, Step.CALL, Step.END_TO_SCORE})


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
    session_factory: SessionFactory = RoleplaySession.create
    # set when the run's stop begins (Locust's test_stopping), cleared when a run starts; shared by
    # every user's copy of these settings
    stopping: gevent.event.Event = field(default_factory=gevent.event.Event)


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
        self.score: float | None = None  # its overallScore, fetched once it scored
        # turn-taking state, updated by listeners in the session's reader greenlet
        self._rep_stopped_at: float | None = None  # when the rep's last utterance's speech ends (until timed)
        self._reply_after: float | None = None  # a reply to the rep's last spoken turn starts at or after this
        self._persona_started_at: float | None = None  # when the persona's latest utterance started
        self._persona_speaking = False
        # what the rep hears (each None until there is something to time, then None again once timed)
        self._first_word_since: float | None = None  # connecting, until the persona's first sound
        self._lead_since: float | None = None  # personaSpeaking true, until its first sound
        self._onset_at: float | None = None  # the rep's speech start in the turn spoken, until userSpeaking true
        self._speech_end: float | None = None  # its speech end, until userSpeaking false (endpointing)
        self._endpointed_at: float | None = None  # that userSpeaking false, until personaSpeaking true
        self._barge_at: float | None = None  # the rep started talking over the persona, until it stops
        self._stream: PersonaStream | None = None  # the persona's utterance as the rep's client plays it
        self._spoken: list[SpokenTurn] = []  # what the rep said, in seconds since ready (transcript check)
        self._changed = gevent.event.Event()
        self._reconnecting_at: float | None = None
        self._connecting_at: float | None = None
        self._started = time.monotonic()
        self._deadline = self._started + scenario.max_call_seconds
        self._ready_at: float | None = None
        self._last_error: str | None = None  # the code of the last error counted for this call
        self._score_settled = False  # end_to_score, score_missing or score_pending recorded
        self._aborting = False  # the run is ending under this call: what follows is not the platform's
        self.adopted = False  # handed to the drain at the end of the run

    # -- the flow --------------------------------------------------------------------------------

    def run(self) -> None:
        self._record(Step.STARTED)
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
            token = s.api.mint_token().token
        except ApiError as exc:
            _log_api_error("token_mint", exc)
            self._record(Step.TOKEN_MINT, error=exc.code)
            self._finish(Outcome.FAILED, exc.code)
            return False
        self._record(Step.TOKEN_MINT, time.perf_counter() - started)
        session = self.session = s.session_factory(
            token=token,
            drill_key=self.scenario.drill,
            url=s.ws_url,
            audio=s.audio,
            pacer=s.pacer,
            connect_timeout=s.connect_timeout,
            redeem=lambda: self._redeem(token),
        )
        for event, listener in (
            ("connecting", self._on_connecting),
            ("ready", self._on_ready),
            ("personaSpeaking", self._on_persona),
            ("userSpeaking", self._on_user),
            ("reconnecting", self._on_reconnecting),
            ("reconnected", self._on_reconnected),
            ("error", self._on_error),
            ("ended", self._on_ended),
        ):
            session.on(event, listener)
        session.on_audio = self._on_audio
        try:
            session.connect()
        except SessionError as exc:
            self._record(Step.CONNECT_READY, error=exc.code)
            self._finish(Outcome.FAILED, exc.code)
            return False
        if self._ready_at is None:  # a session that did not say when: now is the latest it can have been
            self._ready_at = time.monotonic()
        ready_at = self._ready_at
        self._record(Step.CONNECT_READY, ready_at - (self._connecting_at or ready_at))
        self._deadline = ready_at + self.scenario.max_call_seconds
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
        """Speak the turns, taking turns with the persona: a turn never starts while the persona
        speaks, unless it is a barge-in (every wait is bounded by the scenario's reply_timeout)."""
        scenario = self.scenario
        timeout = scenario.reply_timeout
        for index, turn in enumerate(scenario.turns):
            if self._over():
                return
            if turn.barge_in is not None:
                # talk over the persona: cut into its reply to the last turn (or, on the first
                # turn, its greeting) this long after it started
                started = self._wait_persona(None, timeout) if index == 0 else self._wait_reply_start(timeout)
                if started and self._persona_started_at is not None:
                    gevent.sleep(max(0.0, self._persona_started_at + turn.barge_in - time.monotonic()))
            else:
                if index > 0:
                    self._wait_reply(timeout)
                    gevent.sleep(scenario.think(self.rng))
                elif scenario.persona_greets:
                    self._wait_greeting(timeout)
                if turn.pause_before:
                    gevent.sleep(turn.pause_before)
                # the persona may have started (again) meanwhile: let it finish before speaking
                self._wait(lambda: not self._persona_speaking, timeout)
            if self._over():
                return
            assert self.session is not None
            barging = turn.barge_in is not None and self._persona_speaking
            utterance = self.session.say(turn.clip.wire)
            self._first_word_since = None  # the rep spoke first: what follows is no first word
            self._endpointed_at = None
            clip = turn.clip
            if clip.speech_start is not None and clip.speech_end is not None:
                # known from the audio itself, so turn latency does not wait for the platform's VAD;
                # the reply to this turn is what the persona starts saying after this point
                self._rep_stopped_at = self._reply_after = utterance.start + clip.speech_end
                self._onset_at, self._speech_end = utterance.start + clip.speech_start, self._rep_stopped_at
                if barging:
                    self._barge_at = self._onset_at
                if self._ready_at is not None:
                    since_ready = utterance.start - self._ready_at
                    self._spoken.append(
                        SpokenTurn(since_ready + clip.speech_start, since_ready + clip.speech_end, turn.text)
                    )
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
            if not self.adopted:
                raise
            # The run's drain time is over before this call's score timeout: the score could still
            # come, so it is pending, not missing (missing says the platform lost it).
            self._score_settled = True
            self._record(Step.END_TO_SCORE, outcome=ScoreOutcome.PENDING)
            return
        self._score_settled = True
        if score is None:
            self._record(Step.END_TO_SCORE, error=ScoreOutcome.MISSING, outcome=ScoreOutcome.MISSING)
            return
        if score.failed:  # call.scored with success false: it will never be scored
            self._record(Step.END_TO_SCORE, error=score.failed, outcome=ScoreOutcome.FAILED)
            return
        self._record(Step.END_TO_SCORE, max(0.0, score.at - self.ended_at), outcome=ScoreOutcome.SCORED)
        if not self._ending:
            self._fetch_score()

    def _fetch_score(self) -> None:
        """``GET /calls/:callId``: the score the webhook does not carry, and the transcript, held
        against what the rep said when the transcript check is on (athos_load/transcript.py)."""
        assert self.call_id is not None
        started = time.perf_counter()
        try:
            record = self.settings.api.get_call(self.call_id)
        except ApiError as exc:
            _log_api_error("transcript_fetch", exc)
            self._record(Step.TRANSCRIPT_FETCH, error=exc.code)
            return
        self._record(Step.TRANSCRIPT_FETCH, time.perf_counter() - started)
        self.score = record.score
        if self.settings.transcript_check and self._spoken:
            self.settings.metrics.transcript_checked(self.scenario.name, check(self._spoken, record.transcript))

    def _abort(self) -> None:
        """The run is ending under this call: hang up cleanly (a call in a reconnect resumes just to
        hang up), count it once, and add no error: what fails now is the stop, not the platform."""
        if self.outcome is None:
            self._aborting = True
            if self.session is not None and not self.session.wait_ended(0):
                self.session.hangup(timeout=ABORT_HANGUP_SECONDS)
            self._finish(Outcome.ABORTED, None)

    # -- listeners -------------------------------------------------------------------------------

    def _on_connecting(self, event: SessionEvent) -> None:
        if self._connecting_at is None:
            self._first_word_since = event.at
        self._connecting_at = event.at

    def _on_audio(self, frame: bytes, at: float) -> None:
        """A persona audio frame arrived: into the utterance's stream; the first with sound ends the
        waits for the persona's voice."""
        stream = self._stream
        if stream is not None:
            stream.frame(at)
        if (self._first_word_since is None and self._lead_since is None) or not has_sound(frame):
            return  # nothing waits for sound (most frames): one comparison
        if self._first_word_since is not None:
            self._record(Step.TIME_TO_FIRST_WORD, at - self._first_word_since)
            self._first_word_since = None
        if self._lead_since is not None:
            self._record(Step.PERSONA_AUDIO_LEAD, at - self._lead_since)
            self._lead_since = None

    def _on_user(self, event: SessionEvent) -> None:
        """The platform heard the rep start or stop: its speech detection and its endpointing."""
        assert isinstance(event.message, Speaking)
        if event.message.speaking:
            if self._onset_at is not None:
                self._record(Step.SPEECH_ONSET, max(0.0, event.at - self._onset_at))  # earlier: heard at once
                self._onset_at = None
            return
        self._onset_at = None  # a turn's userSpeaking true comes before its false, or not at all
        end = self._speech_end
        if end is not None and event.at >= end:  # an earlier false is a pause inside the rep's speech
            self._speech_end = None
            self._record(Step.ENDPOINTING, event.at - end)
            self._endpointed_at = event.at

    def _on_ready(self, event: SessionEvent) -> None:
        self._ready_at = event.at  # when the session saw it, not when connect() got to return

    def _on_persona(self, event: SessionEvent) -> None:
        assert isinstance(event.message, Speaking)
        speaking = event.message.speaking
        self._persona_speaking = speaking
        self._end_stream()
        if speaking:
            self._persona_started_at = event.at
            self._lead_since = event.at
            self._stream = PersonaStream(self.settings.audio.frame_seconds, self.settings.jitter_buffer)
            stopped = self._rep_stopped_at
            if stopped is not None and event.at >= stopped:
                self._rep_stopped_at = None
                self._record(Step.PERSONA_RESPONSE, event.at - stopped)
            endpointed = self._endpointed_at
            if endpointed is not None and event.at >= endpointed:
                self._endpointed_at = None
                self._record(Step.RESPONSE, event.at - endpointed)
        else:
            self._lead_since = None  # an utterance that ended without a sound: no lead to time
            self._settle_barge_in(event.at)
        self._changed.set()

    def _end_stream(self) -> None:
        """The persona's utterance is over (it stopped, started anew, or the call ended): record
        it, unless the run's end cut it off (the stop stalls every stream: not the platform's doing)."""
        stream, self._stream = self._stream, None
        if stream is not None and not self._ending:
            self.settings.metrics.persona_utterance_done(self.scenario.name, stream)

    def _settle_barge_in(self, stopped_at: float | None) -> None:
        """The persona stopped (at ``stopped_at``) or the call ended (None) with a barge-in pending:
        it yielded in time, or it talked on over the rep for longer than BARGE_IN_TIMEOUT."""
        barged, self._barge_at = self._barge_at, None
        if barged is None or (stopped_at is not None and stopped_at < barged):
            return  # no barge-in, or the persona finished before the rep's words came: none happened
        talked_on = (time.monotonic() if stopped_at is None else stopped_at) - barged
        if talked_on > BARGE_IN_TIMEOUT:
            self._record(Step.BARGE_IN, error="ignored")
        elif stopped_at is not None:
            self._record(Step.BARGE_IN, talked_on)

    def _on_reconnecting(self, event: SessionEvent) -> None:
        self._reconnecting_at = event.at
        self._record(Step.DROP)

    def _on_reconnected(self, event: SessionEvent) -> None:
        if self._reconnecting_at is not None:
            self._record(Step.RECONNECT, event.at - self._reconnecting_at)
            self._reconnecting_at = None

    def _on_error(self, event: SessionEvent) -> None:
        assert isinstance(event.message, Error)
        code = event.message.code
        self._record(Step.ERROR, error=code)
        if self._reconnecting_at is not None:  # the resume was refused: that recovery failed
            self._record(Step.RECONNECT, error=code)
            self._reconnecting_at = None

    def _on_ended(self, event: SessionEvent) -> None:
        assert isinstance(event.message, Ended)
        self.ended_at = event.at
        self.call_id = event.message.call_id or None
        self._changed.set()

    # -- helpers ---------------------------------------------------------------------------------

    def _over(self) -> bool:
        assert self.session is not None
        return self.session.wait_ended(0) or time.monotonic() >= self._deadline

    def _wait(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``condition()`` holds (True), or up to ``timeout``, the call's end or its
        deadline (False unless it holds by then). Listeners set ``_changed`` on every change."""
        deadline = min(time.monotonic() + timeout, self._deadline)
        while True:
            self._changed.clear()  # before looking: any change from here on wakes the wait below
            if condition():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._over():
                return condition()
            self._changed.wait(remaining)

    def _wait_reply(self, timeout: float) -> None:
        """Wait for the persona's reply to the rep's last spoken turn to start, then to finish
        (each up to ``timeout``). The reply is an utterance that starts at or after the rep's speech
        in that turn ended: a greeting, or anything said over the rep, is not it. A reply that never
        starts is counted as ``no_reply``; one that starts but goes on past ``timeout`` is not."""
        if self._wait_reply_start(timeout):
            self._wait(lambda: not self._persona_speaking, timeout)

    def _wait_reply_start(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the reply to the rep's last spoken turn to start; if it does
        not (and the call goes on), count ``no_reply``."""
        if self._wait_persona(self._reply_after, timeout):
            return True
        if not self._over():
            self._record(Step.PERSONA_RESPONSE, error=ErrorCode.NO_REPLY)
            self._rep_stopped_at = None
        return False

    def _wait_greeting(self, timeout: float) -> None:
        """The persona speaks first: wait for its greeting to start, then to finish (each up to
        ``timeout``). A greeting that never comes is not a missing reply: the rep just goes first."""
        if self._wait_persona(None, timeout):
            self._wait(lambda: not self._persona_speaking, timeout)
        elif not self._over():
            logger.debug("%s: no greeting within %gs; the rep speaks first", self.scenario.name, timeout)

    def _wait_persona(self, after: float | None, timeout: float) -> bool:
        """Wait up to ``timeout`` for a persona utterance that started at or after ``after``
        (None: any since the call began); True if there is one, even if it has ended since."""

        def started() -> bool:
            at = self._persona_started_at
            return at is not None and (after is None or at >= after)

        return self._wait(started, timeout)

    # -- recording -------------------------------------------------------------------------------

    def _record(
        self,
        step: Step,
        seconds: float | None = None,
        error: object | None = None,
        *,
        outcome: Outcome | ScoreOutcome | None = None,
    ) -> None:
        """The one path from a call to Locust and the metrics.

        A success with a timing observes it; a failure (``error``: its code) is one Locust entry
        with that code and no response time. What else each record counts:

        * ``STARTED``: a call started (and is active). ``DROP``: a reconnect (transient drop).
        * ``athos_errors`` counts each error once, where it happens: an ``ERROR`` (event), a failed
          ``TOKEN_MINT``, a ``no_reply``. A step in ``CONSEQUENCES`` that fails with the code last
          counted (a join refused by that event, a call failed by that mint) is not counted again;
          with another code it is. A missing score and an ignored barge-in (``COUNTED_APART``) are
          counted as such, never as errors.
        * a failed ``TOKEN_MINT`` or ``CONNECT_READY``: a setup failure.
        * ``CALL`` (``outcome``): the call's accounting, its session seconds and ignored messages;
          an aborted call has no Locust entry.
        * ``END_TO_SCORE`` (``outcome``): the score's fate; a pending one has no Locust entry.

        Once the run's stop has begun or aborts this call, only ``KEPT_WHILE_STOPPING`` is recorded.
        """
        if self._ending and step not in KEPT_WHILE_STOPPING:
            return  # what fails or is timed now is the stop's doing, not the platform's
        m, scenario = self.settings.metrics, self.scenario.name
        if error is not None:
            code = str(error)
            if step not in COUNTED_APART and not (step in CONSEQUENCES and code == self._last_error):
                m.error(code)
                self._last_error = code
            if step in SETUP_STEPS:
                m.setup_failed.inc(scenario=scenario)
        elif step in TIMINGS and seconds is not None:
            m.timings[TIMINGS[step]].observe(seconds, scenario=scenario)
        if step is Step.STARTED:
            m.call_started(scenario)
        elif step is Step.DROP:
            m.reconnect(scenario)
        elif step is Step.CALL:
            assert isinstance(outcome, Outcome)
            end = self.ended_at or time.monotonic()
            connected = 0.0 if self._ready_at is None else max(0.0, end - self._ready_at)
            m.call_finished(scenario, outcome, connected)
            unknown = self.session.unknown_messages if self.session is not None else 0
            if unknown:
                m.unknown_messages.inc(unknown, scenario=scenario)
        elif step is Step.END_TO_SCORE:
            assert isinstance(outcome, ScoreOutcome)
            m.score_settled(scenario, outcome, reason=str(error) if outcome is ScoreOutcome.FAILED else None)
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

    @property
    def _ending(self) -> bool:
        """The run is ending under this call (its stop has begun, or it aborts this call)."""
        return self._aborting or self.settings.stopping.is_set()

    def _finish(self, outcome: Outcome, error: object | None) -> None:
        """Account for the call once."""
        self._settle_barge_in(None)
        self._end_stream()
        self.outcome = outcome
        self._record(Step.CALL, time.monotonic() - self._started, error, outcome=outcome)


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
        remaining = call.settings.score_timeout - (time.monotonic() - call.ended_at)
        self._group.spawn(call.await_score, max(0.0, remaining))

    @property
    def pending(self) -> int:
        return len(self._group)

    def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` for pending scores; the ones still missing then are counted so."""
        self._group.join(timeout)
        self._group.kill(block=True, timeout=5)
