"""One call's decisions, sans I/O: what the rep does next, and what the call records.

:class:`Conversation` is the call the way ``websockets``' ``Protocol`` is a connection: it never
touches a socket, a clock or an event loop. Its driver (:class:`athos_load.call.Call` on gevent, a
virtual clock in ``tests/unit``) feeds it what happened and when:

* the results of the REST steps (:meth:`minted`, :meth:`connected`, :meth:`hung_up`, :meth:`scored`, …);
* the transport's SDK events and persona audio frames, each with the time it was seen
  (:meth:`event`, :meth:`audio`);
* the time now, when it asks what to do (:meth:`poll`): :class:`Speak` a turn, :class:`HangUp`, or
  nothing until :meth:`next_deadline` or the next input.

What the call records comes out of :meth:`records_to_emit` as values (:class:`Record`, :class:`Heard`,
:class:`TranscriptChecked`); the driver writes them to the metrics and to Locust.

The turn-taking is a generator (:meth:`Conversation._script`) that yields what it waits for; each
wait is a condition with an absolute deadline, never a sleep, so the driver only moves time.
Every started call is accounted for exactly once (:meth:`_finish`): completed, failed or aborted.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .hearing import JITTER_BUFFER, PersonaStream, has_sound
from .metrics import Outcome, ScoreOutcome
from .scenario import HangupPolicy, Scenario
from .transcript import SpokenTurn, TranscriptCheck, check
from .wire import (
    Connecting,
    Ended,
    Error,
    ErrorCode,
    Event,
    Ready,
    Reconnected,
    Reconnecting,
    Segment,
    Speaker,
    Speaking,
)

COMPLETED_REASONS = frozenset({"hangup", "persona", "max_duration"})
BARGE_IN_TIMEOUT = 2.0  # seconds the persona may talk on over the rep before the barge-in counts as ignored


class Step(enum.StrEnum):
    """Everything a call records, from a fixed vocabulary (Locust entries are named by the value)."""

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


# Steps whose failure is counted by a counter of its own, never as an error: a score the platform
# lost (scores_missing), a barge-in the persona talked through (barge_ins_ignored).
COUNTED_APART = frozenset({Step.END_TO_SCORE, Step.BARGE_IN})
# Steps that fail because of an error already counted (the error event that refused the join or
# the resume, or that ended the call; the failed step that failed the call).
CONSEQUENCES = frozenset({Step.CONNECT_READY, Step.RECONNECT, Step.CALL})
# What a call still records once the run's stop has begun: its accounting, and the score of a call
# that ended (the drain waits for those). Anything else it would time or fail then is the stop's
# doing: Locust stops every user at once, and the loop busy with that reads the platform late.
KEPT_WHILE_STOPPING = frozenset({Step.STARTED, Step.CALL, Step.END_TO_SCORE})


# -- what comes out --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    """One step recorded: a timing (``seconds``) or a failure (``error``, its code)."""

    step: Step
    seconds: float | None = None
    error: str | None = None
    outcome: Outcome | ScoreOutcome | None = None
    counted: bool = False  # athos_errors counts this error: each error once, where it happens
    connected: float = 0.0  # CALL: seconds from ready to the end
    unknown: int = 0  # CALL: messages of unknown types the transport ignored
    at: float | None = None  # when the step ended, on the call's clock (an event's or a frame's arrival)


@dataclass(frozen=True, slots=True)
class Heard:
    """A persona utterance is over: its stream, as the rep's client played it."""

    stream: PersonaStream


@dataclass(frozen=True, slots=True)
class TranscriptChecked:
    result: TranscriptCheck


Emitted = Record | Heard | TranscriptChecked


@dataclass(frozen=True, slots=True)
class Speak:
    """Say turn ``turn`` of the scenario now; the driver answers with :meth:`Conversation.spoke`."""

    turn: int


@dataclass(frozen=True, slots=True)
class HangUp:
    """The conversation is over: hang up; the driver answers with :meth:`Conversation.hung_up`."""


Action = Speak | HangUp


@dataclass(slots=True)
class _Wait:
    """What the script waits for: ``condition`` (None: only the time) until ``deadline``."""

    condition: Callable[[], bool] | None
    deadline: float


# -- the call --------------------------------------------------------------------------------------


