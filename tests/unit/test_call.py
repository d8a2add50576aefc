"""The call alone (:class:`athos_load.call.Call` driving its :class:`~athos_load.conversation.Conversation`)
against a transport that is not a WebSocket, on a virtual clock (tests/support/fakes.py).

The clock moves only when the call waits, and the test's :class:`Platform` says what happens when:
connecting → ready takes ``connect_seconds``, a rep's clip takes its length, the persona answers
``reply_latency`` after the rep's speech ends. Events carry those times, so every timing the call
records is known exactly, and no test waits in real time but for a score. Checked here: turn
latency, what the rep hears, the accounting of every started call, each outcome, and what reaches
Locust's request event.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import gevent
import numpy as np
import pytest
from support.fakes import (
    CALL_ID,
    CLIP_FRAMES,
    FMT,
    SPEECH,
    FakeSpoken,
    FakeTransport,
    Harness,
    Platform,
    check_accounting,
    observed,
)

from athos_load.api import Score
from athos_load.audio import Clip
from athos_load.call import CallFailure
from athos_load.metrics import Outcome, Timing
from athos_load.scenario import HangupPolicy, Turn
from athos_load.wire import ErrorCode, Reconnected, Reconnecting, Segment, Speaker, Speaking

EXACT = 1e-6  # the fake's times are exact; only float rounding separates them (at a monotonic clock of hours, ~1e-9 ms)
LOG_ACCURACY = 1e-3  # a LogHistogram reads values back within 0.1%


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the call never got there"
        gevent.sleep(0.001)


def stop_at(h: Harness, when: float) -> None:
    """Locust stops this call's user at ``when`` (virtual): a kill raises GreenletExit where it waits."""

    def kill() -> None:
        raise gevent.GreenletExit

    h.clock.at(when, kill)


# -- turn latency ----------------------------------------------------------------------------------


def test_persona_response_runs_from_the_rep_speech_end_to_persona_speaking():
    class Replies(Platform):
        reply_latency = (0.35, 0.6)

    h = Harness()
    h.run(Replies)
    entries = h.entries("persona_response")
    assert [e["response_time"] for e in entries] == pytest.approx([350.0, 600.0], abs=EXACT)
    assert observed(h.metrics, Timing.PERSONA_RESPONSE) == pytest.approx([0.35, 0.6], rel=LOG_ACCURACY)
    assert h.errors() == {}


def test_the_persona_speaking_over_the_rep_is_not_the_reply():
    """An utterance that starts before the rep's speech ends (a backchannel) is not timed; the
    reply after the speech end is, from the speech end."""

    class Backchannel(Platform):
        def turn(self, session: FakeTransport, index: int, utterance: FakeSpoken) -> None:
            session.persona(utterance.start + SPEECH[1] - 0.1, 0.05)
            session.persona(utterance.start + SPEECH[1] + 0.45, 0.5)

    h = Harness()
    h.run(Backchannel, turns=1)
    assert [e["response_time"] for e in h.entries("persona_response")] == pytest.approx([450.0], abs=EXACT)


def test_a_reply_that_never_comes_is_no_reply_and_the_call_goes_on():
    class Silent(Platform):
        def turn(self, session: FakeTransport, index: int, utterance: FakeSpoken) -> None:
            if index == 1:
                super().turn(session, index, utterance)

    h = Harness()
    call = h.run(Silent, reply_timeout=0.05)
    first, second = h.entries("persona_response")
    assert first["exception"].code == ErrorCode.NO_REPLY and first["response_time"] is None
    assert second["exception"] is None and second["response_time"] == pytest.approx(300.0, abs=EXACT)
    assert h.errors() == {"no_reply": 1}
    assert call.outcome is Outcome.COMPLETED and len(h.sessions[0].said) == 2


def test_connect_ready_runs_from_connecting_to_ready():
    class SlowJoin(Platform):
        connect_seconds = 1.25

    h = Harness()
    h.run(SlowJoin)
    (entry,) = h.entries("connect_ready")
    assert entry["response_time"] == pytest.approx(1250.0, abs=EXACT)
    assert observed(h.metrics, Timing.CONNECT_READY) == pytest.approx([1.25], rel=LOG_ACCURACY)


