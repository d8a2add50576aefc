"""Scenario files: the shipped ones load, broken ones fail naming the file, the field and the problem."""

from __future__ import annotations

import random
import textwrap
import wave
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile
from support.calls import run_calls

from athos_load.audio import Effects, load_clip
from athos_load.metrics import Outcome, Timing
from athos_load.scenario import HangupPolicy, Scenario, ScenarioError, Turn, load_scenario, load_scenarios, pick
from athos_load.sim.config import DEFAULT_DRILLS
from athos_load.wire import AudioFormat

FMT = AudioFormat()
SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"

VALID = """\
name: test-call
drill: ma-full-sale
turns:
  - audio: audio/a.wav
  - audio: audio/b.wav
    pause_before: 0.5
  - audio: audio/a.wav
    barge_in: 0.8
  - silence: 1.0
"""


def write_wav(path: Path, seconds: float, amp: float = 0.4) -> None:
    """A tone with 0.2 s of silence either side: enough energy to count as speech."""
    rate = 16000
    t = np.arange(round(seconds * rate)) / rate
    pad = np.zeros(rate // 5)
    x = np.concatenate([pad, amp * np.sin(2 * np.pi * 220 * t), pad])
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.rint(x * 32767).astype("<i2").tobytes())


@pytest.fixture
def scenario_dir(tmp_path: Path) -> Path:
    write_wav(tmp_path / "audio" / "a.wav", 1.0)
    write_wav(tmp_path / "audio" / "b.wav", 0.6)
    write_wav(tmp_path / "audio" / "quiet.wav", 1.0, amp=0.0)
    (tmp_path / "audio" / "text.wav").write_text("RIFF? no")
    return tmp_path


