"""The process-wide side of a Locust run: what every user shares, and the run's start and end.

Built once per process on Locust's ``init`` event from the ``--athos-*`` options: the scenarios
(loaded, validated and framed before any user starts), the metrics, the one audio pacer, the score
board with its webhook receiver or poller, and — when no ``--host`` is given — the built-in
simulator. At ``test_stop`` it drains scores of calls that already ended, writes the JSON summary
and prints the table.
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
from locust.stats import CSV_STATS_INTERVAL_SEC
from prometheus_client import disable_created_metrics, start_http_server

from .api import AthosApi, ScoreBoard, ScorePoller, WebhookReceiver
from .call import CallSettings, ScoreDrain
from .metrics import Metrics
from .options import SIM_API_KEY, SIM_WEBHOOK_SECRET
from .pacer import AudioPacer
from .protocol import PATH_REALTIME, AudioFormat
from .report import format_table
from .scenario import Scenario, ScenarioError, load_scenarios
from .simproc import SimulatorProcess

logger = logging.getLogger(__name__)

disable_created_metrics()  # `_created` series only add cardinality; nothing we ship queries them


class Runtime:
    """Everything the users of one Locust process share. ``Runtime.current`` is the live one."""

    current: Runtime | None = None

    def __init__(self, environment: Any) -> None:
        self.environment = environment
        opts = environment.parsed_options
        self.options = opts
        self.audio = AudioFormat(sample_rate=opts.athos_sample_rate, frame_ms=opts.athos_frame_ms)
        try:
            self.audio.check()
        except ValueError as exc:
            fail(f"--athos-sample-rate/--athos-frame-ms: {exc}")
        try:
            self.scenarios: list[Scenario] = load_scenarios(opts.athos_scenario, self.audio)
        except ScenarioError as exc:
            fail(str(exc))
        self.is_worker = bool(getattr(opts, "worker", False))
        self.simulator: SimulatorProcess | None = None
        if not environment.host and not self.is_worker:
            self.simulator = SimulatorProcess(shlex.split(opts.athos_sim_args))
            environment.host = self.simulator.url
            print(f"athos-load: no --host given, started the built-in simulator at {self.simulator.url}", flush=True)
        self.api_key = os.environ.get(opts.athos_api_key_env) or SIM_API_KEY
        secret = os.environ.get(opts.athos_webhook_secret_env) or SIM_WEBHOOK_SECRET
        self.metrics = Metrics()
        self.pacer = AudioPacer(on_lag=self.metrics.audio_send_lag)
        self.board = ScoreBoard()
        self.drain = ScoreDrain()
        self.receiver: WebhookReceiver | None = None
        if opts.athos_webhook_listen != "off":
            host, _, port = opts.athos_webhook_listen.rpartition(":")
            self.receiver = WebhookReceiver(
                self.board,
                secret,
                host=host or "127.0.0.1",
                port=int(port or 0),
                public_url=opts.athos_webhook_url or None,
            ).start()
        self.poller: ScorePoller | None = None
        self._settings: CallSettings | None = None
        if opts.athos_metrics_port:
            start_http_server(opts.athos_metrics_port, addr=opts.athos_metrics_host, registry=self.metrics.registry)
        Runtime.current = self

    def settings(self) -> CallSettings:
        """The settings calls share; built on first use, when the host is known (workers learn it late)."""
        if self._settings is None:
            host = self.environment.host
            if not host:
                raise RuntimeError("no host: give --host, or run without it to use the built-in simulator")
            opts = self.options
            ws_url = opts.athos_ws_url or host.replace("http", "ws", 1).rstrip("/") + PATH_REALTIME
            poll_api = AthosApi(host, self.api_key)
            if opts.athos_poll_interval > 0 or self.receiver is None:
                self.poller = ScorePoller(poll_api, self.board, interval=opts.athos_poll_interval or 1.0).start()
            self._settings = CallSettings(
                api=AthosApi(host, self.api_key),
                ws_url=ws_url,
                board=self.board,
                metrics=self.metrics,
                pacer=self.pacer,
                audio=self.audio,
                drain=self.drain,
                webhook_url=self.receiver.url if self.receiver else None,
                score_timeout=opts.athos_score_timeout,
            )
        return self._settings

    def api(self) -> AthosApi:
        """A REST client for one user (each keeps its own keep-alive connection)."""
        return AthosApi(self.environment.host, self.api_key)

    # -- the end of a run --------------------------------------------------------------------------

    def on_test_stop(self) -> None:
        if self.drain.pending:
            logger.info("waiting up to %ss for %d scores", self.options.athos_drain_timeout, self.drain.pending)
        drained = self.drain.pending
        self.drain.wait(self.options.athos_drain_timeout)
        if drained and getattr(self.options, "csv_prefix", None):
            # Locust's CSV writer runs every CSV_STATS_INTERVAL_SEC; let it see the drained entries
            gevent.sleep(CSV_STATS_INTERVAL_SEC + 0.2)
        summary = self.metrics.summary()
        if self.receiver is not None:
            summary["webhooks"] = dict(self.receiver.counts)
        if self.options.athos_summary:
            path = Path(self.options.athos_summary)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(summary, indent=2) + "\n")
        if getattr(self.options, "headless", False):
            print(format_table(summary), flush=True)

    def on_quitting(self) -> None:
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