class Conversation:
    """One call of ``scenario``, from its start at ``now`` to its accounting and its score."""

    def __init__(
        self,
        scenario: Scenario,
        pick: Callable[[], float],
        now: float,
        *,
        frame_seconds: float,
        jitter_buffer: float = JITTER_BUFFER,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.scenario = scenario
        self.think = pick  # draws a think time (the scenario's, from the user's random generator)
        self.frame_seconds = frame_seconds
        self.jitter_buffer = jitter_buffer
        self.stopping = stopping  # the run's stop has begun (Locust's test_stopping)
        self.outcome: Outcome | None = None
        self.call_id: str | None = None
        self.ended_at: float | None = None  # when ended was seen
        self.score_settled = False  # end_to_score, score_missing or score_pending recorded
        self.spoken: list[SpokenTurn] = []  # what the rep said, in seconds since ready (transcript check)
        self._records: list[Emitted] = []
        self._now = now
        self._started = now
        self._deadline = now + scenario.max_call_seconds
        self._over_at: float | None = None  # the transport is over (ended, or gone without a word)
        self._aborting = False  # the run is ending under this call: what follows is not the platform's
        self._last_error: str | None = None  # the code of the last error counted for this call
        # the call's moments (each None until there is something to time, then None again once timed)
        self._connecting_at: float | None = None
        self._ready_at: float | None = None
        self._reconnecting_at: float | None = None
        self._rep_stopped_at: float | None = None  # the rep's last speech end, until persona_response
        self._reply_after: float | None = None  # a reply to the rep's last spoken turn starts at or after this
        self._persona_started_at: float | None = None  # when the persona's latest utterance started
        self._persona_speaking = False
        self._first_word_since: float | None = None  # connecting, until the persona's first sound
        self._lead_since: float | None = None  # personaSpeaking true, until its first sound
        self._onset_at: float | None = None  # the rep's speech start in the turn spoken, until userSpeaking true
        self._speech_end: float | None = None  # its speech end, until userSpeaking false (endpointing)
        self._endpointed_at: float | None = None  # that userSpeaking false, until personaSpeaking true
        self._barge_at: float | None = None  # the rep started talking over the persona, until it stops
        self._stream: PersonaStream | None = None  # the persona's utterance as the rep's client plays it
        self._said: tuple[float, float] | None = None  # the last Speak's (start, end), from spoke()
        self._script_run: Iterator[_Wait | Action] | None = None
        self._waiting: _Wait | None = None
        self._record(Step.STARTED)

    # -- output ----------------------------------------------------------------------------------

    def records_to_emit(self) -> list[Emitted]:
        """What the call recorded since the last call, in order; hands over the buffer."""
        if not self._records:
            return []
        out, self._records = self._records, []
        return out

    @property
    def connecting_at(self) -> float | None:
        return self._connecting_at

    @property
    def ready_at(self) -> float | None:
        return self._ready_at

    @property
    def has_records(self) -> bool:
        return bool(self._records)

    @property
    def completed(self) -> bool:
        return self.outcome is Outcome.COMPLETED

    # -- the REST steps and the transport's lifetime ---------------------------------------------

    def minted(self, seconds: float) -> None:
        self._record(Step.TOKEN_MINT, seconds)

    def mint_failed(self, code: str, now: float) -> None:
        self._now = now
        self._record(Step.TOKEN_MINT, error=code)
        self._finish(Outcome.FAILED, code, now)

    def connect_failed(self, code: str, now: float) -> None:
        self._now = now
        self._record(Step.CONNECT_READY, error=code)
        self._finish(Outcome.FAILED, code, now)

    def connected(self, now: float) -> None:
        """connect() returned: the call is in; its conversation starts."""
        if self._ready_at is None:  # a transport that did not say when: now is the latest it can have been
            self._ready_at = now
        ready_at = self._now = self._ready_at
        self._record(Step.CONNECT_READY, ready_at - (self._connecting_at or ready_at))
        self._deadline = ready_at + self.scenario.max_call_seconds
        self._now = now
        self._script_run = self._script()

    def transport_over(self, now: float) -> None:
        """The transport can deliver nothing more (it ended, or failed without an ``ended``)."""
        if self._over_at is None:
            self._over_at = now

    def hung_up(self, reason: str | None, code: str | None, unknown: int, now: float) -> bool:
        """The hang-up is done: the call is completed (True) or failed with ``code``."""
        self._now = now
        if reason not in COMPLETED_REASONS:
            self._finish(Outcome.FAILED, code or reason, now, unknown)
            return False
        self._finish(Outcome.COMPLETED, None, now, unknown)
        return True

    def transcript(self, segments: tuple[Segment, ...] | None, seconds: float) -> None:
        """The call's record was fetched (its score, and its transcript: held against what the rep
        said unless ``segments`` is None, the check being off)."""
        self._record(Step.TRANSCRIPT_FETCH, seconds)
        if segments is not None:
            self._records.append(TranscriptChecked(check(self.spoken, segments)))

    def transcript_failed(self, code: str) -> None:
        self._record(Step.TRANSCRIPT_FETCH, error=code)

    def scored(self, at: float | None) -> None:
        """The score arrived at ``at`` (on the same clock as the events), or never (None: missing)."""
        assert self.ended_at is not None
        self.score_settled = True
        if at is None:
            self._record(Step.END_TO_SCORE, error=ScoreOutcome.MISSING, outcome=ScoreOutcome.MISSING)
        else:
            self._now = at
            self._record(Step.END_TO_SCORE, max(0.0, at - self.ended_at), outcome=ScoreOutcome.SCORED)

    def score_failed(self, reason: str) -> None:
        """call.scored said ``success: false``: the call will never be scored, for ``reason``."""
        self.score_settled = True
        self._record(Step.END_TO_SCORE, error=reason, outcome=ScoreOutcome.FAILED)

    def score_pending(self) -> None:
        """The run's drain is over before this call's score timeout: the score could still come, so
        it is pending, not missing (missing says the platform lost it)."""
        self.score_settled = True
        self._record(Step.END_TO_SCORE, outcome=ScoreOutcome.PENDING)

    def abort_began(self) -> None:
        """The run is ending under this call: nothing it sees from now on is the platform's doing."""
        self._aborting = True

    def aborted(self, now: float, unknown: int = 0) -> None:
        """Counted once as aborted, with no error: what fails now is the stop, not the platform."""
        if self.outcome is None:
            self._aborting = True
            self._finish(Outcome.ABORTED, None, now, unknown)

    def failed_internally(self, now: float, unknown: int = 0) -> None:
        """The driver raised: the call is still accounted for once."""
        if self.outcome is None:
            self._finish(Outcome.FAILED, "internal", now, unknown)

    # -- what the transport saw --------------------------------------------------------------------

    def event(self, message: Event, at: float) -> None:
        """An SDK event, seen at ``at``."""
        self._now = at
        if isinstance(message, Speaking):
            if message.speaker is Speaker.PERSONA:
                self._on_persona(message.speaking, at)
            else:
                self._on_user(message.speaking, at)
        elif isinstance(message, Connecting):
            if self._connecting_at is None:
                self._first_word_since = at
            self._connecting_at = at
        elif isinstance(message, Ready):
            self._ready_at = at  # when the transport saw it, not when connect() got to return
        elif isinstance(message, Reconnecting):
            self._reconnecting_at = at
            self._record(Step.DROP)
        elif isinstance(message, Reconnected):
            if self._reconnecting_at is not None:
                self._record(Step.RECONNECT, at - self._reconnecting_at)
                self._reconnecting_at = None
        elif isinstance(message, Error):
            code = str(message.code)
            self._record(Step.ERROR, error=code)
            if self._reconnecting_at is not None:  # the resume was refused: that recovery failed
                self._record(Step.RECONNECT, error=code)
                self._reconnecting_at = None
        elif isinstance(message, Ended):
            self.ended_at = at
            self.call_id = message.call_id or None
            self.transport_over(at)

    def audio(self, frame: bytes, at: float) -> None:
        """A persona audio frame arrived at ``at``: into the utterance's stream; the first with
        sound ends the waits for the persona's voice."""
        self._now = at
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

    def _on_user(self, speaking: bool, at: float) -> None:
        """The platform heard the rep start or stop: its speech detection and its endpointing."""
        if speaking:
            if self._onset_at is not None:
                self._record(Step.SPEECH_ONSET, max(0.0, at - self._onset_at))  # earlier: heard at once
                self._onset_at = None
            return
        self._onset_at = None  # a turn's userSpeaking true comes before its false, or not at all
        end = self._speech_end
        if end is not None and at >= end:  # an earlier false is a pause inside the rep's speech
            self._speech_end = None
            self._record(Step.ENDPOINTING, at - end)
            self._endpointed_at = at

    def _on_persona(self, speaking: bool, at: float) -> None:
        self._persona_speaking = speaking
        self._end_stream()
        if speaking:
            self._persona_started_at = at
            self._lead_since = at
            self._stream = PersonaStream(self.frame_seconds, self.jitter_buffer)
            stopped = self._rep_stopped_at
            if stopped is not None and at >= stopped:
                self._rep_stopped_at = None
                self._record(Step.PERSONA_RESPONSE, at - stopped)
            endpointed = self._endpointed_at
            if endpointed is not None and at >= endpointed:
                self._endpointed_at = None
                self._record(Step.RESPONSE, at - endpointed)
        else:
            self._lead_since = None  # an utterance that ended without a sound: no lead to time
            self._settle_barge_in(at, at)

    # -- what to do now ---------------------------------------------------------------------------

    def poll(self, now: float) -> Action | None:
        """Run the conversation up to ``now``: the next thing to do, or None to wait until
        :meth:`next_deadline` or the next input. :class:`HangUp` ends the conversation."""
        self._now = now
        script = self._script_run
        if script is None:
            return HangUp()
        while True:
            wait = self._waiting
            if wait is not None:
                held = wait.condition is not None and wait.condition()
                if not held and now < wait.deadline and not self._over():
                    return None
                self._waiting = None
            try:
                step = next(script)
            except StopIteration:
                self._script_run = None
                return HangUp()
            if isinstance(step, _Wait):
                self._waiting = step
                continue
            return step

    def next_deadline(self) -> float | None:
        """When :meth:`poll` must be called again at the latest (None: only on the next input)."""
        wait = self._waiting
        return None if wait is None else wait.deadline

    def spoke(self, start: float, end: float) -> None:
        """The turn asked for by :class:`Speak` is queued: its audio leaves from ``start`` to ``end``."""
        self._said = (start, end)

    # -- the turn-taking script -------------------------------------------------------------------

    def _script(self) -> Iterator[_Wait | Action]:
        """Speak the turns, taking turns with the persona: a turn never starts while the persona
        speaks, unless it is a barge-in (every wait is bounded by the scenario's reply_timeout)."""
        scenario = self.scenario
        timeout = scenario.reply_timeout
        for index, turn in enumerate(scenario.turns):
            if self._over():
                break
            if turn.barge_in is not None:
                # talk over the persona: cut into its reply to the last turn (or, on the first
                # turn, its greeting) this long after it started
                if index == 0:
                    started = yield from self._wait_persona(None, timeout)
                else:
                    started = yield from self._wait_reply_start(timeout)
                if started and self._persona_started_at is not None:
                    yield from self._until(None, self._persona_started_at + turn.barge_in)
            else:
                if index > 0:
                    yield from self._wait_reply(timeout)
                    yield from self._until(None, self._now + self.think())
                elif scenario.persona_greets:
                    yield from self._wait_greeting(timeout)
                if turn.pause_before:
                    yield from self._until(None, self._now + turn.pause_before)
                # the persona may have started (again) meanwhile: let it finish before speaking
                yield from self._wait(lambda: not self._persona_speaking, timeout)
            if self._over():
                break
            barging = turn.barge_in is not None and self._persona_speaking
            self._said = None
            yield Speak(index)
            assert self._said is not None, "the driver answers Speak with spoke()"
            start, end = self._said
            self._first_word_since = None  # the rep spoke first: what follows is no first word
            self._endpointed_at = None
            clip = turn.clip
            if clip.speech_start is not None and clip.speech_end is not None:
                # known from the audio itself, so turn latency does not wait for the platform's VAD;
                # the reply to this turn is what the persona starts saying after this point
                self._rep_stopped_at = self._reply_after = start + clip.speech_end
                self._onset_at, self._speech_end = start + clip.speech_start, self._rep_stopped_at
                if barging:
                    self._barge_at = self._onset_at
                if self._ready_at is not None:
                    since_ready = start - self._ready_at
                    self.spoken.append(
                        SpokenTurn(since_ready + clip.speech_start, since_ready + clip.speech_end, turn.text)
                    )
            yield from self._until(None, end)  # the clip has left
        policy = scenario.hangup
        if policy is HangupPolicy.AFTER_LAST_REPLY and not self._over():
            yield from self._wait_reply(scenario.reply_timeout)
        elif policy is HangupPolicy.PERSONA_CLOSES:
            yield from self._until(lambda: self._over_at is not None, self._deadline)

    def _over(self) -> bool:
        return self._over_at is not None or self._now >= self._deadline

    def _until(self, condition: Callable[[], bool] | None, deadline: float) -> Iterator[_Wait]:
        """Wait for ``condition`` (None: only for ``deadline``), the call's end or its deadline."""
        if condition is not None and condition():
            return
        yield _Wait(condition, min(deadline, self._deadline))

    def _wait(self, condition: Callable[[], bool], timeout: float) -> Iterator[_Wait]:
        """Wait up to ``timeout`` (or the call's end or deadline) for ``condition``; whether it holds."""
        yield from self._until(condition, self._now + timeout)
        return condition()

    def _wait_reply(self, timeout: float) -> Iterator[_Wait]:
        """Wait for the persona's reply to the rep's last spoken turn to start, then to finish
        (each up to ``timeout``). The reply is an utterance that starts at or after the rep's speech
        in that turn ended: a greeting, or anything said over the rep, is not it. A reply that never
        starts is counted as ``no_reply``; one that starts but goes on past ``timeout`` is not."""
        if (yield from self._wait_reply_start(timeout)):
            yield from self._wait(lambda: not self._persona_speaking, timeout)

    def _wait_reply_start(self, timeout: float) -> Iterator[_Wait]:
        """Wait up to ``timeout`` for the reply to the rep's last spoken turn to start; if it does
        not (and the call goes on), count ``no_reply``."""
        if (yield from self._wait_persona(self._reply_after, timeout)):
            return True
        if not self._over():
            self._record(Step.PERSONA_RESPONSE, error=ErrorCode.NO_REPLY)
            self._rep_stopped_at = None
        return False

    def _wait_greeting(self, timeout: float) -> Iterator[_Wait]:
        """The persona speaks first: wait for its greeting to start, then to finish (each up to
        ``timeout``). A greeting that never comes is not a missing reply: the rep just goes first."""
        if (yield from self._wait_persona(None, timeout)):
            yield from self._wait(lambda: not self._persona_speaking, timeout)

    def _wait_persona(self, after: float | None, timeout: float) -> Iterator[_Wait]:
        """Wait up to ``timeout`` for a persona utterance that started at or after ``after``
        (None: any since the call began); True if there is one, even if it has ended since."""

        def started() -> bool:
            at = self._persona_started_at
            return at is not None and (after is None or at >= after)

        return (yield from self._wait(started, timeout))

    # -- recording --------------------------------------------------------------------------------

    def _record(
        self,
        step: Step,
        seconds: float | None = None,
        error: object | None = None,
        *,
        outcome: Outcome | ScoreOutcome | None = None,
        connected: float = 0.0,
        unknown: int = 0,
    ) -> None:
        """Decide what a step records. ``athos_errors`` counts each error once, where it happens:
        a step in ``CONSEQUENCES`` failing with the code last counted (a join refused by that event,
        a call failed by that mint) is not counted again; with another code it is. A missing score
        and an ignored barge-in (``COUNTED_APART``) are counted as such, never as errors. Once the
        run's stop has begun, or it aborts this call, only ``KEPT_WHILE_STOPPING`` is recorded."""
        if self._ending and step not in KEPT_WHILE_STOPPING:
            return  # what fails or is timed now is the stop's doing, not the platform's
        code = None if error is None else str(error)
        counted = False
        if code is not None and step not in COUNTED_APART and not (step in CONSEQUENCES and code == self._last_error):
            counted = True
            self._last_error = code
        self._records.append(Record(step, seconds, code, outcome, counted, connected, unknown, self._now))

    @property
    def aborting(self) -> bool:
        return self._aborting

    @property
    def _ending(self) -> bool:
        """The run is ending under this call (its stop has begun, or it aborts this call)."""
        return self._aborting or self.stopping()

    def _end_stream(self) -> None:
        """The persona's utterance is over (it stopped, started anew, or the call ended): record
        it, unless the run's end cut it off (the stop stalls every stream: not the platform's doing)."""
        stream, self._stream = self._stream, None
        if stream is not None and not self._ending:
            self._records.append(Heard(stream))

    def _settle_barge_in(self, stopped_at: float | None, now: float) -> None:
        """The persona stopped (at ``stopped_at``) or the call ended (None) with a barge-in pending:
        it yielded in time, or it talked on over the rep for longer than BARGE_IN_TIMEOUT."""
        barged, self._barge_at = self._barge_at, None
        if barged is None or (stopped_at is not None and stopped_at < barged):
            return  # no barge-in, or the persona finished before the rep's words came: none happened
        talked_on = (now if stopped_at is None else stopped_at) - barged
        if talked_on > BARGE_IN_TIMEOUT:
            self._record(Step.BARGE_IN, error="ignored")
        elif stopped_at is not None:
            self._record(Step.BARGE_IN, talked_on)

    def _finish(self, outcome: Outcome, error: object | None, now: float, unknown: int = 0) -> None:
        """Account for the call once."""
        self._now = now
        self._settle_barge_in(None, now)
        self._end_stream()
        self.outcome = outcome
        self._waiting = self._script_run = None
        end = self.ended_at or now
        connected = 0.0 if self._ready_at is None else max(0.0, end - self._ready_at)
        self._record(Step.CALL, now - self._started, error, outcome=outcome, connected=connected, unknown=unknown)