def write(directory: Path, text: str, name: str = "s.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


# -- the shipped scenarios -------------------------------------------------------------------------


def test_shipped_scenarios_load_and_validate():
    scenarios = load_scenarios(SCENARIOS, FMT)
    names = {s.name for s in scenarios}
    assert {"ma-full-sale", "cold-call-discovery", "objection-handling"} <= names
    for s in scenarios:
        assert s.drill in DEFAULT_DRILLS, f"{s.name}: drill {s.drill!r} unknown to the simulator"
        assert 3 <= len(s.turns) <= 6
        for turn in s.turns:
            assert turn.clip.frames and all(len(f) == FMT.frame_bytes for f in turn.clip.frames)
            if not turn.silent:
                assert 2.0 <= turn.clip.speech_end - turn.clip.speech_start <= 6.0


def test_shipped_scenarios_load_in_another_wire_format():
    fmt = AudioFormat(sample_rate=8000)
    scenario = load_scenario(SCENARIOS / "objection-handling.yaml", fmt)
    assert all(len(f) == fmt.frame_bytes for t in scenario.turns for f in t.clip.frames)


# -- loading ---------------------------------------------------------------------------------------


def test_a_valid_scenario_with_defaults(scenario_dir):
    s = load_scenario(write(scenario_dir, VALID), FMT)
    assert (s.name, s.drill, s.weight, s.description) == ("test-call", "ma-full-sale", 1.0, "")
    assert s.think_time == (0.3, 1.2) and s.hangup is HangupPolicy.AFTER_LAST_REPLY
    assert (s.max_call_seconds, s.reply_timeout) == (300.0, 15.0)
    a, b, a_again, quiet = s.turns
    assert a.source == "audio/a.wav" and a.barge_in is None and a.pause_before == 0.0 and not a.silent
    assert b.pause_before == 0.5 and a_again.barge_in == 0.8
    assert a_again.clip is a.clip  # one copy of the audio, however often it is used
    assert quiet.silent and quiet.source == "silence" and quiet.clip.duration == pytest.approx(1.0)
    assert a.clip.speech_start == pytest.approx(0.2, abs=0.02)
    assert a.clip is load_clip(scenario_dir / "audio" / "a.wav", FMT)


def test_all_fields(scenario_dir):
    path = write(
        scenario_dir,
        """\
        name: full
        drill: cold-call-discovery
        weight: 2.5
        description: every field
        think_time: 0.4
        turns:
          - audio: audio/a.wav
        hangup: persona_closes
        max_call_seconds: 60
        reply_timeout: 5
        """,
    )
    s = load_scenario(path, FMT)
    assert s.weight == 2.5 and s.think_time == (0.4, 0.4) and s.hangup is HangupPolicy.PERSONA_CLOSES
    assert (s.max_call_seconds, s.reply_timeout, s.path) == (60.0, 5.0, path)
    assert s.think(random.Random(1)) == 0.4


def test_noise_and_gain_per_scenario_and_per_turn(scenario_dir):
    path = write(
        scenario_dir,
        """\
        name: noisy
        drill: ma-full-sale
        noise: {snr_db: 20}
        gain_db: -3
        turns:
          - audio: audio/a.wav
          - audio: audio/a.wav
            noise: {snr_db: 5.5}
          - audio: audio/b.wav
            noise: false
            gain_db: 0
          - silence: 1.0
          - audio: audio/b.wav
            gain_db: 6
        """,
    )
    default, noisier, clean, quiet, louder = load_scenario(path, FMT).turns
    assert default.effects == Effects(snr_db=20, gain_db=-3) and noisier.effects == Effects(snr_db=5.5, gain_db=-3)
    assert clean.effects == Effects() and clean.clip is load_clip(scenario_dir / "audio" / "b.wav", FMT)
    assert quiet.effects == Effects() and quiet.silent
    assert louder.effects == Effects(snr_db=20, gain_db=6)
    a = scenario_dir / "audio" / "a.wav"
    assert default.clip is load_clip(a, FMT, Effects(snr_db=20, gain_db=-3))  # cached: one copy per setting
    assert default.clip.speech == noisier.clip.speech == load_clip(a, FMT).speech
    assert noisier.clip.frames != default.clip.frames


def test_load_a_directory_a_file_or_a_list(scenario_dir):
    one = write(scenario_dir, VALID.replace("test-call", "one"), "one.yaml")
    two = write(scenario_dir, VALID.replace("test-call", "two"), "two.yml")
    assert [s.name for s in load_scenarios(scenario_dir, FMT)] == ["one", "two"]
    assert [s.name for s in load_scenarios(str(one), FMT)] == ["one"]
    assert [s.name for s in load_scenarios([two, one, one], FMT)] == ["two", "one"]


def test_names_are_unique_across_files(scenario_dir):
    write(scenario_dir, VALID, "a.yaml")
    write(scenario_dir, VALID, "b.yaml")
    with pytest.raises(ScenarioError, match=r"b\.yaml: name: 'test-call' is already used by .*a\.yaml"):
        load_scenarios(scenario_dir, FMT)


def test_an_empty_directory_or_missing_file(tmp_path):
    with pytest.raises(ScenarioError, match="no \\*.yaml scenario files"):
        load_scenarios(tmp_path, FMT)
    with pytest.raises(ScenarioError, match=r"gone\.yaml: file not found"):
        load_scenarios(tmp_path / "gone.yaml", FMT)


def test_pick_follows_the_weights(scenario_dir):
    write(scenario_dir, VALID.replace("test-call", "heavy") + "weight: 3\n", "heavy.yaml")
    write(scenario_dir, VALID.replace("test-call", "light"), "light.yaml")
    scenarios = load_scenarios(scenario_dir, FMT)
    rng = random.Random(7)
    counts = Counter(pick(scenarios, rng).name for _ in range(4000))
    assert counts["heavy"] / 4000 == pytest.approx(0.75, abs=0.03)
    with pytest.raises(ValueError):
        pick([], rng)


# -- broken scenarios ------------------------------------------------------------------------------

BROKEN = [
    ("missing audio", VALID.replace("audio/b.wav", "audio/x.wav"), "turns[1].audio: file not found: audio/x.wav"),
    (
        "not audio",
        VALID.replace("audio/b.wav", "audio/text.wav"),
        "turns[1].audio: not an audio file (expected WAV, FLAC, OGG or MP3): audio/text.wav",
    ),
    ("no speech", VALID.replace("audio/b.wav", "audio/quiet.wav"), "turns[1].audio: no speech found in audio/quiet"),
    ("unknown field", VALID + "volume: 11\n", "volume: unknown field (allowed: name, drill"),
    ("unknown turn field", VALID.replace("pause_before", "pause"), "turns[1].pause: unknown field"),
    ("wrong type", VALID + "weight: high\n", "weight: expected number, got string 'high'"),
    ("bool is not a number", VALID + "reply_timeout: yes\n", "reply_timeout: expected number, got boolean"),
    ("zero weight", VALID + "weight: 0\n", "weight: must be greater than 0"),
    ("negative pause", VALID.replace("0.5", "-1"), "turns[1].pause_before: must be at least 0"),
    (
        "barge_in first",
        VALID.replace(
            "  - audio: audio/a.wav\n  - audio: audio/b.wav\n",
            "  - audio: audio/a.wav\n    barge_in: 1\n  - audio: audio/b.wav\n",
            1,
        ),
        "turns[0].barge_in: not allowed on the first turn",
    ),
    (
        "barge_in and pause",
        VALID.replace("barge_in: 0.8", "barge_in: 0.8\n    pause_before: 1"),
        "turns[2].barge_in: cannot be combined with pause_before",
    ),
    (
        "audio and silence",
        VALID.replace("silence: 1.0", "silence: 1.0\n    audio: audio/a.wav"),
        "turns[3]: needs exactly one of audio or silence",
    ),
    ("neither", VALID.replace("  - silence: 1.0", "  - pause_before: 1.0"), "turns[3]: needs exactly one"),
    ("missing drill", VALID.replace("drill: ma-full-sale\n", ""), "drill: required field missing"),
    ("no turns", VALID.split("turns:")[0] + "turns: []\n", "turns: needs at least 1 item"),
    ("bad hangup", VALID + "hangup: sometimes\n", "hangup: must be one of after_last_reply, immediately"),
    ("think_time order", VALID + "think_time: [2, 1]\n", "think_time: min 2.0 is greater than max 1.0"),
    ("think_time shape", VALID + "think_time: [1]\n", "think_time: expected a number or [min, max]"),
    ("bad name", VALID.replace("test-call", "Test Call"), "name: 'Test Call' must be lower-case"),
    ("short cap", VALID + "max_call_seconds: 2\n", "max_call_seconds: 2 s is shorter than the rep's own audio"),
    ("yaml syntax", VALID.replace("turns:\n", "turns: [\n"), "line "),
    ("duplicate key", VALID + "drill: other\n", "invalid YAML: duplicate key 'drill'"),
    ("not a mapping", "- just\n- a list\n", "(document): expected a mapping of fields, got list"),
    ("empty file", "", "(document): the file is empty"),
]


# noise and gain: each mistake is one line naming the file, the turn and the field
BROKEN_EFFECTS = [
    ("noise not a mapping", "    noise: loud\n",
     "turns[1].noise: expected a mapping like {snr_db: 15}, or false for none; got string 'loud'"),
    ("noise true", "    noise: true\n",
     "turns[1].noise: true is not a setting: give {snr_db: N}, or false for no noise"),
    ("noise unknown key", "    noise: {snr_db: 15, colour: pink}\n",
     "turns[1].noise.colour: unknown field (allowed: snr_db)"),
    ("noise without snr", "    noise: {}\n", "turns[1].noise.snr_db: required field missing"),
    ("snr not a number", "    noise: {snr_db: high}\n", "turns[1].noise.snr_db: expected number, got string 'high'"),
    ("snr too high", "    noise: {snr_db: 61}\n", "turns[1].noise.snr_db: must be at most 60; got 61"),
    ("snr too low", "    noise: {snr_db: -11}\n", "turns[1].noise.snr_db: must be at least -10; got -11"),
    ("gain not a number", "    gain_db: loud\n", "turns[1].gain_db: expected number, got string 'loud'"),
    ("gain too high", "    gain_db: 21\n", "turns[1].gain_db: must be at most 20; got 21"),
    ("gain too low", "    gain_db: -61\n", "turns[1].gain_db: must be at least -60; got -61"),
    ("scenario noise false", "noise: false\n", "noise: expected a mapping like {snr_db: 15}; got boolean False"),
    ("scenario noise key", "noise: {snr: 15, snr_db: 15}\n", "noise.snr: unknown field (allowed: snr_db)"),
    ("scenario gain", "gain_db: [1]\n", "gain_db: expected number, got list [1]"),
    ("noise on silence", "  - silence: 1\n    noise: {snr_db: 15}\n", "turns[4].noise: a silent turn has no speech"),
    ("gain on silence", "  - silence: 1\n    gain_db: 3\n", "turns[4].gain_db: a silent turn has nothing to amplify"),
]  # fmt: skip


@pytest.mark.parametrize(("line", "expected"), [b[1:] for b in BROKEN_EFFECTS], ids=[b[0] for b in BROKEN_EFFECTS])
def test_bad_noise_and_gain_are_one_clear_error(scenario_dir, line, expected):
    if line.startswith("    "):  # a turn's field, on turns[1]; the others follow VALID's turns or fields
        text = VALID.replace("    pause_before: 0.5\n", "    pause_before: 0.5\n" + line)
    else:
        text = VALID + line
    path = write(scenario_dir, text, "bad.yaml")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path, FMT)
    message = str(info.value)
    assert message.startswith(f"{path}: {expected}") and "\n" not in message, message