# -- what the rep hears ----------------------------------------------------------------------------

SILENT_FRAME = bytes(FMT.frame_bytes)
VOICED_FRAME = (np.sin(np.arange(FMT.frame_samples) / 3.0) * 8000).astype("<i2").tobytes()


def test_the_turn_latency_splits_into_endpointing_and_response():
    """speech end -> userSpeaking false (endpointing) -> personaSpeaking true (response); their sum
    is persona_response; speech start -> userSpeaking true is the platform hearing the rep begin."""

    class Heard(Platform):
        def turn(self, session: FakeTransport, index: int, utterance: FakeSpoken) -> None:
            session.user(utterance.start + SPEECH[0] + 0.04, True)
            session.user(utterance.start + SPEECH[1] + 0.25 + 0.1 * index, False)
            session.persona(utterance.start + SPEECH[1] + 0.65 + 0.1 * index, 0.5)

    h = Harness()
    h.run(Heard)
    assert observed(h.metrics, Timing.SPEECH_ONSET) == pytest.approx([0.04, 0.04], rel=LOG_ACCURACY)
    assert observed(h.metrics, Timing.ENDPOINTING) == pytest.approx([0.25, 0.35], rel=LOG_ACCURACY)
    assert observed(h.metrics, Timing.RESPONSE) == pytest.approx([0.4, 0.4], rel=LOG_ACCURACY)
    assert observed(h.metrics, Timing.PERSONA_RESPONSE) == pytest.approx([0.65, 0.75], rel=LOG_ACCURACY)
    assert [e["response_time"] for e in h.entries("endpointing")] == pytest.approx([250.0, 350.0], abs=1e-6)


def test_a_pause_inside_the_reps_speech_is_not_its_end():
    """A userSpeaking false before the clip's speech has ended (the platform split the utterance at
    a pause) is not the endpoint; the one after it is."""

    class Split(Platform):
        def turn(self, session: FakeTransport, index: int, utterance: FakeSpoken) -> None:
            session.user(utterance.start + SPEECH[0] + 0.02, True)
            session.user(utterance.start + SPEECH[0] + 0.1, False)
            session.user(utterance.start + SPEECH[0] + 0.15, True)
            session.user(utterance.start + SPEECH[1] + 0.3, False)
            session.persona(utterance.start + SPEECH[1] + 0.5, 0.5)

    h = Harness()
    h.run(Split, turns=1)
    assert observed(h.metrics, Timing.ENDPOINTING) == pytest.approx([0.3], rel=LOG_ACCURACY)
    assert observed(h.metrics, Timing.SPEECH_ONSET) == pytest.approx([0.02], rel=LOG_ACCURACY)


def test_time_to_first_word_and_audio_lead_run_to_the_first_frame_with_sound():
    """A greeting announced 0.1 s after ready whose sound starts 0.3 s after the announcement:
    connecting -> that sound is the time to first word, personaSpeaking -> it the audio lead."""

    class Greets(Platform):
        def connect(self, session: FakeTransport) -> None:
            super().connect(session)
            start = session.clock + 0.1
            session.clock = start
            session.emit(Speaking(Speaker.PERSONA, True))
            for k in range(15):  # 0.3 s of silence, then the voice
                session.hear(start + k * FMT.frame_seconds, SILENT_FRAME)
            session.hear(start + 0.3, VOICED_FRAME)
            session.hear(start + 0.32, VOICED_FRAME)
            session.advance(0.5)
            session.emit(Speaking(Speaker.PERSONA, False))

        def turn(self, session: FakeTransport, index: int, utterance: FakeSpoken) -> None:
            session.clock = max(session.clock, utterance.start + SPEECH[1] + 0.3)
            session.emit(Speaking(Speaker.PERSONA, True))
            session.hear(session.clock + 0.05, VOICED_FRAME)
            session.advance(0.5)
            session.emit(Speaking(Speaker.PERSONA, False))

    h = Harness()
    h.run(Greets, persona_greets=True)
    ttfw = Platform.connect_seconds + 0.1 + 0.3
    assert observed(h.metrics, Timing.TIME_TO_FIRST_WORD) == pytest.approx([ttfw], rel=LOG_ACCURACY)
    assert observed(h.metrics, Timing.PERSONA_AUDIO_LEAD) == pytest.approx([0.05, 0.05, 0.3], rel=LOG_ACCURACY)

    class RepFirst(Greets):
        def connect(self, session: FakeTransport) -> None:
            Platform.connect(self, session)

    h = Harness()
    h.run(RepFirst)  # the rep speaks first: its wait is no time to first word
    assert h.metrics.timing(Timing.TIME_TO_FIRST_WORD).count == 0
    assert h.metrics.timing(Timing.PERSONA_AUDIO_LEAD).count == 2


