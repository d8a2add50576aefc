"""docs/ci.md's CI jobs as written: the locust command of the GitHub Actions and of the GitLab CI
example, run against a simulator standing in for staging. Only the host changes, the load and the
duration shrink (with one second of silence per call for the full drills, so calls end and score
in seconds), and the output directory moves into the test's own."""

import json
import re
import shlex
import subprocess
from xml.etree import ElementTree as ET

import yaml
from support.locust_run import ROOT, locust_env, silent_scenario

from athos_load.verdict import ExitCode

SHORTER = {"--host": None, "-u": "10", "-r": "10", "-t": "8s"}


def documented_commands() -> tuple[list[str], list[str]]:
    text = (ROOT / "docs" / "ci.md").read_text()
    jobs = [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", text, re.S)]
    github = next(job for job in jobs if "jobs" in job)["jobs"]["load-gate"]
    gitlab = next(job for job in jobs if "script" in job.get("load-gate", {}))["load-gate"]
    github_run = next(step["run"] for step in github["steps"] if "locust " in step.get("run", ""))
    gitlab_run = next(line for line in gitlab["script"] if line.startswith("locust "))
    assert "out/" in gitlab["artifacts"]["paths"] and gitlab["artifacts"]["reports"]["junit"] == "out/junit.xml"
    return shlex.split(github_run), shlex.split(gitlab_run)


def test_the_documented_ci_job_runs_and_writes_what_it_uploads(sim_factory, tmp_path):
    github, gitlab = documented_commands()
    assert github == gitlab  # one job, two CI systems
    sim = sim_factory()
    command = []
    for i, arg in enumerate(github):
        before = github[i - 1] if i else ""
        if before in SHORTER:
            arg = SHORTER[before] or sim.http_url
        elif arg.startswith("out/"):
            arg = str(tmp_path / arg)
        command.append(arg)
    assert command[0] == "locust"
    command += ["--athos-scenario", str(silent_scenario(tmp_path, 1.0))]  # calls that end in seconds
    # the simulator standing in for staging speaks the reference protocol, not LiveKit
    env = locust_env(
        ATHOS_API_KEY=sim.api_key, ATHOS_WEBHOOK_SECRET=sim.webhook_secret, LOCUST_ATHOS_TRANSPORT="reference"
    )
    locust = str(ROOT / ".venv" / "bin" / "locust") if (ROOT / ".venv" / "bin" / "locust").exists() else "locust"
    result = subprocess.run([locust, *command[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    # 8 s of 10 users cannot judge the release gates' p(99)s: the job fails as invalid, and says why
    assert result.returncode == ExitCode.INVALID, (result.returncode, summary["verdict"])
    assert summary["verdict"]["status"] == "invalid"
    assert all("needed to judge it" in reason for reason in summary["verdict"]["reasons"]), summary["verdict"]
    assert summary["calls"]["completed"] > 0 and summary["polling"]["delivered"] > 0  # scores polled, as documented
    suite = ET.parse(out / "junit.xml").getroot()
    assert int(suite.get("tests")) == len(summary["gates"]) + 1 and suite.get("errors") == "1"
    assert (out / "summary.md").read_text().startswith("## athos-load: ⚠️ invalid")
    assert "<svg" in (out / "report.html").read_text()
