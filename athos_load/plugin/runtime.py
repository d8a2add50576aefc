"""The process-wide side of a Locust run: what every user shares, and the run's start and end.

One :class:`Runtime` per Locust process, built on Locust's ``init`` event and kept on the
environment as ``environment.athos``. What a process holds depends on its role:

* every process: the metrics, the health monitor, and the :class:`RunPlan` of the current test
  (options, scenarios, call settings), rebuilt at every ``test_start`` from the options as they
  are then: a run started from the web UI's form, or a worker given its master's options in the
  spawn message, runs with those;
* a local runner or a master: every option and file checked, and the target checked, before any
  user starts (one line and exit code 2 for a mistake); the built-in simulator when no ``--host``
  is given, the webhook receiver (or the poller), ``/metrics``, the JSON summary;
* a process that runs users (local or worker): the audio pacer and the score drain.

At ``test_stop`` the scores of calls that already ended are drained, then the summary is written
and, in a headless run, the table printed. On a master this waits for every worker's final delta
(see :mod:`athos_load.plugin.distributed`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import gevent
from locust.runners import STATE_RUNNING, STATE_SPAWNING, MasterRunner, WorkerRunner
from locust.stats import CSV_STATS_INTERVAL_SEC
from prometheus_client import start_http_server, write_to_textfile

from ..api import ApiError, AthosApi, RepPool, ScoreBoard, ScorePoller, WebhookReceiver
from ..baseline import Baseline, BaselineError
from ..call import CallSettings, ScoreDrain
from ..gates import Gate, GateResult, GatesError, Regression, default_regressions, load_gates
from ..health import HealthMonitor
from ..livekit import LiveKitTransport
from ..metrics import Metrics, Outcome, TallyCollector, Timing
from ..options import AthosOptions, OptionError
from ..pacer import AudioPacer
from ..report import format_table, junit_xml, markdown
from ..report_html import html_report
from ..scenario import Scenario, ScenarioError, load_scenarios
from ..session import RoleplaySession
from ..sim.config import SIM_API_KEY
from ..simproc import SimulatorProcess, redact
from ..trends import changes, drifts
from ..userfiles import shown
from ..verdict import ExitCode, verdict
from ..wire import AudioFormat, ErrorCode, authority
from .bookkeeping import TRIM_EVERY, footprint, trim
from .distributed import MasterHub, WorkerLink
from .webui import OverTime, extended_stats, install_tab

logger = logging.getLogger(__name__)

PREFLIGHT_TIMEOUT = 5.0  # seconds the start-up check of --host may take
SETUP_FAILURES = 5  # this many failed calls and none ready yet: the target is wrong, stop the run
SETUP_CODES = frozenset(
    {
        ErrorCode.INVALID_API_KEY,
        ErrorCode.API_KEY_REVOKED,
        ErrorCode.IP_NOT_ALLOWED,
        ErrorCode.TENANT_INACTIVE,
        ErrorCode.TENANT_QUOTA_EXCEEDED,
        ErrorCode.DRILL_NOT_FOUND,
        ErrorCode.CONNECT_FAILED,
        ErrorCode.CONNECT_TIMEOUT,
        ErrorCode.REQUEST_TIMEOUT,
        ErrorCode.UNKNOWN_DRILL,
        ErrorCode.BAD_AUDIO_FORMAT,
        ErrorCode.REMOTE_PROTOCOL,
    }
)


@dataclass(frozen=True)
class RunPlan:
    """What the calls of one test share, from the options in force when it started."""

    options: AthosOptions
    scenarios: list[Scenario]
    settings: CallSettings | None  # None on a master, which runs no users
    gates: list[Gate | Regression]  # judged where the whole run's numbers are: a local runner or the master


class Runtime:
    """Everything the users of one Locust process share (``environment.athos``)."""

    def __init__(self, environment: Any, runner: Any) -> None:
        self.environment = environment
        self.runner = runner
        self.is_master = isinstance(runner, MasterRunner)
        self.is_worker = isinstance(runner, WorkerRunner)
        self.options = AthosOptions.parse(environment.parsed_options)
        self.api_key = os.environ.get(self.options.api_key_env, "")
        self.metrics = Metrics(source="master" if self.is_master else "local")
        self._over_time = OverTime(self.metrics)  # the live tabs' windows, drift and change-points
        self.health = HealthMonitor(
            self.metrics, users=lambda: runner.user_count if runner else 0, running=self._running
        ).start()
        self.board = ScoreBoard()
        self.reps = RepPool()  # the run's load-test reps, registered once and shared by every user
        self.drain = ScoreDrain()
        self.pacer = AudioPacer(on_lags=self.metrics.audio_send_lags)
        self.plan: RunPlan | None = None
        self.exit_code: ExitCode | None = None
        self.receiver: WebhookReceiver | None = None
        self.poller: ScorePoller | None = None
        self.simulator: SimulatorProcess | None = None
        self.hub: MasterHub | None = None
        self.link: WorkerLink | None = None
        self._scenario_cache: dict[tuple[Path, AudioFormat], list[Scenario]] = {}
        self._watch: gevent.Greenlet | None = None
        self._bookkeeping: gevent.Greenlet | None = None
        self._gates_watch: gevent.Greenlet | None = None
        self._started_at: float | None = None
        self._aborted_by: GateResult | None = None
        environment.athos = self
        if self.is_worker:
            # Scenarios and settings come with the master's options, at test_start. The API key
            # does not travel: each worker reads its own (the built-in simulator's when unset).
            self.api_key = self.api_key or SIM_API_KEY
            self.link = WorkerLink(runner, self.metrics, self.board)
            return
        # Everything a user can get wrong is checked before anything starts.
        self._check_outputs(self.options)
        self._check_shape(self.options)
        self._gates(self.options)
        if environment.host:
            self._check_host(environment.host)
        self.metrics.declare([s.name for s in self._scenarios(self.options)])
        try:
            self._start_scoring_and_target()
            if self.options.metrics_port:
                self._serve_metrics()
        except BaseException:
            self.on_quitting()
            raise
        if self.is_master:
            self.hub = MasterHub(runner, self.metrics, self.board, score_timeout=self.options.score_timeout)
        if runner is not None:
            self._bookkeeping = gevent.spawn(self._keep_bookkeeping_bounded)
        if getattr(environment, "web_ui", None) is not None:
            install_tab(environment, self._tab_rows)

    def _tab_rows(self) -> list[dict[str, Any]]:
        gates = self.plan.gates if self.plan is not None else []
        return extended_stats(self.metrics, gates, self.options.audio.frame_seconds, self._over_time)

    # -- checks before the run -------------------------------------------------------------------

    def _scenarios(self, options: AthosOptions) -> list[Scenario]:
        """The scenarios of ``options`` (loaded, validated and framed once per path and format)."""
        key = (self._scenario_path(options.scenario).resolve(), options.audio)
        if key not in self._scenario_cache:
            self._scenario_cache[key] = load_scenarios(key[0], options.audio)
        return self._scenario_cache[key]

    def _scenario_path(self, scenario: str) -> Path:
        """``--athos-scenario`` as given, or beside the locustfile when it is not in the cwd."""
        path = Path(scenario)
        if not path.exists() and not path.is_absolute():
            for locustfile in (getattr(self.environment.parsed_options, "locustfile", "") or "").split(","):
                candidate = Path(locustfile).resolve().parent / path
                if locustfile and candidate.exists():
                    return candidate
        return path

    @staticmethod
    def _gates(options: AthosOptions) -> list[Gate | Regression]:
        """The gates file's gates, and its regression limits bound to --athos-baseline."""
        try:
            gates = load_gates(options.gates) if options.gates else []
        except GatesError as exc:
            raise OptionError(f"--athos-gates {exc}") from None
        plain = [g for g in gates if not isinstance(g, Regression)]
        regressions = [g for g in gates if isinstance(g, Regression)]
        if not options.baseline:
            if regressions:
                logger.warning("athos-load: the gates file's regression limits need --athos-baseline; ignored")
            return plain
        try:
            baseline = Baseline.load(options.baseline)
        except BaselineError as exc:
            raise OptionError(f"--athos-baseline {exc}") from None
        return plain + [dataclasses.replace(r, baseline=baseline) for r in regressions or default_regressions()]

    @staticmethod
    def _check_outputs(options: AthosOptions) -> None:
        """A summary that cannot be written would be lost after the whole run: find out now."""
        outputs = (
            ("--athos-summary", options.summary),
            ("--athos-metrics-file", options.metrics_file),
            ("--athos-junit", options.junit),
            ("--athos-markdown", options.markdown),
            ("--athos-report", options.report),
        )
        for flag, value in outputs:
            if not value:
                continue
            path = Path(value)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                existed = path.exists()
                with path.open("a"):
                    pass
                if not existed:
                    path.unlink()
            except OSError as exc:
                raise OptionError(f"{flag} {shown(value)}: cannot write there ({exc.strerror or exc})") from None

    def _check_shape(self, options: AthosOptions) -> None:
        from .shapes import check_load, parse_params  # the shape module owns its parameters and -u/-r

        parsed = self.environment.parsed_options
        try:
            parse_params(options.shape or "ramp", options.shape_params)
            check_load(options.shape or "ramp", getattr(parsed, "num_users", None), getattr(parsed, "spawn_rate", None))
        except ValueError as exc:
            raise OptionError(str(exc)) from None

    def _check_host(self, host: str) -> None:
        """A garbage or unreachable ``--host`` or a refused API key: one line now, not a failed run."""
        check_host_form(host)
        if not self.api_key:
            raise OptionError(f"--host {host}: set the platform's API key in ${self.options.api_key_env}")
        api = AthosApi(host, self.api_key, timeout=PREFLIGHT_TIMEOUT)
        try:
            api.list_calls(since=time.time() - 60.0, limit=1)
        except ApiError as exc:
            if exc.code in (ErrorCode.INVALID_API_KEY, ErrorCode.API_KEY_REVOKED):
                raise OptionError(
                    f"--host {host}: the platform refused the API key in ${self.options.api_key_env} "
                    f"({exc.status} {exc.code})"
                ) from None
            if exc.code in (ErrorCode.CONNECT_FAILED, ErrorCode.CONNECT_TIMEOUT, ErrorCode.REQUEST_TIMEOUT):
                raise OptionError(f"--host {host}: cannot reach the platform ({_reason(exc.message)})") from None
            logger.info("--host %s answered the start-up check with %s; going on", host, exc.code)
        except Exception as exc:  # noqa: BLE001 - it answered, if strangely: the calls will tell
            logger.info("--host %s answered the start-up check oddly (%s); going on", host, exc)
        finally:
            api.close()

    # -- what a local runner or master starts ------------------------------------------------------

    def _start_scoring_and_target(self) -> None:
        """The webhook receiver (or poller) and, with no --host, the simulator that posts to it."""
        opts = self.options
        builtin = not self.environment.host
        address = opts.webhook_address
        secret = os.environ.get(opts.webhook_secret_env, "")
        if builtin:
            # The built-in simulator signs with a secret of this run's own, handed over through its
            # environment: with a public default anyone who reached the receiver could forge scores.
            secret = secret or secrets.token_hex(32)
            self.api_key = self.api_key or SIM_API_KEY  # the simulator's own, on loopback only
        elif address is not None and not secret:
            raise OptionError(
                f"--host {self.environment.host}: set the secret the platform signs call.scored with in "
                f"${opts.webhook_secret_env}, or use --athos-webhook-listen off to poll for scores"
            )
        if address is not None:
            try:
                self.receiver = WebhookReceiver(
                    self.board, secret, host=address[0], port=address[1], public_url=opts.webhook_url or None
                ).start()
            except OSError as exc:
                raise OptionError(
                    f"--athos-webhook-listen {opts.webhook_listen}: cannot listen ({exc.strerror})"
                ) from None
            receiver = self.receiver
            self.metrics.registry.register(
                TallyCollector(
                    "athos_webhooks",
                    "call.scored deliveries by outcome (accepted, duplicate, or why one was refused)",
                    "outcome",
                    lambda: receiver.counts,
                )
            )
            print(f"athos-load: call.scored webhooks are received at {self.receiver.url}", flush=True)
            if not builtin and not opts.webhook_url and address[0] in ("127.0.0.1", "localhost", "::1"):
                print(
                    f"athos-load: the webhook receiver listens on loopback only: the platform at "
                    f"{self.environment.host} must reach {self.receiver.url} (--athos-webhook-listen, "
                    "--athos-webhook-url), or use --athos-webhook-listen off to poll for scores",
                    flush=True,
                )
        if builtin:
            sim_args = shlex.split(opts.sim_args)
            if self.receiver is not None:
                sim_args = ["--webhook-url", self.receiver.url, *sim_args]
            try:
                self.simulator = SimulatorProcess(sim_args, api_key=self.api_key, webhook_secret=secret)
            except RuntimeError as exc:
                raise OptionError(f"--athos-sim-args: {exc}") from None
            self.environment.host = self.simulator.url
            if self.environment.parsed_options.athos_transport == "auto":
                # the built-in simulator speaks the reference protocol; its workers are told so
                # with the rest of the master's options (they see only a --host)
                self.environment.parsed_options.athos_transport = "reference"
            print(f"athos-load: no --host given, started the built-in simulator at {self.simulator.url}", flush=True)
        if opts.poll_interval > 0 or self.receiver is None:
            api = AthosApi(self.environment.host, self.api_key)
            window = max(180.0, opts.score_timeout + 60.0)  # re-scanned each pass: a score lands minutes late
            self.poller = ScorePoller(api, self.board, interval=opts.poll_interval or 1.0, window=window).start()

    def _serve_metrics(self) -> None:
        opts = self.options
        where = authority(opts.metrics_host, opts.metrics_port)
        try:
            start_http_server(opts.metrics_port, addr=opts.metrics_host, registry=self.metrics.registry)
        except OSError as exc:
            raise OptionError(f"--athos-metrics-port {opts.metrics_port}: cannot listen on {where} ({exc})") from None
        print(f"athos-load: Prometheus metrics are served at http://{where}/metrics", flush=True)

    # -- a test's start ----------------------------------------------------------------------------

    def on_test_start(self) -> None:
        """Build this test's plan from the options in force now (web UI form, master's spawn)."""
        try:
            options = AthosOptions.parse(self.environment.parsed_options)
            gates: list[Gate | Regression] = []
            if not self.is_worker:
                self._check_shape(options)
                if self.environment.host:
                    check_host_form(self.environment.host)  # the web UI's form may have changed it
                gates = self._gates(options)
            scenarios = self._scenarios(options)
        except (OptionError, ScenarioError) as exc:
            self._refuse(str(exc))
            return
        self.options = options
        if not self.environment.host and self.simulator is not None:
            self.environment.host = self.simulator.url  # the web UI's form was posted with no host
        self.metrics.declare([s.name for s in scenarios])
        settings = None
        if not self.is_master:
            settings = self._settings(options)
        self.plan = RunPlan(options, scenarios, settings, gates)
        self._started_at = time.monotonic()
        self._aborted_by = None
        if not self.is_worker and (self._watch is None or self._watch.dead):
            self._watch = gevent.spawn(self._watch_setup)
        if any(gate.abort_on_fail for gate in gates) and (self._gates_watch is None or self._gates_watch.dead):
            self._gates_watch = gevent.spawn(self._watch_gates, gates)

    def _settings(self, options: AthosOptions) -> CallSettings:
        return CallSettings(
            api=self.api(),
            ws_url=options.ws_url,  # empty: where the redeem answer's connectionUrl says
            board=self.board,
            metrics=self.metrics,
            pacer=self.pacer,
            audio=options.audio,
            drain=self.drain,
            score_timeout=options.score_timeout,
            jitter_buffer=options.jitter_buffer_ms / 1000.0,
            transcript_check=options.transcript_check == "on",
            announce=self.link.announce if self.link is not None else None,
            transport=LiveKitTransport if self.transport_name == "livekit" else RoleplaySession,
        )

    @property
    def transport_name(self) -> str:
        """The realtime leg the run's calls ride: ``--athos-transport``, or by whether the tool
        started the simulator (the reference protocol) or was given a real ``--host`` (LiveKit)."""
        chosen = self.options.transport
        if chosen != "auto":
            return chosen
        return "reference" if self.simulator is not None else "livekit"

    def user_settings(self) -> tuple[CallSettings, list[Scenario]]:
        """A user's own copy of the call settings (its own REST connection) and the scenarios."""
        plan = self.plan
        if plan is None or plan.settings is None:
            raise RuntimeError("athos-load: no run plan in this process (see the log for why the run was refused)")
        return dataclasses.replace(plan.settings, api=self.api()), plan.scenarios

    def api(self) -> AthosApi:
        """A REST client for one user (each keeps its own keep-alive connection)."""
        return AthosApi(self.environment.host, self.api_key, reps=self.reps)

    def _refuse(self, message: str) -> None:
        """This test cannot run with the options it was given: say so and stop it (a worker quits)."""
        self.plan = None
        where = "worker cannot run with the master's options: " if self.is_worker else ""
        sys.stderr.write(f"athos-load: {where}{message}\n")
        logger.error("athos-load: %s%s", where, message)
        self.exit_code = ExitCode.USAGE
        gevent.spawn(self.runner.quit if self.is_worker or _headless(self.environment) else self.runner.stop)

    def _watch_setup(self) -> None:
        """Stop a run whose first calls all fail to set up (wrong host, ws URL or key)."""
        while self._running():
            gevent.sleep(1.0)
            if self.metrics.timing(Timing.CONNECT_READY).count:
                return  # a call got through: the target works
            failed = self.metrics.total("athos_sessions", outcome=Outcome.FAILED.value)
            errors = {code: self.metrics.total("athos_errors", code=code) for code in SETUP_CODES}
            if failed < SETUP_FAILURES or sum(errors.values()) < SETUP_FAILURES:
                continue
            shown = ", ".join(f"{code} {n:g}" for code, n in sorted(errors.items()) if n)
            message = (
                f"the first {failed:g} calls all failed before ready ({shown}): check --host "
                f"{self.environment.host}, --athos-ws-url and the API key in ${self.options.api_key_env}; "
                "stopping the run"
            )
            sys.stderr.write(f"athos-load: {message}\n")
            logger.error("athos-load: %s", message)
            self.exit_code = ExitCode.USAGE
            (self.runner.quit if _headless(self.environment) else self.runner.stop)()
            return

    def _watch_gates(self, gates: list[Gate | Regression]) -> None:
        """k6's abort_on_fail: stop the run once such a gate has failed on enough samples, after
        its delay_abort_eval (the master judges the merged numbers every second)."""
        watched = [gate for gate in gates if gate.abort_on_fail]
        while self._running():
            gevent.sleep(1.0)
            elapsed = time.monotonic() - (self._started_at or time.monotonic())
            for gate in watched:
                if elapsed < gate.delay_abort_eval:
                    continue
                result = gate.evaluate(self.metrics)
                if result.passed is False:
                    self._aborted_by = result
                    logger.warning("athos-load: gate %s failed (abort_on_fail): stopping the run", gate)
                    print(f"athos-load: gate {gate} failed with abort_on_fail: stopping the run", flush=True)
                    (self.runner.quit if _headless(self.environment) else self.runner.stop)()
                    return

    def _keep_bookkeeping_bounded(self) -> None:
        """Locust's per-second counts and stats history, bounded (see plugin/bookkeeping.py)."""
        while True:
            gevent.sleep(TRIM_EVERY)
            trim(self.runner.stats, time.time())

    def _running(self) -> bool:
        return self.runner is not None and self.runner.state in (STATE_SPAWNING, STATE_RUNNING)

    # -- the end of a run --------------------------------------------------------------------------

    def on_test_stopping(self) -> None:
        """The stop begins (before Locust stops the users): from now on a call records only its
        accounting and a score (``call.KEPT_WHILE_STOPPING``)."""
        if self.plan is not None and self.plan.settings is not None:
            self.plan.settings.stopping.set()

    def on_test_stop(self) -> None:
        timeout = self.options.drain_timeout
        if self.is_worker:
            # This runs inside the worker's message loop, which must keep delivering scores from
            # the master while we drain: drain in a greenlet of its own, then send the final delta.
            gevent.spawn(self._drain_then_report, timeout)
            return
        self._drain(timeout)
        if self.hub is not None:
            self.hub.wait_for_finals(timeout + 10.0)  # a worker with no final report is counted lost
        summary = self.summary()
        try:
            self._judge(summary)
        except Exception as exc:  # noqa: BLE001 - whatever the judgement did, the reports are still written
            reason = f"the gates could not be judged ({_one_line(exc)})"
            summary["verdict"] = {"status": "invalid", "reasons": [reason]}
            summary.setdefault("gates", [])
            self._end_failed(reason)
        # each report on its own: one that cannot be written costs none of the others
        reports = (
            ("--athos-summary", self.options.summary, lambda: json.dumps(summary, indent=2) + "\n"),
            ("--athos-junit", self.options.junit, lambda: junit_xml(summary)),
            ("--athos-markdown", self.options.markdown, lambda: markdown(summary)),
            ("--athos-report", self.options.report, lambda: html_report(summary)),
        )
        for flag, target, render in reports:
            if target:
                self._write_report(flag, target, render)
        step_summary = os.environ.get("GITHUB_STEP_SUMMARY")
        if step_summary and self.plan is not None and self.plan.gates:
            self._write_report("$GITHUB_STEP_SUMMARY", step_summary, lambda: markdown(summary), append=True)
        if self.options.metrics_file:
            try:
                write_to_textfile(self.options.metrics_file, self.metrics.registry)
            except Exception as exc:  # noqa: BLE001 - as any report
                self._end_failed(
                    f"--athos-metrics-file {shown(self.options.metrics_file)}: not written ({_one_line(exc)})"
                )
        if _headless(self.environment):
            try:
                print(format_table(summary), flush=True)
            except Exception as exc:  # noqa: BLE001 - the reports are written; say why the table is not
                self._end_failed(f"the summary table could not be printed ({_one_line(exc)})")

    def _write_report(self, flag: str, target: str, render: Callable[[], str], *, append: bool = False) -> None:
        """Render and write one report; a failure is one line and makes the run untrustworthy (exit 4)."""
        try:
            # rendered and encoded before the file is opened: a report fails whole, never as 0 bytes;
            # a character that is not UTF-8 (a path's stray byte) is escaped, not fatal
            data = render().encode("utf-8", "backslashreplace")
            path = Path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("ab" if append else "wb") as f:
                f.write(data)
        except Exception as exc:  # noqa: BLE001 - one report's failure must not cost the others
            self._end_failed(f"{flag} {shown(target)}: not written ({_one_line(exc)})")

    def _end_failed(self, message: str) -> None:
        """Something at the end of the run failed: one line, and an exit code saying the run's
        results cannot be trusted (docs/ci.md), unless it was already refused as a mistake."""
        sys.stderr.write(f"athos-load: {message}\n")
        logger.error("athos-load: %s", message)
        if self.exit_code != ExitCode.USAGE:
            self.exit_code = ExitCode.INVALID

    def _judge(self, summary: dict[str, Any]) -> None:
        """The gates on the whole run's numbers, and the verdict; with gates, it is the exit code."""
        gates = self.plan.gates if self.plan is not None else []
        results = [gate.evaluate(self.metrics) for gate in gates]
        duration = time.monotonic() - self._started_at if self._started_at is not None else 0.0
        summary["verdict"] = verdict(
            results,
            summary,
            duration=duration,
            frame_seconds=self.options.audio.frame_seconds,
            aborted_by=self._aborted_by,
        )
        summary["gates"] = [result.to_dict() for result in results]
        baseline = next((g.baseline for g in gates if isinstance(g, Regression) and g.baseline is not None), None)
        if baseline is not None:
            differences = baseline.differences(summary.get("settings", {}))
            summary["baseline"] = {"path": baseline.path, "differences": differences}
            for difference in differences:
                logger.warning("athos-load: compared with a baseline run with other settings: %s", difference)
        if gates and self.exit_code is None:
            status = summary["verdict"]["status"]
            self.exit_code = {
                "passed": ExitCode.PASSED,
                "failed": ExitCode.GATE_FAILED,
                "invalid": ExitCode.INVALID,
            }[status]
        if gates:
            print(f"athos-load verdict: {summary['verdict']['status']}", flush=True)
            for reason in summary["verdict"]["reasons"]:
                print(f"  {reason}", flush=True)

    def summary(self) -> dict[str, Any]:
        """The JSON summary: the metrics' own, the generator's health, scoring and the shape's result."""
        summary = self.metrics.summary()
        health = self.health.summary()
        # every process's saturated time (workers report theirs); the worst one says how long
        # some of the run's latencies include a generator's own delay
        saturated = [h.get("saturated_seconds", 0.0) for h in self.metrics.health.values()]
        summary["saturated_seconds"] = max([health["saturated_seconds"], *saturated])
        summary["loadgen"] = health
        if self.runner is not None and not self.is_worker:
            summary["loadgen"]["locust_stats"] = footprint(self.runner.stats)  # bounded by bookkeeping.trim
        if self.hub is not None:
            summary["lost_workers"] = self.hub.lost
        if self.receiver is not None:
            summary["webhooks"] = dict(self.receiver.counts)
        if self.poller is not None:
            summary["polling"] = dict(self.poller.counts)
        capacity = getattr(self.environment.shape_class, "capacity_result", None)
        if capacity is not None:
            summary["capacity"] = capacity
        summary["settings"] = self._run_settings()
        summary["timeline"] = self.metrics.timeline_summary()
        summary["drift"] = drifts(summary["timeline"], [t.value for t in Timing])
        summary["change_points"] = changes(summary["timeline"], [t.value for t in Timing])
        return summary

    def _run_settings(self) -> dict[str, Any]:
        """What this run was asked to do: the report's "settings" and a baseline's comparability check."""
        parsed = self.environment.parsed_options
        runner = self.runner
        return _shown_strings({
            "host": self.environment.host,
            "users": getattr(parsed, "num_users", None),
            "spawn_rate": getattr(parsed, "spawn_rate", None),
            "run_time": getattr(parsed, "run_time", None),
            "workers": runner.worker_count if self.is_master else 0,
            "scenarios": [s.name for s in self.plan.scenarios] if self.plan is not None else [],
            "athos": {k: v for k, v in dataclasses.asdict(self.options).items() if v not in ("", None)}
            | ({"sim_args": shlex.join(redact(shlex.split(self.options.sim_args)))} if self.options.sim_args else {}),
        })  # fmt: skip

    def _drain(self, timeout: float) -> None:
        pending = self.drain.pending
        if pending:
            logger.info("waiting up to %ss for the scores of %d ended calls", timeout, pending)
        self.drain.wait(timeout)
        if pending and getattr(self.environment.parsed_options, "csv_prefix", None):
            # Locust's CSV writer runs every CSV_STATS_INTERVAL_SEC; let it see the drained entries
            gevent.sleep(CSV_STATS_INTERVAL_SEC + 0.2)

    def _drain_then_report(self, timeout: float) -> None:
        self.drain.wait(timeout)
        assert self.link is not None
        self.link.send_final()

    def on_quitting(self) -> None:
        self.health.stop()
        for watch in (self._watch, self._gates_watch, self._bookkeeping):
            if watch is not None:
                watch.kill(block=False)
        if self.poller is not None:
            self.poller.stop()
        if self.hub is not None:
            self.hub.stop()
        if self.receiver is not None:
            self.receiver.stop()
        if self.simulator is not None:
            self.simulator.stop()
        capacity = getattr(self.environment.shape_class, "capacity_result", None)
        if self.exit_code is None and capacity is not None:
            # the search is the verdict: a level found passes, none found fails
            self.exit_code = ExitCode.PASSED if capacity["last_good_users"] is not None else ExitCode.GATE_FAILED
        if self.exit_code is not None:
            self.environment.process_exit_code = int(self.exit_code)


