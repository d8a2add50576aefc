"""CI gates: the k6-style syntax, what each gate observes, the verdict, the reports, and real Locust
runs whose exit code is the verdict."""

import json
import subprocess
import textwrap
import time
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from support.locust_run import LOCUST, ROOT, gated_run, locust_env, run_locust

from athos_load.gates import GatesError, load_gates
from athos_load.metrics import Metrics, Outcome, ScoreOutcome, Timing
from athos_load.report import junit_xml, markdown
from athos_load.verdict import ExitCode, verdict


def gates_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gates.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_the_shipped_release_gate_loads():
    gates = load_gates(ROOT / "gates" / "release.yaml")
    assert {g.name for g in gates} >= {"connect_ready", "errors", "scores_missing", "call_setup", "audio_send_lag"}
    abort = [g for g in gates if g.abort_on_fail]
    assert abort and abort[0].delay_abort_eval == 60.0


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ('connect_ready: ["p(95) < 1.5s"]\nconect_ready: ["p(95) < 1s"]\n', 2, "unknown metric 'conect_ready'"),
        ('connect_ready:\n  - "p(95) < 1.5s"\n  - "p95 < 1s"\n', 3, "expected AGGREGATE OP VALUE"),
        ('connect_ready: ["p(95) < 1500"]\n', 1, "give the unit (ms, s or m)"),
        ('errors: ["rate < 1%"]\n', 1, "expected AGGREGATE OP VALUE"),
        ('errors: ["count < 3s"]\n', 1, "count takes no unit"),
        ('errors: ["p(95) < 3"]\n', 1, "errors takes count, rate"),
        ('errors{scenario:x}: ["count == 0"]\n', 1, "cannot filter by 'scenario' (errors takes {code:…})"),
        ('errors{code:nope}: ["count == 0"]\n', 1, "unknown error code 'nope'"),
        (
            'audio_send_lag{scenario:x}: ["p(99) < 20ms"]\n',
            1,
            "cannot filter by 'scenario' (audio_send_lag takes no filter)",
        ),
        ('end_to_score:\n  - threshold: "p(99) < 90s"\n    abort_on_fail: yes\n', 2, "abort_on_fail: expected true"),
        ('end_to_score:\n  - threshold: "p(99) < 90s"\n    delay_abort_eval: soon\n', 2, "not a duration"),
    ],
)
def test_a_mistake_names_the_file_and_line(tmp_path, text, line, message):
    path = gates_file(tmp_path, text)
    with pytest.raises(GatesError) as caught:
        load_gates(path)
    assert str(caught.value).startswith(f"{path}:{line}: ") and message in str(caught.value)


def recorded() -> Metrics:
    m = Metrics()
    m.declare(["fast", "slow"])
    for i in range(100):
        m.timings[Timing.CONNECT_READY].observe(0.1 + i * 0.001, scenario="fast")  # 0.100 … 0.199
        m.timings[Timing.CONNECT_READY].observe(2.0, scenario="slow")
    for scenario in ("fast", "slow"):
        for _ in range(10):
            m.call_started(scenario)
        for _ in range(8):
            m.call_finished(scenario, Outcome.COMPLETED, 60.0)
        for _ in range(2):
            m.call_finished(scenario, Outcome.FAILED)
            m.setup_failed.inc(scenario=scenario)
        for _ in range(7):
            m.score_settled(scenario, ScoreOutcome.SCORED)
        m.score_settled(scenario, ScoreOutcome.MISSING)
    m.error("no_reply")
    m.reconnect("fast")
    return m


@pytest.mark.parametrize(
    ("gate", "observed", "passed"),
    [
        ("connect_ready: ['p(95) < 1.5s']", 2.0, False),
        ("connect_ready{scenario:fast}: ['p(95) < 1.5s']", 0.19405, True),
        ("connect_ready{scenario:fast}: ['med <= 150ms']", 0.1495, True),
        ("connect_ready{scenario:fast}: ['avg > 0.2s']", 0.1495, False),
        ("connect_ready: ['max == 2s', 'count == 200']", 2.0, True),
        ("errors: ['rate < 0.01']", 1 / 20, False),
        ("errors{code:no_reply}: ['count == 1']", 1.0, True),
        ("scores_missing{scenario:slow}: ['rate < 0.2']", 1 / 8, True),
        ("call_setup: ['rate >= 0.9']", 200 / 204, True),
        ("reconnects_per_session_minute: ['value < 0.05']", 1 / 16, False),
    ],
)
def test_each_gate_observes_the_tools_own_numbers(tmp_path, gate, observed, passed):
    results = [g.evaluate(recorded()) for g in load_gates(gates_file(tmp_path, gate))]
    assert results[0].observed == pytest.approx(observed, rel=0.002)
    assert all(r.passed is passed for r in results)