def barge_in_scenario() -> dict[str, Any]:
    clip = Clip(None, FMT, (bytes(FMT.frame_bytes),) * CLIP_FRAMES, (SPEECH,))
    return {"turns": (Turn(clip, "barge.wav", barge_in=0.05),), "persona_greets": True}


@pytest.mark.parametrize(("talks_on", "timed", "ignored"), [(0.2, [0.2], 0), (3.0, [], 1), (-0.02, [], 0)])
def test_a_barge_in_is_timed_until_the_persona_yields_or_counted_ignored(talks_on, timed, ignored):
    """The rep talks over a greeting: from its speech start to personaSpeaking false; a persona that
    talks on for longer than the barge-in timeout has ignored it (counted, not an error). A persona
    that finishes before the rep's words come was not talked over: nothing to time or count, not
    even when its next utterance ends (it was timed, from the barge-in turn's speech start)."""

    class Greeting(Platform):
        def connect(self, session: FakeTransport) -> None:
            super().connect(session)
            session.emit(Speaking(Speaker.PERSONA, True))  # and it goes on, until the rep barges in

        def turn(self, session: FakeTransport, index: int, utterance: FakeSpoken) -> None:
            session.clock = max(session.clock, utterance.start + SPEECH[0] + talks_on)
            session.emit(Speaking(Speaker.PERSONA, False))
            session.persona(utterance.start + SPEECH[1] + 0.3, 0.3)

    h = Harness()
    h.run(Greeting, **barge_in_scenario())
    assert observed(h.metrics, Timing.BARGE_IN) == pytest.approx(timed, rel=LOG_ACCURACY)
    assert h.metrics.summary()["barge_ins_ignored"] == ignored
    assert h.errors() == {}
    assert [e["exception"] is not None for e in h.entries("barge_in")] == [bool(ignored)] * (len(timed) + ignored)


@pytest.mark.parametrize(
    ("heard", "expected"),
    [
        # every word heard, one inserted: WER 1/9
        (("hello this is sam", "do you have a minute please"), {"missing": 0, "misaligned": 0, "wer": 1 / 9}),
        # the second turn dropped: missing, and its five words deleted
        (("hello this is sam", None), {"missing": 1, "misaligned": 0, "wer": 5 / 9}),
        # no words, only the simulator's placeholder: presence and alignment, no WER
        (("[rep speech 0.22s]", "[rep speech 0.22s]"), {"missing": 0, "misaligned": 0, "wer": None}),
    ],
)
def test_the_transcript_is_held_against_what_the_rep_said(heard, expected):
    h = Harness(transcript_check=True)

    def transcript() -> tuple[Segment, ...]:
        session = h.sessions[-1]
        return tuple(
            Segment("rep", u.start - session.ready_at + SPEECH[0], u.start - session.ready_at + SPEECH[1], w)
            for u, w in zip(session.said, heard, strict=True)
            if w is not None
        )

    h.settings.api.transcript = transcript
    clip = Clip(None, FMT, (bytes(FMT.frame_bytes),) * CLIP_FRAMES, (SPEECH,))
    said = (Turn(clip, "0.wav", text="Hello, this is Sam."), Turn(clip, "1.wav", text="Do you have a minute?"))
    h.run(turns=said)
    summary = h.metrics.summary()["transcript"]
    assert {k: summary[k] for k in ("turns", "missing", "misaligned")} == {"turns": 2, **{
        k: expected[k] for k in ("missing", "misaligned")
    }}  # fmt: skip
    assert summary["wer"] == (None if expected["wer"] is None else pytest.approx(expected["wer"], rel=1e-6))
    assert len(h.entries("transcript_fetch")) == 1 and h.errors() == {}


