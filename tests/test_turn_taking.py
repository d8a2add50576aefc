"""Turn-taking: the rep never starts a turn while the persona speaks (its greeting or a reply)
unless the turn says ``barge_in``, and each turn waits for the reply to the one before it.

Two levels: many real calls against the simulator with a greeting, judged by its truth log (what
the platform heard, on its own clock); and the turn logic alone against a scripted fake session
whose persona speaks at chosen times.
"""

from __future__ import annotations

import random
import textwrap
import time
from pathlib import Path
from typing import Any

import gevent
import gevent.pool
import pytest
from support.calls import run_calls

from athos_load.audio import Clip
from athos_load.call import Call, CallSettings
from athos_load.metrics import Metrics, Outcome
from athos_load.scenario import Scenario, ScenarioError, Turn, load_scenario
from athos_load.session import SessionEvent
from athos_load.sim.config import DEFAULT_GREETING_DRILLS, SimConfig
from athos_load.wire import AudioFormat, ErrorCode, Speaker, Speaking

ROOT = Path(__file__).resolve().parent.parent
AUDIO = ROOT / "scenarios" / "audio"
GREETING_SCENARIO = ROOT / "scenarios" / "smoke" / "callback-greeting.yaml"
FMT = AudioFormat()

# -- against the simulator -------------------------------------------------------------------------


def conversation(truth: list[dict], call_id: str) -> tuple[list[float], list[dict]]:
    """What the platform heard in one call: the rep's speech starts and the persona's utterances
    (``start``, ``end``, ``greeting``, ``interrupted``), on the simulator's monotonic clock."""
    lines = [e for e in truth if e["callId"] == call_id]
    ready = next(e["mono"] for e in lines if e["event"] == "ready")
    rep = [ready + e["start"] for e in lines if e["event"] == "user_speaking" and e["speaking"]]
    persona, started = [], None
    for e in lines:
        if e["event"] != "persona_speaking":
            continue
        if e["speaking"]:
            started = e["mono"]
        else:
            assert started is not None
            persona.append(
                {"start": started, "end": started + e["utterance"], "greeting": e["greeting"],
                 "interrupted": e["interrupted"]}
            )  # fmt: skip
            started = None
    return rep, persona


def talked_over(rep: list[float], persona: list[dict]) -> list[tuple[int, dict]]:
    """(rep utterance index, persona utterance) for every rep utterance that starts inside one."""
    return [(i, p) for i, at in enumerate(rep) for p in persona if p["start"] < at < p["end"]]


def barge_in_scenario(directory: Path) -> Scenario:
    """A greeted call whose second turn talks over the reply to the first."""
    path = directory / "barge-in.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            name: greeted-barge-in
            drill: callback-discovery
            persona_greets: true
            think_time: [0.0, 0.2]
            turns:
              - audio: {AUDIO}/cold-call-discovery/03-discovery.wav
              - audio: {AUDIO}/cold-call-discovery/04-demo.wav
                barge_in: 0.4
              - audio: {AUDIO}/objection-handling/05-criteria.wav
            max_call_seconds: 40
            reply_timeout: 8
            """
        )
    )
    return load_scenario(path, FMT)


def test_the_rep_waits_for_the_greeting_and_each_reply(sim_factory, tmp_path):
    """Greeted calls (the shipped smoke scenario, and one with a barge-in turn) against a simulator
    whose persona greets for 1.5 s on that drill by default, with replies of varying latency and
    length: no rep utterance starts inside a persona utterance except the barge-in, and nothing but
    the barge-in interrupts the persona."""
    sim = sim_factory(
        "--response-latency", "uniform:0.1,0.6", "--persona-utterance", "uniform:1.0,2.0", "--seed", "13"
    )  # fmt: skip
    greeted = load_scenario(GREETING_SCENARIO, FMT)
    assert greeted.persona_greets and greeted.drill == "callback-discovery"
    barging = barge_in_scenario(tmp_path)
    plan = [greeted] * 10 + [barging] * 4
    calls, metrics, reports = run_calls(sim, plan)
    sim.stop()  # flushes the truth log
    truth = sim.truth()

    assert [c.outcome for c in calls] == [Outcome.COMPLETED] * len(plan)
    failures = [r for r in reports if r["exception"] is not None and r["name"] != "end_to_score"]
    assert failures == []
    assert metrics.counters[("athos_errors", (ErrorCode.NO_REPLY.value,))] == 0
    problems = []
    for call in calls:
        assert call.call_id is not None
        rep, persona = conversation(truth, call.call_id)
        turns = len(call.scenario.turns)
        greetings = [p for p in persona if p["greeting"]]
        replies = [p for p in persona if not p["greeting"]]
        barge_ins = [i for i, t in enumerate(call.scenario.turns) if t.barge_in is not None]
        over = talked_over(rep, persona)
        where = f"{call.scenario.name} {call.call_id}: rep starts {rep}, persona {persona}"
        if len(rep) != turns or len(greetings) != 1 or len(replies) != turns:
            problems.append(f"{where}: expected {turns} rep utterances, a greeting and {turns} replies")
        elif [i for i, _ in over] != barge_ins:
            problems.append(f"{where}: rep utterances {[i for i, _ in over]} start while the persona speaks")
        elif [p for p in persona if p["interrupted"]] != [p for _, p in over]:
            problems.append(f"{where}: the persona was interrupted outside a barge-in")
        elif any(p["greeting"] for _, p in over):
            problems.append(f"{where}: a barge-in cut the greeting, not a reply")
    assert not problems, "\n".join(problems)


# -- the turn logic alone --------------------------------------------------------------------------

CLIP_FRAMES = 15  # 0.3 s
SPEECH = (0.04, 0.26)  # where the speech is inside each clip


class FakeUtterance:
    def __init__(self, start: float, seconds: float) -> None:
        self.start, self.end = start, start + seconds

    def wait(self, timeout: float | None = None) -> bool:
        gevent.sleep(max(0.0, self.end - time.monotonic()))
        return True


class FakeSession:
    """Plays the session's part in :meth:`Call._converse`: ``say`` takes real time, and ``script``
    (called at each turn with its index and utterance) makes the persona speak, by feeding
    personaSpeaking events to the call as the session's reader would."""

    def __init__(self, call: Call, script: Any) -> None:
        self.call = call
        self.script = script
        self.said: list[FakeUtterance] = []
        self.spoken: list[tuple[float, float]] = []  # the persona's utterances as they happened

    def say(self, frames: Any) -> FakeUtterance:
        utterance = FakeUtterance(time.monotonic(), len(frames) * FMT.frame_seconds)
        self.said.append(utterance)
        self.script(self, len(self.said) - 1, utterance)
        return utterance

    def wait_ended(self, timeout: float | None = None) -> bool:
        return False

    def persona(self, at: float, seconds: float) -> None:
        """The persona speaks from ``at`` (monotonic) for ``seconds``."""

        def speak() -> None:
            gevent.sleep(max(0.0, at - time.monotonic()))
            start = time.monotonic()
            self.call._on_persona(SessionEvent(Speaking(Speaker.PERSONA, True), start))
            gevent.sleep(seconds)
            end = time.monotonic()
            self.call._on_persona(SessionEvent(Speaking(Speaker.PERSONA, False), end))
            self.spoken.append((start, end))

        gevent.spawn(speak)


