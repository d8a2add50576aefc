"""The ``--athos-*`` options the Locust way: command line, LOCUST_ATHOS_* variables, locust.conf, one
listing of them all, and every bad value stopped with one clear line before any user starts."""

import json
import subprocess
import sys
import textwrap

import pytest
from support.locust_run import LOCUST, ROOT, locust_env, run_locust, samples, total

from athos_load.options import OPTIONS, AthosOptions, OptionError


def parse(args: list[str], monkeypatch, env: dict[str, str] | None = None):
    """Locust's own parser (with the tool installed, as the locustfile does), as `locust` builds it."""
    import locust.argument_parser as ap

    from athos_load.plugin.users import install

    install()
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    return ap.get_parser(default_config_files=[]).parse_args(["-f", "locustfile.py", *args])


def test_command_line_beats_environment_beats_config_file(tmp_path, monkeypatch):
    conf = tmp_path / "locust.conf"
    conf.write_text("athos-scenario = from-conf\nathos-score-timeout = 50\nathos-drain-timeout = 7\n")
    env = {"LOCUST_ATHOS_SCENARIO": "from-env", "LOCUST_ATHOS_SCORE_TIMEOUT": "60"}
    ns = parse(["--config", str(conf), "--athos-scenario", "from-cli"], monkeypatch, env)
    options = AthosOptions.parse(ns)
    assert options.scenario == "from-cli"  # command line
    assert options.score_timeout == 60.0  # environment over the config file
    assert options.drain_timeout == 7.0  # config file over the default
    assert options.poll_interval == 0.0  # default


def test_every_option_has_its_environment_variable(monkeypatch):
    env = {option.env_var: "scenarios/smoke" if option.name == "scenario" else "" for option in OPTIONS}
    env = {k: v for k, v in env.items() if v}
    ns = parse([], monkeypatch, env)
    assert ns.athos_scenario == "scenarios/smoke"
    names = {option.env_var for option in OPTIONS}
    assert len(names) == len(OPTIONS) and all(name.startswith("LOCUST_ATHOS_") for name in names)


def test_web_ui_form_shows_the_per_run_options(monkeypatch):
    import locust.argument_parser as ap

    from athos_load.plugin.users import install

    install()
    monkeypatch.setattr(sys, "argv", ["locust", "-f", "locustfile.py"])
    extra = ap.ui_extra_args_dict([])
    assert {"athos_scenario", "athos_score_timeout", "athos_drain_timeout"} <= set(extra)
    assert "athos_sim_args" not in extra and "athos_api_key_env" not in extra  # not per run / not for a form
    assert extra["athos_scenario"]["default_value"] == "scenarios"


def test_athos_load_options_lists_every_option_with_default_and_variable():
    result = subprocess.run([sys.executable, "-m", "athos_load", "options"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    for option in OPTIONS:
        assert option.flag in result.stdout and option.env_var in result.stdout
        assert f"default: {option.default!r}" in result.stdout


def test_library_user_is_abstract_and_the_locustfile_runs_one_rep(tmp_path):
    mine = tmp_path / "locustfile.py"
    mine.write_text(
        textwrap.dedent(
            """
            from athos_load.plugin.users import RoleplayUser, install

            install()


            class PatientRep(RoleplayUser):
                wait_time = lambda self: 5.0
            """
        )
    )
    listed = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(mine), "--list"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert "PatientRep" in listed.stdout and "RoleplayUser" not in listed.stdout
    shipped = subprocess.run([*LOCUST, "--list"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert shipped.returncode == 0 and shipped.stdout.split() == ["Available", "Users:", "SalesRep"]


def test_environment_and_config_file_drive_a_real_run(tmp_path):
    """The README's CI recipe: options as LOCUST_ATHOS_* variables and locust.conf keys only.
    ATHOS_API_KEY is set too: the built-in simulator accepts the key the tool sends."""
    conf = tmp_path / "locust.conf"
    conf.write_text(f"athos-metrics-file = {tmp_path / 'final.prom'}\nathos-drain-timeout = 5\n")
    env = locust_env(
        LOCUST_ATHOS_SCENARIO="scenarios/smoke",
        LOCUST_ATHOS_SUMMARY=str(tmp_path / "s.json"),
        ATHOS_API_KEY="a-key-of-our-own",
    )
    result = run_locust("--config", str(conf), "--headless", "-u", "3", "-r", "3", "-t", "6s", env=env, timeout=90)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["calls"]["started"] > 0 and summary["errors"] == {}
    assert summary["token_mint"]["count"] == summary["calls"]["started"]  # the key was accepted
    prom = samples(tmp_path / "final.prom")
    for drill in ("ma-full-sale", "cold-call-discovery", "objection-handling"):  # the full drills did not run
        assert total(prom, "athos_sessions_started_total", scenario=drill) == 0
    assert total(prom, "athos_sessions_started_total") == summary["calls"]["started"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nan", "must be a finite number > 0"),
        ("-1", "must be a finite number > 0"),
        ("soon", "is not a number of seconds"),
    ],
)
def test_bad_timeouts_are_refused(text, message):
    with pytest.raises(OptionError, match=f"--athos-score-timeout: .*{message}"):
        next(o for o in OPTIONS if o.name == "score_timeout").check(text)


# Each bad option value is one line naming the option (the option checkers, in this process)...
@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("metrics_port", "70000", "--athos-metrics-port: 70000 is not within 0..65535"),
        ("ws_url", "http://x/v1/realtime", "--athos-ws-url: 'http://x/v1/realtime' is not a ws/wss URL"),
        ("sim_args", "--no-such-knob", "--athos-sim-args: unrecognized arguments: --no-such-knob"),
        ("drain_timeout", "-5", "--athos-drain-timeout: '-5': must be a finite number >= 0"),
        ("jitter_buffer_ms", "-1", "--athos-jitter-buffer-ms: -1 is not within 0..10000"),
    ],
)
def test_a_bad_option_value_names_the_option(name, text, message):
    with pytest.raises(OptionError) as caught:
        next(o for o in OPTIONS if o.name == name).check(text)
    assert str(caught.value) == message or str(caught.value).startswith(message), str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "host",
    [
        "http://127.0.0.1:8080/api/external",
        "http://127.0.0.1:8080?tenant=a",
        "http://127.0.0.1:8080#x",
        "http://user:pw@127.0.0.1:8080",
        "http://127.0.0.1:99999",
        "http://::1:8080",  # an IPv6 address in a URL goes in brackets
        "ftp://127.0.0.1",
    ],
)
def test_a_host_that_is_not_an_origin_is_refused_at_start(host):
    """The tool adds the API's paths to --host: a path or a query used to pass the start-up check
    and fail call by call."""
    from athos_load.plugin.runtime import check_host_form

    with pytest.raises(OptionError) as caught:
        check_host_form(host)
    assert str(caught.value).startswith(f"--host {host!r}: expected http(s)://HOST[:PORT]"), str(caught.value)


