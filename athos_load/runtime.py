"""The process-wide side of a Locust run: what every user shares, and the run's start and end.

Built once per process on Locust's ``init`` event from the ``--athos-*`` options. What a process
holds depends on its role:

* every process: the scenarios (loaded, validated and framed before any user starts, so a bad file
  stops the run at once), the metrics and the health monitor;
* a local runner or a master: the built-in simulator when no ``--host`` is given, the webhook
  receiver (or the poller), ``/metrics``, the JSON summary;
* a process that runs users (local or worker): the audio pacer and the score drain.

At ``test_stop`` the scores of calls that already ended are drained, then the summary is written
and, in a headless run, the table printed. On a master this waits for every worker's final delta
(see :mod:`athos_load.distributed`).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import gevent
from locust.runners import MasterRunner, WorkerRunner
from locust.stats import CSV_STATS_INTERVAL_SEC
from prometheus_client import start_http_server, write_to_textfile

from .api import AthosApi, ScoreBoard, ScorePoller, WebhookReceiver
from .call import CallSettings, ScoreDrain
from .distributed import MasterHub, WorkerLink
from .health import HealthMonitor
from .metrics import Metrics
from .options import SIM_API_KEY, SIM_WEBHOOK_SECRET
from .pacer import AudioPacer
from .protocol import PATH_REALTIME, AudioFormat
from .report import format_table
from .scenario import Scenario, ScenarioError, load_scenarios
from .simproc import SimulatorProcess

logger = logging.getLogger(__name__)


class Runtime:
    """Everything the users of one Locust process share. ``Runtime.current`` is the live one."""

    current: Runtime | None = None

    def __init__(self, environment: Any, runner: Any) -> None:
        self.environment = environment
        self.runner = runner
        opts = self.options = environment.parsed_options
        self.is_master = isinstance(runner, MasterRunner)
        self.is_worker = isinstance(runner, WorkerRunner)
        self.audio = AudioFormat(sample_rate=opts.athos_sample_rate, frame_ms=opts.athos_frame_ms)
        try:
            self.audio.check()
            self.scenarios: list[Scenario] = load_scenarios(self._scenario_path(), self.audio)
        except ValueError as exc:  # ScenarioError is a ValueError too
            fail(str(exc) if isinstance(exc, ScenarioError) else f"--athos-sample-rate/--athos-frame-ms: {exc}")
        self.api_key = os.environ.get(opts.athos_api_key_env) or SIM_API_KEY
        self.metrics = Metrics(source="master" if self.is_master else "local")
        self.metrics.declare([s.name for s in self.scenarios])
        self.health = HealthMonitor(self.metrics, users=lambda: runner.user_count if runner else 0).start()
        self.board = ScoreBoard()
        self.drain = ScoreDrain()
        self.pacer = AudioPacer(on_lags=self.metrics.audio_send_lags)
        self.receiver: WebhookReceiver | None = None
        self.poller: ScorePoller | None = None
        self.simulator: SimulatorProcess | None = None
        self.hub: MasterHub | None = None
        self.link: WorkerLink | None = None
        self._settings: CallSettings | None = None
        if self.is_worker:
            self.link = WorkerLink(runner, self.metrics, self.board)
        else:
            self._start_scoring_and_target()
            if self.is_master:
                self.hub = MasterHub(runner, self.metrics, self.board, score_timeout=opts.athos_score_timeout)
            if opts.athos_metrics_port:
                start_http_server(opts.athos_metrics_port, addr=opts.athos_metrics_host, registry=self.metrics.registry)
        Runtime.current = self

    def _scenario_path(self) -> Path:
        """``--athos-scenario`` as given, or beside the locustfile when the default is not in the cwd."""
        path = Path(self.options.athos_scenario)
        if not path.exists() and not path.is_absolute():
            for locustfile in getattr(self.options, "locustfile", "").split(","):
                candidate = Path(locustfile).resolve().parent / path
                if locustfile and candidate.exists():
                    return candidate
        return path

    def _start_scoring_and_target(self) -> None:
        """The webhook receiver (or poller) and, with no --host, the simulator that posts to it."""
        opts = self.options
        secret = os.environ.get(opts.athos_webhook_secret_env) or SIM_WEBHOOK_SECRET
        if opts.athos_webhook_listen != "off":
            host, _, port = opts.athos_webhook_listen.rpartition(":")
            self.receiver = WebhookReceiver(
                self.board,
                secret,
                host=host or "127.0.0.1",
                port=int(port or 0),
                public_url=opts.athos_webhook_url or None,
            ).start()
        if not self.environment.host:
            sim_args = shlex.split(opts.athos_sim_args)
            if self.receiver is not None:
                sim_args = ["--webhook-url", self.receiver.url, "--webhook-secret", secret, *sim_args]
            self.simulator = SimulatorProcess(sim_args)
            self.environment.host = self.simulator.url
            print(f"athos-load: no --host given, started the built-in simulator at {self.simulator.url}", flush=True)
        if opts.athos_poll_interval > 0 or self.receiver is None:
            api = AthosApi(self.environment.host, self.api_key)
            self.poller = ScorePoller(api, self.board, interval=opts.athos_poll_interval or 1.0).start()

    def settings(self) -> CallSettings:
        """What calls share; built on first use, when the host is known (workers learn it late)."""
        if self._settings is None:
            host = self.environment.host
            if not host:
                raise RuntimeError("no host: give --host, or run without it to use the built-in simulator")
            ws_url = self.options.athos_ws_url or host.replace("http", "ws", 1).rstrip("/") + PATH_REALTIME
            self._settings = CallSettings(
                api=AthosApi(host, self.api_key),
                ws_url=ws_url,
                board=self.board,
                metrics=self.metrics,
                pacer=self.pacer,
                audio=self.audio,
                drain=self.drain,
                score_timeout=self.options.athos_score_timeout,
                announce=self.link.announce if self.link is not None else None,
            )
        return self._settings

    def api(self) -> AthosApi:
        """A REST client for one user (each keeps its own keep-alive connection)."""
        return AthosApi(self.environment.host, self.api_key)

    # -- the end of a run --------------------------------------------------------------------------

    def on_test_stop(self) -> None:
        timeout = self.options.athos_drain_timeout
        if self.is_worker:
            # This runs inside the worker's message loop, which must keep delivering scores from
            # the master while we drain: drain in a greenlet of its own, then send the final delta.
            gevent.spawn(self._drain_then_report, timeout)
            return
        self._drain(timeout)
        if self.hub is not None:
            missing = self.hub.wait_for_finals(timeout + 10.0)
            if missing:
                logger.warning("no final report from %d worker(s): their last seconds are missing", len(missing))
        summary = self.metrics.summary()
        summary["loadgen"] = self.health.summary()
        if self.receiver is not None:
            summary["webhooks"] = dict(self.receiver.counts)
        if self.options.athos_summary:
            path = Path(self.options.athos_summary)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(summary, indent=2) + "\n")
        if self.options.athos_metrics_file:
            write_to_textfile(self.options.athos_metrics_file, self.metrics.registry)
        if getattr(self.options, "headless", False):
            print(format_table(summary), flush=True)

    def _drain(self, timeout: float) -> None:
        pending = self.drain.pending
        if pending:
            logger.info("waiting up to %ss for the scores of %d ended calls", timeout, pending)
        self.drain.wait(timeout)
        if pending and getattr(self.options, "csv_prefix", None):
            # Locust's CSV writer runs every CSV_STATS_INTERVAL_SEC; let it see the drained entries
            gevent.sleep(CSV_STATS_INTERVAL_SEC + 0.2)

    def _drain_then_report(self, timeout: float) -> None:
        self.drain.wait(timeout)
        assert self.link is not None
        self.link.send_final()

    def on_quitting(self) -> None:
        self.health.stop()
        if self.poller is not None:
            self.poller.stop()
        if self.receiver is not None:
            self.receiver.stop()
        if self.simulator is not None:
            self.simulator.stop()


def fail(message: str) -> None:
    """Stop before any user starts, with the message a user can act on."""
    sys.stderr.write(f"athos-load: {message}\n")
    raise SystemExit(2)
