"""Turn-taking alone, on the virtual clock: the rep never starts a turn while the persona speaks
(its greeting or a reply) unless the turn says ``barge_in``, and each turn waits for the reply to
the one before it. The persona speaks at chosen times, whatever the call does meanwhile
(``persona_later``); tests/test_turn_taking.py holds the same rules against the simulator."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from support.fakes import SPEECH, FakeSpoken, FakeTransport, Harness, Platform, make_clip

from athos_load.scenario import Turn
from athos_load.wire import ErrorCode, Speaker, Speaking

Script = Callable[[FakeTransport, int, FakeSpoken], None]


def replies(latency: float = 0.1, seconds: float = 0.3) -> Script:
    """A script: the persona answers every turn ``latency`` after its speech ends."""

    def script(session: FakeTransport, index: int, utterance: FakeSpoken) -> None:
        session.persona_later(utterance.start + SPEECH[1] + latency, seconds)

    return script


def converse(
    script: Script,
    *,
    greets: bool = False,
    barge_in: float | None = None,
    think: float = 0.0,
    reply_timeout: float = 2.0,
    before: Callable[[FakeTransport, float], None] | None = None,
) -> tuple[FakeTransport, Harness]:
    """Two turns (the second a barge-in if ``barge_in``) played against ``script``; ``before``
    (called with the session at ready) sets up what the persona does from the start."""

    class Scripted(Platform):
        def connect(self, session: FakeTransport) -> None:
            super().connect(session)
            if before is not None:
                before(session, session.clock)

        def turn(self, session: FakeTransport, index: int, utterance: FakeSpoken) -> None:
            script(session, index, utterance)

    clip = make_clip()
    h = Harness()
    h.run(
        Scripted,
        turns=(Turn(clip, "a.wav"), Turn(clip, "b.wav", barge_in=barge_in)),
        think_time=(think, think),
        reply_timeout=reply_timeout,
        persona_greets=greets,
    )
    return h.sessions[0], h


def assert_never_over_the_persona(session: FakeTransport, allowed: tuple[int, ...] = ()) -> None:
    for i, utterance in enumerate(session.said):
        if i not in allowed:
            inside = [(s, e) for s, e in session.persona_spoke if s < utterance.start < e]
            assert not inside, f"turn {i} started at {utterance.start} while the persona spoke {inside}"


def test_waits_for_a_declared_greeting_that_starts_late():
    session, h = converse(replies(), greets=True, before=lambda s, t0: s.persona_later(t0 + 0.15, 0.3))
    greeting = session.persona_spoke[0]
    assert session.said[0].start >= greeting[1]  # after it, though it began after the call was ready
    assert_never_over_the_persona(session)
    assert h.errors() == {} and len(session.said) == 2


def test_does_not_start_over_an_undeclared_greeting_under_way():
    def greeting_under_way(session: FakeTransport, t0: float) -> None:
        session.emit(Speaking(Speaker.PERSONA, True))  # heard before the first turn
        session.vclock.at(t0 + 0.3, lambda: session.emit(Speaking(Speaker.PERSONA, False)))

    session, h = converse(replies(), before=greeting_under_way)
    assert session.said[0].start >= session.persona_spoke[0][1]
    assert_never_over_the_persona(session)
    assert h.errors() == {}


def test_an_utterance_during_the_rep_speech_is_not_the_reply():
    """The persona says something while the rep still speaks (a greeting's tail, a backchannel);
    the reply proper comes after the rep's speech ends, and the next turn waits for it."""

    def script(session: FakeTransport, index: int, utterance: FakeSpoken) -> None:
        if index == 0:
            session.persona_later(utterance.start + 0.05, 0.1)  # during the rep's speech
        session.persona_later(utterance.start + SPEECH[1] + 0.15, 0.3)

    session, h = converse(script)
    first_reply = session.persona_spoke[1]
    assert session.said[1].start >= first_reply[1]
    assert_never_over_the_persona(session)
    assert h.errors() == {} and h.metrics.timing("persona_response").count == 2


def test_waits_when_the_persona_speaks_again_during_think_time():
    def script(session: FakeTransport, index: int, utterance: FakeSpoken) -> None:
        reply_at = utterance.start + SPEECH[1] + 0.1
        session.persona_later(reply_at, 0.2)
        if index == 0:
            session.persona_later(reply_at + 0.3, 0.3)  # a second thought, 0.1 s into the rep's think time

    session, _ = converse(script, think=0.2)
    assert session.said[1].start >= session.persona_spoke[1][1]
    assert_never_over_the_persona(session)


def test_a_barge_in_cuts_into_the_reply():
    session, _ = converse(replies(seconds=0.5), barge_in=0.15)
    reply_start, reply_end = session.persona_spoke[0]
    assert session.said[1].start == pytest.approx(reply_start + 0.15, abs=1e-9)  # exactly when the turn says
    assert session.said[1].start < reply_end
    assert_never_over_the_persona(session, allowed=(1,))


def test_no_reply_is_counted_and_the_call_goes_on():
    def script(session: FakeTransport, index: int, utterance: FakeSpoken) -> None:
        if index == 1:
            session.persona_later(utterance.start + SPEECH[1] + 0.1, 0.2)  # only the second turn is answered

    session, h = converse(script, reply_timeout=0.3)
    assert h.errors() == {ErrorCode.NO_REPLY.value: 1}
    # the second turn starts when the wait for the first reply times out: 0.3 s after the first clip left
    assert session.said[1].start - session.said[0].end == pytest.approx(0.3, abs=1e-9)
    assert len(session.persona_spoke) == 1


def test_the_call_never_hangs_whatever_the_persona_does():
    """A persona that talks without end: every wait is bounded, the call ends by its hang-up."""

    def chatter(session: FakeTransport, index: int, utterance: FakeSpoken) -> None:
        session.emit(Speaking(Speaker.PERSONA, True))  # and never stops

    session, h = converse(chatter, reply_timeout=0.5)
    assert len(session.said) == 2 and session.end_reason == "hangup"
    assert h.calls()["completed"] == 1