def test_a_transcript_segment_off_the_speech_is_misaligned_and_a_failed_fetch_is_an_error():
    h = Harness(transcript_check=True)

    def shifted() -> tuple[Segment, ...]:
        session = h.sessions[-1]
        return tuple(
            Segment("rep", u.start - session.ready_at + 0.5, u.start - session.ready_at + 0.9) for u in session.said
        )

    h.settings.api.transcript = shifted
    h.run()
    assert h.metrics.summary()["transcript"]["misaligned"] == 2
    h = Harness(transcript_check=True)  # the call is not readable: the fetch fails with the platform's code
    h.settings.api.refuse_fetch = "CALL_NOT_FOUND"
    h.run()
    (entry,) = h.entries("transcript_fetch")
    assert entry["exception"].code == "CALL_NOT_FOUND" and h.errors() == {"CALL_NOT_FOUND": 1}


# -- what reaches Locust ---------------------------------------------------------------------------


def test_a_scored_call_is_one_locust_entry_per_step():
    h = Harness()
    call = h.run()
    assert [(e["request_type"], e["name"]) for e in h.reports] == [
        ("POST", "token_mint"),
        ("WS", "connect_ready"),
        ("WS", "persona_response"),
        ("WS", "persona_response"),
        ("CALL", "call"),
        ("SCORE", "end_to_score"),
        ("GET", "transcript_fetch"),  # the score itself: GET /calls/:callId once call.scored came
    ]
    assert all(e["exception"] is None and e["response_time"] >= 0 for e in h.reports)
    assert all(e["context"] == {"scenario": "fake"} and e["response_length"] == 0 for e in h.reports)
    assert h.entries("end_to_score")[0]["response_time"] == pytest.approx(2500.0, abs=EXACT)
    # the call's length on the virtual clock: the join, two clips and their replies
    assert h.entries("call")[0]["response_time"] == pytest.approx(1000 * (0.4 + 2 * (0.26 + 0.3 + 1.0)), abs=EXACT)
    assert call.outcome is Outcome.COMPLETED and call.call_id == CALL_ID and h.announced == [CALL_ID]
    assert h.sessions[0].options["token"] == "token-1" and h.sessions[0].options["drill_key"] == "fake-drill"
    assert h.settings.api.redeemed == [("token-1", "fake-drill")] and call.score == 80.0
    assert h.sessions[0].redemption.connection_ticket == "ticket-1"
    assert h.metrics.summary()["quota"] == {"calls": 1, "tokens": 1}
    assert h.sessions[0].closed


def test_a_failed_step_is_a_call_failure_with_its_code_and_no_response_time():
    class Refused(Platform):
        refuse = ErrorCode.CONCURRENCY_LIMIT

    h = Harness()
    h.run(Refused)
    failed = [e for e in h.reports if e["exception"] is not None]
    assert [e["name"] for e in failed] == ["connect_ready", "call"]
    for entry in failed:
        assert isinstance(entry["exception"], CallFailure)
        assert entry["exception"].code == str(entry["exception"]) == "concurrency_limit"
        assert entry["response_time"] is None


# -- outcomes --------------------------------------------------------------------------------------


def test_a_refused_mint_fails_the_call_before_any_session():
    h = Harness(mint_refused=ErrorCode.RATE_LIMITED)
    call = h.run()
    assert call.outcome is Outcome.FAILED and h.sessions == []
    assert [(e["name"], str(e["exception"])) for e in h.reports] == [
        ("token_mint", "rate_limited"),
        ("call", "rate_limited"),
    ]
    assert h.errors() == {"rate_limited": 1}
    assert h.metrics.total("athos_setup_failed", scenario="fake") == 1
    assert h.metrics.timing(Timing.TOKEN_MINT).count == 0
    check_accounting(h.metrics, [call])


