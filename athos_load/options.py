"""The tool's ``--athos-*`` options, added to Locust's own parser.

Locust turns each into a ``LOCUST_ATHOS_*`` environment variable and a ``locust.conf`` key, and
lists them in ``locust --help``. Secrets are read from environment variables named by an option,
never from the command line, where ``ps`` and CI logs would show them.
"""

from __future__ import annotations

from typing import Any

SIM_API_KEY = "sim-key"  # the built-in simulator's defaults
SIM_WEBHOOK_SECRET = "whsec_athos_sim"


def add_options(parser: Any) -> None:
    """Listener for ``events.init_command_line_parser``."""
    group = parser.add_argument_group("athos-load", "Options of the Athos roleplay load test")
    group.add_argument(
        "--athos-scenario",
        default="scenarios",
        help="Scenario YAML file, or a directory of them mixed by weight (default: scenarios)",
    )
    group.add_argument(
        "--athos-api-key-env",
        default="ATHOS_API_KEY",
        help="Environment variable holding the Athos API key (default: ATHOS_API_KEY; "
        "the built-in simulator needs none)",
    )
    group.add_argument(
        "--athos-webhook-secret-env",
        default="ATHOS_WEBHOOK_SECRET",
        help="Environment variable holding the call.scored webhook signing secret (default: ATHOS_WEBHOOK_SECRET)",
    )
    group.add_argument(
        "--athos-ws-url",
        default="",
        help="Realtime WebSocket URL (default: the host with ws(s):// and /v1/realtime)",
    )
    group.add_argument(
        "--athos-webhook-listen",
        default="127.0.0.1:0",
        help="HOST:PORT where the call.scored webhook receiver listens; 'off' to rely on polling "
        "(default: 127.0.0.1 on a free port)",
    )
    group.add_argument(
        "--athos-webhook-url",
        default="",
        help="Public URL the platform should POST webhooks to, when it differs from the listen address",
    )
    group.add_argument(
        "--athos-poll-interval",
        type=float,
        default=0.0,
        help="Seconds between GET /v1/calls polls for scores; 0 = only when the webhook is off (default: 0)",
    )
    group.add_argument(
        "--athos-score-timeout",
        type=float,
        default=120.0,
        help="Seconds after ended to wait for a score before counting it missing (default: 120)",
    )
    group.add_argument(
        "--athos-drain-timeout",
        type=float,
        default=30.0,
        help="At the end of a run, seconds to wait for scores of calls that already ended (default: 30)",
    )
    group.add_argument("--athos-sample-rate", type=int, default=16000, help="Wire audio sample rate (default: 16000)")
    group.add_argument("--athos-frame-ms", type=int, default=20, help="Wire audio frame length in ms (default: 20)")
    group.add_argument(
        "--athos-summary",
        default="",
        help="Write the run's JSON summary (timings and call outcomes) to this path at the end",
    )
    group.add_argument(
        "--athos-metrics-port",
        type=int,
        default=0,
        help="Serve Prometheus /metrics on this port (0 = off)",
    )
    group.add_argument(
        "--athos-metrics-file",
        default="",
        help="At the end, write the final Prometheus exposition (what /metrics would show) to this path",
    )
    group.add_argument("--athos-metrics-host", default="127.0.0.1", help="Address for /metrics (default: 127.0.0.1)")
    group.add_argument(
        "--athos-sim-args",
        default="",
        help="Extra options for the built-in simulator started when no --host is given, "
        "e.g. '--drops-per-minute 2 --max-calls 50' (see athos-sim --help)",
    )
    group.add_argument(
        "--athos-shape",
        default="",
        choices=["", "ramp", "steps", "spike", "soak", "capacity"],
        help="Load shape; empty = Locust's own -u/-r/-t (see the README for each shape's parameters)",
    )
    group.add_argument(
        "--athos-shape-params",
        default="",
        help="Shape parameters as key=value,key=value (e.g. 'step_users=20,step_seconds=60,steps=5')",
    )
