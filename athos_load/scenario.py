"""Drills as data: one YAML file per scenario, validated and loaded with its audio at start-up.

A scenario is what one synthetic rep says in one call, turn by turn::

    name: ma-full-sale            # unique; the scenario metric label
    drill: ma-full-sale           # the drill key the session token is minted for
    weight: 3                     # relative weight when several scenarios run together (default 1)
    description: M&A advisory full sales call
    think_time: [0.3, 1.2]        # seconds, uniform, after the persona finishes before the rep speaks
    persona_greets: false         # true: the persona speaks first; the rep waits for its greeting
    noise: {snr_db: 20}           # default for every audio turn: pink background noise 20 dB below the speech
    gain_db: -3                   # default for every audio turn: level change after the noise (default 0)
    turns:
      - audio: audio/ma-full-sale/01-opening.wav   # relative to this file: WAV, FLAC, OGG or MP3
        noise: false              # this turn clean (a turn's noise and gain_db override the defaults)
      - audio: audio/ma-full-sale/02-discovery.wav
        pause_before: 1.5         # extra silence before this turn (default 0)
        text: What is prompting you to think about selling?  # its words (the transcript check's WER)
        noise: {snr_db: 10}
        gain_db: -12              # a quiet rep
      - audio: audio/ma-full-sale/03-objection.wav
        barge_in: 0.8             # start 0.8 s after the persona starts speaking, talking over it
      - silence: 2.0              # the rep stays silent this long
    hangup: after_last_reply      # after_last_reply | immediately | persona_closes
    max_call_seconds: 180         # hard cap on the call
    reply_timeout: 15             # how long the rep waits for the persona to answer a turn

How a call plays it: the first turn starts once the call is ready or, with ``persona_greets``, once
the persona's greeting has started and finished (each waited for up to ``reply_timeout``). Each
later turn waits up to ``reply_timeout`` for the persona's reply to the previous turn to start (a
persona utterance that starts after the rep's speech in that turn ended; none is ``no_reply``),
then for it to finish, then ``think_time``, then ``pause_before``. Whatever the wait, a turn never
starts while the persona speaks: it waits (up to ``reply_timeout``) for it to finish. A
``barge_in`` turn instead waits for the reply (on the first turn: the greeting) to start and cuts
in that many seconds later, talking over it. A ``silence`` turn streams silent frames (an open
microphone, no speech). ``think_time`` may also be a single number. Defaults: weight 1, think_time
[0.3, 1.2], persona_greets false, hangup after_last_reply, max_call_seconds 300, reply_timeout 15,
no noise, gain_db 0.

``noise`` and ``gain_db`` make an audio turn sound like a real call (:class:`athos_load.audio.Effects`):
pink noise at ``snr_db`` (-10..60) relative to the clip's speech, then the gain (-60..20 dB). Where
the rep stops speaking is still measured on the clean clip. A silence turn takes neither.

Checking is two passes: :data:`SCHEMA` (JSON Schema, via ``jsonschema``) for shape and types, then
the checks a schema cannot express (files exist and hold speech, barge_in placement, ranges). Every
failure is a :class:`ScenarioError` whose message reads ``FILE: FIELD: PROBLEM``.
"""

from __future__ import annotations

import enum
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from athos_load.audio import CLEAN, AudioError, Clip, Effects, load_clip, silence
from athos_load.userfiles import read_yaml, shown
from athos_load.wire import AudioFormat


class ScenarioError(ValueError):
    """A scenario file that cannot be used. The message names the file, the field and the problem."""


class HangupPolicy(enum.StrEnum):
    AFTER_LAST_REPLY = "after_last_reply"  # hang up once the persona has answered the last turn
    IMMEDIATELY = "immediately"  # hang up as soon as the last turn's audio has been sent
    PERSONA_CLOSES = "persona_closes"  # wait for the persona to end the call (max_call_seconds caps it)


# Defaults of the optional fields (a slots dataclass keeps no class-level defaults to read back).
DEFAULT_WEIGHT = 1.0
DEFAULT_THINK_TIME = (0.3, 1.2)
DEFAULT_MAX_CALL_SECONDS = 300.0
DEFAULT_REPLY_TIMEOUT = 15.0