@pytest.mark.parametrize(("text", "expected"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_broken_scenarios_name_file_field_and_problem(scenario_dir, text, expected):
    path = write(scenario_dir, text, "bad.yaml")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path, FMT)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert expected in message, message


def test_yaml_syntax_error_points_at_the_line(scenario_dir):
    path = write(scenario_dir, "name: x\ndrill: [unclosed\nturns: []\n", "bad.yaml")
    with pytest.raises(ScenarioError, match=r"bad\.yaml: line 3, column \d+: invalid YAML"):
        load_scenario(path, FMT)


def test_every_schema_problem_is_reported_at_once(scenario_dir):
    path = write(scenario_dir, VALID + "weight: high\nreply_timeout: -1\ncolour: red\n", "bad.yaml")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path, FMT)
    lines = str(info.value).splitlines()
    assert len(lines) == 3 and all(line.startswith(f"{path}: ") for line in lines)


# -- other formats in a real call ------------------------------------------------------------------


def test_flac_and_mp3_clips_play_in_a_real_call(sim_factory, tmp_path):
    """44.1 kHz FLAC and MP3 (the MP3 with noise 40 dB down and -6 dB of gain, quiet enough for the
    simulator's -40 dBFS VAD to still hear the pauses) streamed to the simulator: it hears the rep
    speak and stop in each turn, and answers both."""
    rate = 44100
    tone = 0.25 * np.sin(2 * np.pi * 440 * np.arange(int(0.6 * rate)) / rate)
    x = np.concatenate([np.zeros(rate // 5), tone, np.zeros(int(0.6 * rate))])
    soundfile.write(tmp_path / "rep.flac", x, rate)
    soundfile.write(tmp_path / "rep.mp3", x, rate)
    flac = load_clip(tmp_path / "rep.flac", FMT)
    mp3 = load_clip(tmp_path / "rep.mp3", FMT, Effects(snr_db=40, gain_db=-6))
    for clip in (flac, mp3):
        assert len(clip.speech) == 1 and clip.speech[0] == pytest.approx((0.2, 0.8), abs=FMT.frame_seconds)
    plan = Scenario(
        name="formats", drill="cold-call-discovery", turns=(Turn(flac, "rep.flac"), Turn(mp3, "rep.mp3")),
        think_time=(0.0, 0.0), reply_timeout=8.0, max_call_seconds=20.0,
    )  # fmt: skip

    calls, metrics, reports = run_calls(sim_factory(), [plan])

    assert [c.outcome for c in calls] == [Outcome.COMPLETED]
    assert [r for r in reports if r["exception"] is not None and r["name"] != "end_to_score"] == []
    assert metrics.timing(Timing.PERSONA_RESPONSE).count == 2  # the platform heard the rep finish both turns