def test_a_percentile_needs_enough_samples_to_judge(tmp_path):
    m = Metrics()
    for _ in range(99):
        m.timings[Timing.PERSONA_RESPONSE].observe(0.5, scenario="a")
    p99, p95 = load_gates(gates_file(tmp_path, "persona_response: ['p(99) < 1s', 'p(95) < 1s']"))
    assert p99.min_samples == 100 and p99.evaluate(m).passed is None  # 99 samples cannot say much of a p99
    assert p95.min_samples == 20 and p95.evaluate(m).passed is True


def summary_of(m: Metrics, **extra) -> dict:
    return m.summary() | {"saturated_seconds": 0.0} | extra


def test_the_verdict_is_invalid_before_it_is_failed(tmp_path):
    m = recorded()
    failing = [g.evaluate(m) for g in load_gates(gates_file(tmp_path, "connect_ready: ['p(95) < 1s']"))]
    assert verdict(failing, summary_of(m), duration=60, frame_seconds=0.02)["status"] == "failed"
    saturated = verdict(failing, summary_of(m, saturated_seconds=7), duration=60, frame_seconds=0.02)
    assert saturated["status"] == "invalid" and "saturated for 7 s of 60 s" in saturated["reasons"][0]
    m.audio_send_lags([0.05] * 100)
    lagging = verdict([], summary_of(m), duration=60, frame_seconds=0.02)
    assert lagging["status"] == "invalid" and "exceeded one frame" in lagging["reasons"][0]
    idle = verdict([], summary_of(Metrics()), duration=60, frame_seconds=0.02)
    assert idle == {"status": "invalid", "reasons": ["no call completed"]}


def test_junit_and_markdown_name_the_failing_gate_and_its_value(tmp_path):
    m = recorded()
    results = [g.evaluate(m) for g in load_gates(gates_file(tmp_path, "connect_ready: ['p(95) < 1s', 'min < 1s']"))]
    summary = summary_of(m)
    summary["verdict"] = verdict(results, summary, duration=60, frame_seconds=0.02)
    summary["gates"] = [r.to_dict() for r in results]
    suite = ET.fromstring(junit_xml(summary))
    assert suite.get("tests") == "3" and suite.get("failures") == "1" and suite.get("errors") == "0"
    failure = suite.find("testcase/failure")
    assert "connect_ready p(95) < 1s failed: observed 2.000s" in failure.get("message")
    text = markdown(summary)
    assert text.startswith("## athos-load: ❌ failed")
    assert "| `connect_ready` | `p(95) < 1s` | 2.000s | 200 | ❌ fail |" in text


# -- real runs ---------------------------------------------------------------------------------------


def test_generous_gates_pass_and_decide_the_exit_code(smoke_run):
    tmp_path, result, summary = smoke_run  # its gates: conftest.GENEROUS_GATES
    assert result.returncode == ExitCode.PASSED, result.stderr[-3000:]
    assert summary["verdict"] == {"status": "passed", "reasons": []}
    assert [g["passed"] for g in summary["gates"]] == [True] * 5
    assert summary["gates"][0]["samples"] == summary["connect_ready"]["count"]
    assert ET.parse(tmp_path / "junit.xml").getroot().get("failures") == "0"
    assert (tmp_path / "step-summary.md").read_text() == (tmp_path / "summary.md").read_text()
    assert "athos-load verdict: passed" in result.stdout