_SECONDS = {"type": "number", "minimum": 0}
_POSITIVE = {"type": "number", "exclusiveMinimum": 0}
# From a rep 60 dB too quiet (below any voice detector) to one 20 dB hot, which clips.
_GAIN = {"type": "number", "minimum": -60, "maximum": 20}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "athos-load scenario",
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "drill", "turns"],
    "properties": {
        # a metric label value: short and tidy keeps dashboards and Prometheus sane
        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_.-]{0,63}$"},
        "drill": {"type": "string", "minLength": 1},
        "weight": _POSITIVE,
        "description": {"type": "string"},
        # a single number means a fixed think time
        "think_time": {"type": ["number", "array"], "minimum": 0, "items": _SECONDS, "minItems": 2, "maxItems": 2},
        "turns": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/turn"}},
        "hangup": {"enum": [p.value for p in HangupPolicy]},
        "max_call_seconds": _POSITIVE,
        "reply_timeout": _POSITIVE,
        "persona_greets": {
            "type": "boolean",
            "description": "The persona speaks first: before its first turn the rep waits (up to reply_timeout) "
            "for the greeting to start and finish, unless that turn is a barge_in. Default false.",
        },
        "noise": {"type": "object", "$ref": "#/$defs/noise"},
        "gain_db": _GAIN,
    },
    "$defs": {
        "turn": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "audio": {"type": "string", "minLength": 1},
                "silence": _POSITIVE,
                "pause_before": _SECONDS,
                "barge_in": _SECONDS,
                "noise": {"type": ["object", "boolean"], "$ref": "#/$defs/noise"},  # false: none on this turn
                "gain_db": _GAIN,
                "text": {
                    "type": "string",
                    "minLength": 1,
                    "description": "The words of the clip, for the transcript check's word error rate.",
                },
            },
        },
        # no "type" here: the scenario's default must be a mapping, a turn's may also be false. SNR from
        # noise 10 dB louder than the speech (past that no platform is expected to follow) to 60 dB
        # below it (inaudible).
        "noise": {
            "additionalProperties": False,
            "required": ["snr_db"],
            "properties": {"snr_db": {"type": "number", "minimum": -10, "maximum": 60}},
        },
    },
}
_VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
_MAX_REPORTED = 10  # schema problems listed in one error; the rest are counted


@dataclass(frozen=True, slots=True)
class Turn:
    """One thing the rep does: say a clip, or stay silent for a while.

    ``clip`` is never None: a ``silence`` turn is a clip of silent frames (no speech, so
    ``clip.speech_end`` is None), streamed like any other so the microphone stays open.
    """

    clip: Clip
    source: str  # the audio path as written in the YAML, or "silence"
    pause_before: float = 0.0
    barge_in: float | None = None  # seconds after the persona starts speaking; None = wait for it to finish
    effects: Effects = CLEAN  # noise and gain, already in ``clip``
    text: str | None = None  # what the rep says in it (the transcript check's reference)

    @property
    def silent(self) -> bool:
        return not self.clip.speech


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    drill: str
    turns: tuple[Turn, ...]
    weight: float = DEFAULT_WEIGHT
    description: str = ""
    think_time: tuple[float, float] = DEFAULT_THINK_TIME
    hangup: HangupPolicy = HangupPolicy.AFTER_LAST_REPLY
    max_call_seconds: float = DEFAULT_MAX_CALL_SECONDS
    reply_timeout: float = DEFAULT_REPLY_TIMEOUT
    persona_greets: bool = False  # the persona speaks first: the first turn waits for its greeting
    path: Path | None = None  # the YAML file it came from

    def think(self, rng: random.Random) -> float:
        """A think time drawn from ``think_time``."""
        return rng.uniform(*self.think_time)


def pick(scenarios: Sequence[Scenario], rng: random.Random) -> Scenario:
    """One scenario, chosen by weight."""
    if not scenarios:
        raise ValueError("no scenarios to pick from")
    return rng.choices(scenarios, weights=[s.weight for s in scenarios])[0]