def test_a_refused_connect_counts_its_error_once():
    """The session's error event and the two failed steps it causes are one error, not three."""

    class Refused(Platform):
        refuse = ErrorCode.CONCURRENCY_LIMIT

    h = Harness()
    call = h.run(Refused)
    assert call.outcome is Outcome.FAILED and h.sessions[0].said == []
    assert h.errors() == {"concurrency_limit": 1}
    assert h.metrics.total("athos_setup_failed") == 1
    assert h.metrics.timing(Timing.CONNECT_READY).count == 0
    assert h.metrics.summary()["session_minutes"] == 0
    check_accounting(h.metrics, [call])


def test_an_error_that_ends_the_call_fails_it_with_that_code():
    class Crash(Platform):
        def turn(self, session: FakeTransport, index: int, utterance: FakeSpoken) -> None:
            session.clock = utterance.end + 0.5
            session.fail(ErrorCode.INTERNAL_ERROR)
            session.end("error")

    h = Harness()
    call = h.run(Crash)
    assert call.outcome is Outcome.FAILED and len(h.sessions[0].said) == 1  # no second turn
    assert [(e["name"], str(e["exception"])) for e in h.reports if e["exception"]] == [("call", "internal_error")]
    assert h.entries("end_to_score") == [] and h.announced == []
    assert h.errors() == {"internal_error": 1}
    assert h.metrics.total("athos_setup_failed") == 0
    # the call was connected from ready to its end: the clip (0.3 s) and half a second more
    assert h.metrics.summary()["session_minutes"] == pytest.approx(0.8 / 60, abs=0.001)
    check_accounting(h.metrics, [call])


def test_a_non_fatal_error_is_counted_and_the_call_completes():
    class Hiccup(Platform):
        def turn(self, session: FakeTransport, index: int, utterance: FakeSpoken) -> None:
            if index == 0:
                session.fail(ErrorCode.RATE_LIMITED)
            super().turn(session, index, utterance)

    h = Harness()
    call = h.run(Hiccup)
    assert call.outcome is Outcome.COMPLETED
    assert h.errors() == {"rate_limited": 1}
    assert [e for e in h.reports if e["exception"] is not None] == []


def test_a_drop_is_timed_until_reconnected():
    class Drop(Platform):
        def turn(self, session: FakeTransport, index: int, utterance: FakeSpoken) -> None:
            if index == 0:
                session.emit(Reconnecting())
                session.advance(1.5)
                session.emit(Reconnected(CALL_ID))
            super().turn(session, index, utterance)

    h = Harness()
    call = h.run(Drop)
    assert call.outcome is Outcome.COMPLETED
    assert [e["response_time"] for e in h.entries("reconnect")] == pytest.approx([1500.0], abs=EXACT)
    assert h.metrics.summary()["reconnects"] == 1 and h.errors() == {}


def test_a_refused_resume_fails_the_reconnect_and_the_call_with_one_error():
    class Lost(Platform):
        def turn(self, session: FakeTransport, index: int, utterance: FakeSpoken) -> None:
            session.emit(Reconnecting())
            session.advance(0.7)
            session.fail(ErrorCode.UNKNOWN_CALL)
            session.end("error")

    h = Harness()
    call = h.run(Lost)
    assert call.outcome is Outcome.FAILED
    failed = [(e["name"], str(e["exception"]), e["response_time"]) for e in h.reports if e["exception"]]
    assert failed == [("reconnect", "unknown_call", None), ("call", "unknown_call", None)]
    assert h.errors() == {"unknown_call": 1} and h.metrics.summary()["reconnects"] == 1
    assert h.metrics.timing(Timing.RECONNECT).count == 0
    check_accounting(h.metrics, [call])


