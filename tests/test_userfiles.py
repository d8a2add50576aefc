"""Every file the user names (gates, baseline, scenario) goes through one loader: whatever is wrong
with it is the file's own error, one line naming the file, never another exception."""

import json
import os

import pytest

from athos_load.baseline import Baseline, BaselineError
from athos_load.gates import GatesError, load_gates
from athos_load.scenario import ScenarioError, load_scenarios
from athos_load.wire import AudioFormat

LOADERS = {
    "gates": (load_gates, GatesError),
    "baseline": (Baseline.load, BaselineError),
    "scenario": (lambda path: load_scenarios(path, AudioFormat()), ScenarioError),
}

BAD_FILES = {
    "binary": (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not UTF-8 text (byte 0x89 at offset 0): a binary file?"),
    "latin-1 text": ("caf\xe9: 1\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 at offset 3)"),
    "nested past the parser": (b"[" * 50_000 + b"]" * 50_000, "nested too deeply"),
}


def _loads(kind, path):
    load, error = LOADERS[kind]
    with pytest.raises(error) as caught:
        load(path)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("kind", LOADERS)
@pytest.mark.parametrize("case", BAD_FILES)
def test_a_file_that_is_not_text_of_its_kind_is_one_line_naming_it(tmp_path, kind, case):
    content, problem = BAD_FILES[case]
    path = tmp_path / "named.file"
    path.write_bytes(content)
    message = _loads(kind, path)
    assert message.startswith(f"{path}: ") and problem in message, message


@pytest.mark.parametrize("kind", LOADERS)
def test_a_directory_or_a_missing_file_is_one_line_naming_it(tmp_path, kind):
    assert _loads(kind, tmp_path / "gone.yaml") == f"{tmp_path / 'gone.yaml'}: file not found"
    if kind != "scenario":  # a scenario directory is a mix of scenarios (test_scenario.py)
        message = _loads(kind, tmp_path)
        assert message.startswith(f"{tmp_path}: cannot read (Is a directory)"), message


@pytest.mark.parametrize("kind", LOADERS)
def test_a_path_that_is_not_utf_8_is_shown_escaped(tmp_path, kind):
    path = os.path.join(os.fsencode(tmp_path), b"caf\xe9.yaml")
    with open(path, "wb") as f:
        f.write(b"\xff")
    message = _loads(kind, os.fsdecode(path))
    assert message.startswith(f"{tmp_path}/caf\\xe9.yaml: not UTF-8 text"), message
    message.encode("utf-8")  # no lone surrogate: it can be printed and written


def test_a_yaml_syntax_error_names_the_line_in_gates_and_scenarios_alike(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("connect_ready: [\n")
    for kind in ("gates", "scenario"):
        assert _loads(kind, path).startswith(f"{path}: line 2, column 1: invalid YAML: "), kind


def _summary(windows):
    return {"timeline": {"windows": windows}, "settings": {"users": 1}}


H = {"i": [10], "c": [2], "n": 2, "s": 0.2, "lo": 0.1, "hi": 0.1}


@pytest.mark.parametrize(
    ("windows", "problem"),
    [
        ([1, 2, 3], "timeline.windows[0]: expected an object, got a number"),
        ([{"connect_ready": {"h": H}}, "w"], "timeline.windows[1]: expected an object, got a string"),
        (
            [{"connect_ready": {"count": 2}}],
            "timeline.windows[0].connect_ready: not a histogram of this tool's (missing 'h')",
        ),
        ([{"connect_ready": [1]}], "timeline.windows[0].connect_ready: not a histogram of this tool's"),
        ([{"persona_response": {"h": {**H, "n": 3}}}], "its counts add up to 2, not n = 3"),
        ([{"persona_response": {"h": {**H, "i": [10**6]}}}], "a bucket index out of range"),
        (
            [{"persona_response": {"h": {**H, "c": [2**70], "n": 2**70}}}],
            "a bucket index out of range or a negative count",
        ),
        ([{"persona_response": {"h": {**H, "c": ["2"]}}}], "must be whole numbers"),
    ],
)
def test_a_baseline_is_checked_in_full_when_it_is_loaded(tmp_path, windows, problem):
    """Before any user starts: before, a window that was not an object raised TypeError in the end
    of the run's judgement, and cost every report."""
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(_summary(windows)))
    message = _loads("baseline", path)
    assert message.startswith(f"{path}: ") and problem in message, message


def test_a_good_baseline_is_decoded_once_when_loaded(tmp_path):
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(_summary([{"start": 0, "connect_ready": {"h": H}}, {"start": 10}])))
    baseline = Baseline.load(path)
    assert [h.count for h in baseline.histograms("connect_ready")] == [2]
    assert baseline.histograms("persona_response") == [] and baseline.settings == {"users": 1}