def _headless(environment: Any) -> bool:
    return bool(getattr(environment.parsed_options, "headless", False))


def check_host_form(host: str) -> None:
    """``--host`` is the platform's origin: the tool adds the API's paths itself, so a path, query or
    fragment (or a port that is not one) would only fail later, call by call."""
    parts = urlsplit(host)
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number in 0..65535
    except ValueError:
        raise OptionError(f"--host {shown(host)!r}: expected http(s)://HOST[:PORT] (the port is not one)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OptionError(f"--host {shown(host)!r}: expected http(s)://HOST[:PORT]")
    if parts.path not in ("", "/") or parts.query or parts.fragment or "#" in host or parts.username:
        raise OptionError(
            f"--host {shown(host)!r}: expected http(s)://HOST[:PORT], with no path, query, fragment or user "
            "(the tool adds the API's paths)"
        )


def _one_line(exc: BaseException) -> str:
    """An exception as a message's tail: its type and its first line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _shown_strings(value: Any) -> Any:
    """``value`` with every string as :func:`shown` writes a path: a command line's stray
    non-UTF-8 byte escaped (``\\xff``), so every report can be written."""
    if isinstance(value, str):
        return shown(value)
    if isinstance(value, dict):
        return {key: _shown_strings(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_shown_strings(item) for item in value]
    return value


def _reason(message: str) -> str:
    """The innermost cause of a requests error ('Name or service not known'), not its wrapper."""
    inner = message.rsplit("(", 1)[-1].rstrip(")'\" ")
    return inner.split(": ", 1)[-1] if ": " in inner else message
