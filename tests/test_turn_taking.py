"""Turn-taking: the rep never starts a turn while the persona speaks (its greeting or a reply)
unless the turn says ``barge_in``, and each turn waits for the reply to the one before it.

Here: many real calls against the simulator with a greeting, judged by its truth log (what the
platform heard, on its own clock). The turn logic alone, on a virtual clock, is in
tests/unit/test_turn_logic.py.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from support.calls import run_calls

from athos_load.metrics import Outcome
from athos_load.scenario import Scenario, ScenarioError, load_scenario
from athos_load.sim.config import DEFAULT_GREETING_DRILLS, SimConfig
from athos_load.wire import AudioFormat, ErrorCode

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


# -- the scenario's side (the turn logic alone: tests/unit/test_turn_logic.py) -------------------


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