def test_a_call_the_persona_closes_is_completed():
    class Closes(Platform):
        def turn(self, session: FakeTransport, index: int, utterance: FakeSpoken) -> None:
            super().turn(session, index, utterance)
            if index == 1:
                session.end("persona")

        def hangup(self, session: FakeTransport) -> None:
            raise AssertionError("the persona hung up: the rep has nothing to hang up")

    h = Harness()
    call = h.run(Closes, hangup=HangupPolicy.PERSONA_CLOSES)
    assert call.outcome is Outcome.COMPLETED and h.calls()["scored"] == 1


def test_a_score_that_arrives_times_end_to_score():
    class Slow(Platform):
        score_after = 7.25

    h = Harness()
    call = h.run(Slow)
    assert h.calls()["scored"] == 1
    assert observed(h.metrics, Timing.END_TO_SCORE) == pytest.approx([7.25], rel=LOG_ACCURACY)
    check_accounting(h.metrics, [call])


def test_a_score_that_never_arrives_is_missing_not_an_error():
    class Unscored(Platform):
        score_after = None

    h = Harness(score_timeout=0.02)
    call = h.run(Unscored)
    (entry,) = h.entries("end_to_score")
    assert str(entry["exception"]) == "score_missing" and entry["response_time"] is None
    assert h.calls()["score_missing"] == 1 and h.calls()["scored"] == 0
    assert h.errors() == {} and h.metrics.timing(Timing.END_TO_SCORE).count == 0
    check_accounting(h.metrics, [call])


def test_the_run_ending_mid_call_aborts_it_without_errors():
    """Stopped while it waits for a reply: it hangs up, is counted aborted, and what fails while
    it stops (here, the hang-up ends in an error) is not the platform's: no error, no failure."""

    class Stuck(Platform):
        def turn(self, session: FakeTransport, index: int, utterance: FakeSpoken) -> None:
            # a persona utterance in progress when the run stops: its audio stalls as the users go
            session.clock = utterance.end
            session.emit(Speaking(Speaker.PERSONA, True))
            session.hear(session.clock + 0.01, VOICED_FRAME)
            session.hear(session.clock + 0.5, VOICED_FRAME)  # 490 ms later: a gap, were it the platform's

        def hangup(self, session: FakeTransport) -> None:
            session.fail(ErrorCode.RECONNECT_FAILED)
            session.end("error")

    h = Harness()
    call = h.call(Stuck, reply_timeout=30.0)
    stop_at(h, h.clock.now() + 5.0)  # well into the wait for the reply
    with pytest.raises(gevent.GreenletExit):
        call.run()
    assert call.outcome is Outcome.ABORTED
    assert h.sessions[0].end_reason == "error"  # it did hang up
    assert h.errors() == {} and [e for e in h.reports if e["exception"] is not None] == []
    assert h.entries("call") == []  # an aborted call is not a Locust entry
    # nor is the persona audio cut off by the stop: no gap, no underrun, no persona-minutes
    assert h.metrics.timing(Timing.PERSONA_AUDIO_GAP).count == 0 and h.metrics.persona_audio_seconds.total() == 0
    check_accounting(h.metrics, [call])


def test_once_the_stop_begins_a_call_times_nothing_and_is_still_accounted():
    """Locust stops every user at once; until a call's own user is stopped, the loop busy with the
    others reads its events late (a 400 ms stall at 100 users in the fidelity benchmark). So from
    the stop's start a call records no timing and no error, only its accounting and its score."""
    settings_of: list[Any] = []

    class StopsMidCall(Platform):
        def turn(self, session: FakeTransport, index: int, utterance: FakeSpoken) -> None:
            if index == 1:
                settings_of[0].stopping.set()  # Locust's test_stopping, as the rep's second turn ends
                session.user(utterance.start + SPEECH[1] + 0.4, False)
            super().turn(session, index, utterance)

    h = Harness()
    settings_of.append(h.settings)
    call = h.run(StopsMidCall)
    assert call.outcome is Outcome.COMPLETED and h.calls()["scored"] == 1
    assert len(h.entries("persona_response")) == 1  # the first turn's reply, before the stop
    assert h.metrics.timing(Timing.PERSONA_RESPONSE).count == 1
    assert h.metrics.timing(Timing.ENDPOINTING).count == 0  # said during the stop only
    assert len(h.entries("end_to_score")) == 1 and len(h.entries("call")) == 1
    check_accounting(h.metrics, [call])