def errors(metrics: Metrics) -> dict[str, float]:
    return metrics.summary()["errors"]


def replies(latency: float = 0.1, seconds: float = 0.3) -> Any:
    """A script: the persona answers every turn ``latency`` after its speech ends."""

    def script(session: FakeSession, index: int, utterance: FakeUtterance) -> None:
        session.persona(utterance.start + SPEECH[1] + latency, seconds)

    return script


def converse(script: Any, *, greets: bool = False, barge_in: float | None = None, think: float = 0.0,
             reply_timeout: float = 2.0, before: Any = None) -> tuple[FakeSession, Metrics, float]:  # fmt: skip
    """Two turns (the second a barge-in if ``barge_in``) played against ``script``; ``before``
    (called with the session) sets up what the persona does from the start."""
    clip = Clip(None, FMT, (bytes(FMT.frame_bytes),) * CLIP_FRAMES, (SPEECH,))
    scenario = Scenario(
        name="fake", drill="fake", turns=(Turn(clip, "a.wav"), Turn(clip, "b.wav", barge_in=barge_in)),
        think_time=(think, think), reply_timeout=reply_timeout, persona_greets=greets, max_call_seconds=30,
    )  # fmt: skip
    metrics = Metrics()
    metrics.declare(["fake"])
    settings = CallSettings(api=None, ws_url="", board=None, metrics=metrics, pacer=None, audio=FMT, drain=None)  # type: ignore[arg-type]
    call = Call(settings, scenario, lambda **kw: None, random.Random(1))
    session = FakeSession(call, script)
    call.session = session  # type: ignore[assignment]
    started = time.monotonic()
    if before is not None:
        before(session, started)
    with gevent.Timeout(10):
        call._converse()
        call._wait_reply(scenario.reply_timeout)  # as hanging up after the last reply does
    return session, metrics, started


def assert_never_over_the_persona(session: FakeSession, allowed: tuple[int, ...] = ()) -> None:
    for i, utterance in enumerate(session.said):
        if i not in allowed:
            inside = [(s, e) for s, e in session.spoken if s < utterance.start < e]
            assert not inside, f"turn {i} started at {utterance.start} while the persona spoke {inside}"


def test_fake_waits_for_a_declared_greeting_that_starts_late():
    session, metrics, t0 = converse(replies(), greets=True, before=lambda s, t0: s.persona(t0 + 0.15, 0.3))
    greeting = session.spoken[0]
    assert session.said[0].start >= greeting[1]  # after it, though it began after the call was ready
    assert_never_over_the_persona(session)
    assert errors(metrics) == {} and len(session.said) == 2