@pytest.mark.parametrize("host", ["http://127.0.0.1:8080", "https://platform.example/", "http://[::1]:8080"])
def test_an_origin_is_a_host(host):
    from athos_load.plugin.runtime import check_host_form

    check_host_form(host)


# ...and one of each kind, in a real Locust start-up: one line on stderr naming the option, exit
# code 2, no traceback, no user started (a Locust start-up each: they run at once).
BAD_INPUTS = [
    (["--athos-shape", "steps", "--athos-shape-params", "step_seconds=0"], "step_seconds='0' must be"),
    (["--athos-webhook-listen", "localhost"], "--athos-webhook-listen: 'localhost': expected HOST:PORT"),
    (["--athos-webhook-listen", "203.0.113.7:0"], "--athos-webhook-listen 203.0.113.7:0: cannot listen"),
    (["--athos-sim-args", "--max-calls lots"], "--athos-sim-args: argument --max-calls"),
    (["--athos-summary", "/proc/athos/summary.json"], "--athos-summary /proc/athos/summary.json: cannot write"),
    (["--athos-score-timeout", "nan"], "--athos-score-timeout: 'nan': must be a finite number > 0"),
    (["--athos-sample-rate", "11025"], "--athos-sample-rate/--athos-frame-ms: sampleRate 11025"),
    (["--athos-shape", "wave"], "--athos-shape: 'wave' is not one of '', 'ramp'"),
    (["--host", "not a url"], "--host 'not a url': expected http(s)://HOST[:PORT]"),
    (["-u", "0"], "-u/--users 0: the ramp shape needs at least 1 user"),  # it ran one, silently
    (["--host", "http://127.0.0.1:9"], "--host http://127.0.0.1:9: cannot reach the platform"),
    (["--athos-baseline", "pyproject.toml"], "--athos-baseline pyproject.toml: not JSON (line 1"),
    # a baseline is checked in full when it is loaded, not when the run's end judges it
    (
        ["--athos-baseline", "tests/data/baseline-bad-windows.json"],
        "--athos-baseline tests/data/baseline-bad-windows.json: timeline.windows[1]: expected an object, got a number",
    ),
    # any file the user names goes through one loader (tests/test_userfiles.py): a binary one too
    (
        ["--athos-gates", "scenarios/audio/ma-full-sale/05-next-step.wav"],
        "--athos-gates scenarios/audio/ma-full-sale/05-next-step.wav: not UTF-8 text (byte 0x",
    ),
]


def test_every_bad_input_is_one_clear_line_before_any_user_starts(tmp_path):
    procs = []
    for args, _ in BAD_INPUTS:  # all at once: each is a whole Locust start-up
        env = locust_env(ATHOS_API_KEY="k") if "--host" in args else locust_env()
        cmd = [*LOCUST, "--headless", "-u", "1", "-t", "30s", "--athos-scenario", "scenarios/smoke", *args]
        procs.append(
            subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    for proc, (args, message) in zip(procs, BAD_INPUTS, strict=True):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (args, err[-2000:])
        assert "Traceback" not in err, (args, err[-2000:])
        lines = [line for line in err.splitlines() if message in line]
        assert len(lines) == 1, (args, message, err[-2000:])
        # ours, or Locust's parser naming the option ("locust: error: argument --athos-…: …")
        assert lines[0].startswith("athos-load: ") or ": error: argument --athos-" in lines[0], lines[0]
        assert "Ramping to" not in err and "built-in simulator" not in out, args