def test_a_slowed_platform_fails_its_gate_with_the_observed_value(slowed_run):
    tmp_path, result, summary = slowed_run  # its gates: conftest.SLOWED_GATES
    assert result.returncode == ExitCode.GATE_FAILED, result.stderr[-3000:]
    failed = [g for g in summary["gates"] if g["passed"] is False]
    assert [g["metric"] for g in failed] == ["persona_response"] and failed[0]["observed"] >= 1.0
    assert summary["verdict"]["status"] == "failed"
    shown = failed[0]["shown"]  # e.g. "1.914s": the 1.6 s latency, slowed further by load, plus endpointing
    assert summary["verdict"]["reasons"] == [f"persona_response: med < 1s: observed {shown}"]
    junit = ET.parse(tmp_path / "junit.xml").getroot()
    assert f"persona_response med < 1s failed: observed {shown}" in junit.find("testcase/failure").get("message")
    assert f"| `persona_response` | `med < 1s` | {shown} |" in (tmp_path / "summary.md").read_text()


def test_abort_on_fail_stops_the_run_early_and_says_so(tmp_path):
    gates = """
    connect_ready:
      - threshold: "p(50) < 1ms"
        abort_on_fail: true
        delay_abort_eval: 3s
    """
    started = time.monotonic()
    result, summary = gated_run(tmp_path, gates, "-u", "4", "-r", "4", "-t", "90s", "--athos-drain-timeout", "2")
    assert time.monotonic() - started < 45
    assert result.returncode == ExitCode.GATE_FAILED, result.stderr[-3000:]
    assert summary["verdict"]["aborted"].startswith("stopped early: connect_ready: p(50) < 1ms failed")


def test_too_few_samples_make_the_run_invalid(tmp_path):
    result, summary = gated_run(tmp_path, 'connect_ready: ["p(99) < 5s"]\n', "-u", "2", "-r", "2", "-t", "6s")
    assert result.returncode == ExitCode.INVALID, result.stderr[-3000:]
    assert summary["verdict"]["status"] == "invalid"
    assert any("at least 100 needed" in reason for reason in summary["verdict"]["reasons"])
    assert ET.parse(tmp_path / "junit.xml").getroot().find("testcase/error") is not None


def test_a_saturated_generator_makes_the_run_invalid(tmp_path):
    """A co-located user that hogs the generator's core (as a heavy plugin or a mis-sized worker
    would): the reps' timings include the generator's delay, so no gate can be trusted."""
    locustfile = tmp_path / "hog.py"
    locustfile.write_text(
        textwrap.dedent(
            """
            import time

            from locust import User, constant, task

            from athos_load.plugin.shapes import AthosShape  # noqa: F401
            from athos_load.plugin.users import RoleplayUser, install

            install()


            class SalesRep(RoleplayUser):
                pass


            class Hog(User):
                fixed_count = 1
                wait_time = constant(0.01)  # a breath between burns: starved, the run could not even stop on time

                @task
                def burn(self):
                    until = time.perf_counter() + 0.2
                    while time.perf_counter() < until:
                        pass
            """
        )
    )
    gates = gates_file(tmp_path, 'connect_ready: ["p(95) < 30s"]\n')
    result = subprocess.run(
        [
            *LOCUST[:-2], "-f", str(locustfile), "--headless", "-u", "3", "-r", "3", "-t", "10s",
            "--athos-scenario", "scenarios/smoke", "--athos-gates", str(gates), "--athos-drain-timeout", "0",
            "--athos-summary", str(tmp_path / "s.json"),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=locust_env(),
    )  # fmt: skip
    assert result.returncode == ExitCode.INVALID, result.stderr[-3000:]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["saturated_seconds"] > 2
    assert any("saturated for" in reason for reason in summary["verdict"]["reasons"])


def test_a_malformed_gates_file_stops_before_any_user(tmp_path):
    path = gates_file(tmp_path, 'connect_ready: ["p(95) < 1.5s"]\npersona_response: ["p(95) < 800"]\n')
    result = run_locust("--headless", "-u", "1", "-t", "10s", "--athos-gates", str(path), timeout=60)
    assert result.returncode == 2
    assert f"athos-load: --athos-gates {path}:2: persona_response: 'p(95) < 800': give the unit" in result.stderr
    assert "Ramping to" not in result.stderr and "built-in simulator" not in result.stdout