def test_fake_does_not_start_over_an_undeclared_greeting():
    def greeting_under_way(session: FakeSession, t0: float) -> None:
        session.persona(t0, 0.3)
        gevent.sleep(0.02)  # heard before the first turn (an unheard one cannot be waited for)

    session, metrics, t0 = converse(replies(), before=greeting_under_way)
    assert session.said[0].start >= session.spoken[0][1]
    assert_never_over_the_persona(session)
    assert errors(metrics) == {}


def test_fake_an_utterance_during_the_rep_speech_is_not_the_reply():
    """The persona says something while the rep still speaks (a greeting's tail, a backchannel);
    the reply proper comes after the rep's speech ends, and the next turn waits for it."""

    def script(session: FakeSession, index: int, utterance: FakeUtterance) -> None:
        if index == 0:
            session.persona(utterance.start + 0.05, 0.1)  # during the rep's speech
        session.persona(utterance.start + SPEECH[1] + 0.15, 0.3)

    session, metrics, _ = converse(script)
    first_reply = session.spoken[1]
    assert session.said[1].start >= first_reply[1]
    assert_never_over_the_persona(session)
    assert errors(metrics) == {} and metrics.timing("persona_response").count == 2


def test_fake_waits_when_the_persona_speaks_again_during_think_time():
    def script(session: FakeSession, index: int, utterance: FakeUtterance) -> None:
        reply_at = utterance.start + SPEECH[1] + 0.1
        session.persona(reply_at, 0.2)
        if index == 0:
            session.persona(reply_at + 0.3, 0.3)  # a second thought, 0.1 s into the rep's think time

    session, metrics, _ = converse(script, think=0.2)
    assert session.said[1].start >= session.spoken[1][1]
    assert_never_over_the_persona(session)


def test_fake_barge_in_cuts_into_the_reply():
    session, metrics, _ = converse(replies(seconds=0.5), barge_in=0.15)
    reply_start, reply_end = session.spoken[0]
    assert reply_start + 0.15 <= session.said[1].start < min(reply_end, reply_start + 0.3)
    assert_never_over_the_persona(session, allowed=(1,))


def test_fake_no_reply_is_counted_and_the_call_goes_on():
    def script(session: FakeSession, index: int, utterance: FakeUtterance) -> None:
        if index == 1:
            session.persona(utterance.start + SPEECH[1] + 0.1, 0.2)  # only the second turn is answered

    session, metrics, _ = converse(script, reply_timeout=0.3)
    assert errors(metrics) == {ErrorCode.NO_REPLY.value: 1}
    assert session.said[1].start - session.said[0].end == pytest.approx(0.3, abs=0.1)
    assert len(session.spoken) == 1


def test_persona_greets_is_off_unless_declared():
    """A scenario that does not say ``persona_greets`` has it off (the default)."""
    quick = load_scenario(ROOT / "scenarios" / "smoke" / "quick-discovery.yaml", FMT)
    assert quick.persona_greets is False


def test_persona_greets_in_the_scenario_file(tmp_path):
    speech = f"{AUDIO}/cold-call-discovery/03-discovery.wav"
    base = f"name: g\ndrill: callback-discovery\nturns:\n  - audio: {speech}\n    barge_in: 0.5\n"
    path = tmp_path / "g.yaml"
    path.write_text(base + "persona_greets: true\n")  # a first-turn barge-in cuts into the greeting
    assert load_scenario(path, FMT).turns[0].barge_in == 0.5
    path.write_text(base)
    with pytest.raises(ScenarioError, match=r"turns\[0\]\.barge_in: not allowed on the first turn"):
        load_scenario(path, FMT)
    path.write_text(base + "persona_greets: sometimes\n")
    with pytest.raises(ScenarioError, match="persona_greets: expected boolean, got string 'sometimes'"):
        load_scenario(path, FMT)


def test_greeting_drills_option():
    default = SimConfig.from_args([])
    assert default.greeting_drills == DEFAULT_GREETING_DRILLS == {"callback-discovery": 1.5}
    assert (default.greeting_for("callback-discovery"), default.greeting_for("ma-full-sale")) == (1.5, 0.0)
    config = SimConfig.from_args(["--greeting", "2", "--greeting-drills", "ma-full-sale=0.5, objection-handling=0"])
    assert config.greeting_drills == {"ma-full-sale": 0.5, "objection-handling": 0.0}
    assert [config.greeting_for(d) for d in ("ma-full-sale", "objection-handling", "callback-discovery")] == [
        0.5,
        0.0,
        2.0,
    ]
    assert SimConfig.from_args(["--greeting-drills", ""]).greeting_drills == {}
    assert SimConfig.from_args(["--any-drill", "--greeting-drills", "any=1"]).greeting_for("any") == 1.0
    assert SimConfig.from_args(["--drills", "a=Ann"]).greeting_drills == DEFAULT_GREETING_DRILLS  # left alone
    for bad in ("ma-full-sale", "ma-full-sale=", "=1", "ma-full-sale=-1", "ma-full-sale=soon", "nope=1"):
        with pytest.raises(SystemExit):
            SimConfig.from_args(["--greeting-drills", bad])