def load_scenarios(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], fmt: AudioFormat
) -> list[Scenario]:
    """Load scenarios from a file, a directory (every ``*.yaml``/``*.yml`` in it) or a list of either.

    Audio is loaded and framed in ``fmt`` now, once. Names must be unique across all the files.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: dict[Path, Path] = {}  # resolved -> as given: a file named twice loads once
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted([*p.glob("*.yaml"), *p.glob("*.yml")])
            if not found:
                raise ScenarioError(f"{shown(p)}: no *.yaml scenario files in this directory")
        else:
            found = [p]
        for f in found:
            files.setdefault(f.resolve(), f)
    if not files:
        raise ScenarioError("no scenario files given")
    scenarios: list[Scenario] = []
    seen: dict[str, Path] = {}
    for file in files.values():
        scenario = load_scenario(file, fmt)
        if scenario.name in seen:
            used = shown(seen[scenario.name])
            raise ScenarioError(f"{shown(file)}: name: {scenario.name!r} is already used by {used}")
        seen[scenario.name] = file
        scenarios.append(scenario)
    return scenarios


def load_scenario(path: str | os.PathLike[str], fmt: AudioFormat) -> Scenario:
    """Load and check one scenario file; audio paths are relative to the file."""
    file = Path(path)
    doc = _read_yaml(file)
    problems = sorted(_VALIDATOR.iter_errors(doc), key=lambda e: [(isinstance(p, str), p) for p in e.absolute_path])
    if problems:
        lines = [f"{shown(file)}: {_describe(e)}" for e in problems[:_MAX_REPORTED]]
        if len(problems) > _MAX_REPORTED:
            lines.append(f"{shown(file)}: ... and {len(problems) - _MAX_REPORTED} more problems")
        raise ScenarioError("\n".join(lines))

    def fail(field: str, problem: str) -> ScenarioError:
        return ScenarioError(f"{shown(file)}: {field}: {problem}")

    think = doc.get("think_time", DEFAULT_THINK_TIME)
    think = (float(think), float(think)) if isinstance(think, (int, float)) else (float(think[0]), float(think[1]))
    if think[0] > think[1]:
        raise fail("think_time", f"min {think[0]} is greater than max {think[1]}")

    greets = bool(doc.get("persona_greets", False))
    default_noise, default_gain = doc.get("noise"), doc.get("gain_db", 0.0)
    turns: list[Turn] = []
    for i, raw in enumerate(doc["turns"]):
        where = f"turns[{i}]"
        if ("audio" in raw) == ("silence" in raw):
            raise fail(where, "needs exactly one of audio or silence")
        barge_in = raw.get("barge_in")
        if barge_in is not None:
            if i == 0 and not greets:
                raise fail(
                    f"{where}.barge_in",
                    "not allowed on the first turn: the persona has not answered yet (unless persona_greets: true)",
                )
            if "silence" in raw:
                raise fail(f"{where}.barge_in", "a silent turn cannot talk over the persona")
            if raw.get("pause_before"):
                raise fail(f"{where}.barge_in", "cannot be combined with pause_before")
        if raw.get("noise") is True:
            raise fail(f"{where}.noise", "true is not a setting: give {snr_db: N}, or false for no noise")
        effects = CLEAN
        if "silence" in raw:
            if "noise" in raw:
                raise fail(f"{where}.noise", "a silent turn has no speech to set the noise level against")
            if "gain_db" in raw:
                raise fail(f"{where}.gain_db", "a silent turn has nothing to amplify")
            if "text" in raw:
                raise fail(f"{where}.text", "a silent turn says nothing")
            clip, source = silence(raw["silence"], fmt), "silence"
        else:
            source = raw["audio"]
            noise = raw.get("noise", default_noise)
            snr = None if noise is None or noise is False else float(noise["snr_db"])
            effects = Effects(snr, float(raw.get("gain_db", default_gain)))
            try:
                clip = load_clip(file.parent / source, fmt)
                if not clip.speech:
                    raise fail(f"{where}.audio", f"no speech found in {source} (use `silence:` for a silent turn)")
                clip = load_clip(file.parent / source, fmt, effects)  # the clean clip's speech bounds, cached
            except AudioError as exc:
                raise fail(f"{where}.audio", f"{exc.problem}: {source}") from None
        pause = float(raw.get("pause_before", 0.0))
        barge = None if barge_in is None else float(barge_in)
        turns.append(Turn(clip, source, pause, barge, effects, raw.get("text")))

    max_call = float(doc.get("max_call_seconds", DEFAULT_MAX_CALL_SECONDS))
    own_audio = sum(t.clip.duration + t.pause_before for t in turns)
    if own_audio > max_call:
        raise fail("max_call_seconds", f"{max_call:g} s is shorter than the rep's own audio ({own_audio:.1f} s)")

    return Scenario(
        name=doc["name"],
        drill=doc["drill"],
        turns=tuple(turns),
        weight=float(doc.get("weight", DEFAULT_WEIGHT)),
        description=doc.get("description", ""),
        think_time=think,
        hangup=HangupPolicy(doc.get("hangup", HangupPolicy.AFTER_LAST_REPLY)),
        max_call_seconds=max_call,
        reply_timeout=float(doc.get("reply_timeout", DEFAULT_REPLY_TIMEOUT)),
        persona_greets=greets,
        path=file,
    )


# -- YAML and error wording ------------------------------------------------------------------------


def _read_yaml(file: Path) -> dict[str, Any]:
    doc = read_yaml(file, ScenarioError)
    if doc is None:
        raise ScenarioError(f"{shown(file)}: (document): the file is empty")
    if not isinstance(doc, dict):
        raise ScenarioError(f"{shown(file)}: (document): expected a mapping of fields, got {type(doc).__name__}")
    return doc


def _field(path: Iterable[str | int]) -> str:
    """``["turns", 2, "audio"]`` → ``turns[2].audio``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_YAML_TYPES = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    type(None): "null",
    list: "list",
    dict: "mapping",
}