def test_the_run_ending_while_a_score_is_awaited_leaves_it_pending():
    class Unscored(Platform):
        score_after = None

    h = Harness(score_timeout=30.0)
    call = h.call(Unscored)
    greenlet = gevent.spawn(call.run)
    wait_until(lambda: call.outcome is Outcome.COMPLETED)
    gevent.sleep(0.01)  # into the wait for the score
    greenlet.kill(block=True, timeout=5)
    assert call.adopted and h.drain.pending == 1
    h.drain.wait(0.01)  # the run's drain time is up before the score timeout
    assert h.drain.pending == 0
    assert h.calls()["score_pending"] == 1 and h.calls()["score_missing"] == 0
    assert h.entries("end_to_score") == [] and h.errors() == {}
    check_accounting(h.metrics, [call])


def test_a_score_that_comes_during_the_drain_is_scored():
    class Late(Platform):
        score_after = None

    h = Harness(score_timeout=30.0)
    call = h.call(Late)
    greenlet = gevent.spawn(call.run)
    wait_until(lambda: call.outcome is Outcome.COMPLETED)
    gevent.sleep(0.01)
    greenlet.kill(block=True, timeout=5)
    assert call.adopted and call.ended_at is not None
    h.board.deliver(Score(CALL_ID, 0.5, call.ended_at + 3.0, "poll"))
    h.drain.wait(5.0)
    assert h.calls()["scored"] == 1
    assert [e["response_time"] for e in h.entries("end_to_score")] == pytest.approx([3000.0], abs=EXACT)
    check_accounting(h.metrics, [call])


# -- accounting over many calls --------------------------------------------------------------------


def test_every_started_call_is_counted_once_whatever_its_outcome():
    class Refused(Platform):
        refuse = ErrorCode.CONCURRENCY_LIMIT

    class Crash(Platform):
        def turn(self, session: FakeTransport, index: int, utterance: FakeSpoken) -> None:
            session.fail(ErrorCode.INTERNAL_ERROR)
            session.end("error")

    class Unscored(Platform):
        score_after = None

    class Stuck(Platform):
        def turn(self, session: FakeTransport, index: int, utterance: FakeSpoken) -> None:
            pass

    h = Harness(score_timeout=0.01)
    calls = [h.run(p) for p in (Platform, Refused, Crash, Platform, Unscored, Refused)]
    stuck = h.call(Stuck, reply_timeout=30.0)
    stop_at(h, h.clock.now() + 5.0)
    with pytest.raises(gevent.GreenletExit):
        stuck.run()
    assert len(h.sessions) == 7 and h.sessions[-1].said
    calls.append(stuck)
    check_accounting(h.metrics, calls)
    c = h.calls()
    assert (c["started"], c["completed"], c["failed"], c["aborted"]) == (7, 3, 3, 1)
    assert (c["scored"], c["score_missing"]) == (2, 1)
    assert h.errors() == {"concurrency_limit": 2, "internal_error": 1}
    # Locust saw one "call" entry per completed or failed call, the failed ones as failures
    assert len(h.entries("call")) == c["completed"] + c["failed"]
    assert sum(e["exception"] is not None for e in h.entries("call")) == c["failed"]


def test_an_unexpected_exception_still_accounts_for_the_call():
    class Broken(Platform):
        def turn(self, session: FakeTransport, index: int, utterance: FakeSpoken) -> None:
            raise RuntimeError("a bug in the tool")

    h = Harness()
    call = h.call(Broken)
    with pytest.raises(RuntimeError), gevent.Timeout(10):
        call.run()
    assert call.outcome is Outcome.FAILED and str(h.entries("call")[0]["exception"]) == "internal"
    assert h.errors() == {"other": 1}  # a tool's failure is an error too, under a bounded label
    check_accounting(h.metrics, [call])