def _describe(error: jsonschema.ValidationError) -> str:
    """One schema problem as ``FIELD: PROBLEM``, worded for a person editing YAML."""
    path = list(error.absolute_path)
    kind, value = error.validator, error.instance
    if kind == "additionalProperties":
        allowed = ", ".join(error.schema.get("properties", {}))
        extra = sorted(set(value) - set(error.schema.get("properties", {})), key=str)
        return "; ".join(f"{_field([*path, k])}: unknown field (allowed: {allowed})" for k in extra)
    if kind == "required":
        missing = [k for k in error.validator_value if k not in value]
        return "; ".join(f"{_field([*path, k])}: required field missing" for k in missing)
    field = _field(path) or "(document)"
    if kind == "type" and path and path[-1] == "noise":
        also = ", or false for none" if path[0] == "turns" else ""
        got = _YAML_TYPES.get(type(value), type(value).__name__)
        return f"{field}: expected a mapping like {{snr_db: 15}}{also}; got {got} {value!r}"
    if kind == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return f"{field}: expected {expected}, got {_YAML_TYPES.get(type(value), type(value).__name__)} {value!r}"
    if kind == "enum":
        return f"{field}: must be one of {', '.join(map(str, error.validator_value))}; got {value!r}"
    if kind == "exclusiveMinimum":
        return f"{field}: must be greater than {error.validator_value}; got {value!r}"
    if kind == "minimum":
        return f"{field}: must be at least {error.validator_value}; got {value!r}"
    if kind == "maximum":
        return f"{field}: must be at most {error.validator_value}; got {value!r}"
    if kind in ("minItems", "maxItems") and path == ["think_time"]:
        return f"think_time: expected a number or [min, max]; got {value!r}"
    if kind == "minItems":
        n = error.validator_value
        return f"{field}: needs at least {n} {'item' if n == 1 else 'items'}"
    if kind == "pattern" and path == ["name"]:
        return f"name: {value!r} must be lower-case letters, digits, '-', '_' or '.', at most 64 characters"
    return f"{field}: {error.message}"
