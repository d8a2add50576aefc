"""The tool's ``--athos-*`` options: declared once, checked once.

Each option is a field of :class:`AthosOptions`, declared with :func:`option` (its default, help
and checker), and nowhere else; :data:`OPTIONS` lists them as :class:`Option` values.
:func:`add_options` adds them to Locust's parser with their ``LOCUST_ATHOS_*`` environment
variable (Locust declares one per option; a ``locust.conf`` key works through the same parser), so
precedence is Locust's own: command line, then environment, then config file, then default.
:meth:`AthosOptions.parse` turns a parsed namespace into typed, checked values; it runs at
start-up and again at every test start, because the web UI's form and a master's spawn message
change the namespace without Locust's parser.

Secrets are read from environment variables named by an option, never from the command line,
where ``ps`` and CI logs would show them. ``athos-load options`` prints every option (Locust
prints its ``--help`` before it imports a locustfile, so ours cannot appear there).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .wire import AudioFormat


class OptionError(ValueError):
    """A bad option value; the text names the option and what is wrong, in one line."""


# -- value checkers: text in, a typed value out, ValueError with what is wrong -----------------------


def _seconds(minimum: float, *, inclusive: bool = True) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number of seconds") from None
        ok = math.isfinite(value) and (value >= minimum if inclusive else value > minimum)
        if not ok:
            raise ValueError(f"{text!r}: must be a finite number {'>=' if inclusive else '>'} {minimum:g}")
        return value

    return parse


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise ValueError(f"{value} is not within {low}..{high}")
        return value

    return parse


def _env_name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text):
        raise ValueError(f"{text!r} is not an environment variable name")
    return text


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not text:
            return text
        parts = urlsplit(text)
        if parts.scheme not in schemes or not parts.hostname:
            raise ValueError(f"{text!r} is not a {'/'.join(schemes)} URL with a host")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError as exc:
            raise ValueError(f"{text!r}: {exc}") from None
        return text

    return parse


def _listen(text: str) -> str:
    if text == "off":
        return text
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: expected HOST:PORT (port 0..65535, 0 = a free port) or 'off'")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ValueError(f"{text!r}: an IPv6 address goes in brackets, as in a URL: [::1]:{port}")
    return text


def _host(text: str) -> str:
    """An address to listen on; an IPv6 one may come in brackets, as in a URL (``[::1]``)."""
    host = _non_empty(text).strip()
    return host.removeprefix("[").removesuffix("]") if host.startswith("[") else host


def _non_empty(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def _sim_args(text: str) -> str:
    from .sim.config import build_parser  # the simulator's own parser: one definition of its knobs

    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc}") from None
    parser = build_parser()

    def error(message: str) -> None:
        raise ValueError(message)

    parser.error = error  # type: ignore[method-assign]  # raise instead of printing usage and exiting
    parser.parse_args(argv)
    return text


@dataclass(frozen=True)
class Option:
    """One ``--athos-*`` option."""

    name: str  # the attribute on AthosOptions; the flag is --athos-<name with dashes>
    default: Any
    help: str
    parse: Callable[[str], Any] = str
    web_ui: bool = False  # shown in Locust's start form: an option that makes sense per run
    choices: tuple[str, ...] | None = None

    @property
    def flag(self) -> str:
        return "--athos-" + self.name.replace("_", "-")

    @property
    def dest(self) -> str:
        return "athos_" + self.name

    @property
    def env_var(self) -> str:
        return "LOCUST_ATHOS_" + self.name.upper()

    def check(self, value: object) -> Any:
        """The typed value, or :class:`OptionError` naming the option."""
        text = value if isinstance(value, str) else str(value)
        if self.choices is not None and text not in self.choices:
            shown = ", ".join(repr(choice) for choice in self.choices)
            raise OptionError(f"{self.flag}: {text!r} is not one of {shown}")
        try:
            return self.parse(text)
        except ValueError as exc:
            raise OptionError(f"{self.flag}: {exc}") from None


def option(
    default: Any,
    help: str,
    parse: Callable[[str], Any] = str,
    web_ui: bool = False,
    *,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """An :class:`AthosOptions` field that is an ``--athos-*`` option (see :class:`Option`)."""
    declared = Option("", default, help, parse, web_ui, choices)
    return dataclasses.field(default=default, metadata={"option": declared})


@dataclass(frozen=True)
class AthosOptions:
    """Every ``--athos-*`` option, declared once: each field is an option (its name the attribute,
    ``--athos-<name>`` the flag), and an instance holds the checked values of a run."""

    scenario: str = option(
        "scenarios",
        "Scenario YAML file, or a directory of them mixed by weight",
        _non_empty,
        True,
    )
    api_key_env: str = option(
        "ATHOS_API_KEY",
        "Environment variable holding the Athos API key (the built-in simulator is given the same key)",
        _env_name,
    )
    webhook_secret_env: str = option(
        "ATHOS_WEBHOOK_SECRET",
        "Environment variable holding the call.scored webhook signing secret",
        _env_name,
    )
    ws_url: str = option(
        "",
        "Realtime URL to join instead of the redeem answer's connectionUrl (default: the answer's)",
        _url("ws", "wss"),
    )
    transport: str = option(
        "auto",
        "The realtime leg: 'livekit' (the real Athos platform's; not yet verified against a LiveKit server, "
        "see the README), 'reference' (the tool's own WebSocket protocol, which athos-sim speaks); "
        "'auto': reference against the built-in simulator, livekit with --host",
        choices=("auto", "livekit", "reference"),
    )
    webhook_listen: str = option(
        "127.0.0.1:0",
        "HOST:PORT where the call.scored receiver listens (path /webhooks/athos; port 0 = a free one); "
        "'off' to rely on polling",
        _listen,
    )
    webhook_url: str = option(
        "",
        "Public URL the platform should POST webhooks to, when it differs from the listen address",
        _url("http", "https"),
    )
    poll_interval: float = option(
        0.0,
        "Seconds between GET /v1/calls polls for scores; 0 = poll only when the webhook is off",
        _seconds(0.0),
    )
    score_timeout: float = option(
        120.0,
        "Seconds after ended to wait for a score before counting it missing",
        _seconds(0.0, inclusive=False),
        True,
    )
    drain_timeout: float = option(
        30.0,
        "At the end of a run, seconds to wait for scores of calls that already ended (unsettled ones count pending)",
        _seconds(0.0),
        True,
    )
    sample_rate: int = option(
        16000,
        "Wire audio sample rate",
        _int_in(1, 1_000_000),
    )
    frame_ms: int = option(
        20,
        "Wire audio frame length in ms",
        _int_in(1, 10_000),
    )
    jitter_buffer_ms: int = option(
        60,
        "The playout buffer of the rep's client, in ms: persona audio later than it is an underrun",
        _int_in(0, 10_000),
    )
    transcript_check: str = option(
        "off",
        "on: when a call ends, fetch its transcript (GET /v1/calls/:id) and check the rep's turns in it "
        "(present, aligned within 0.3 s, word error rate against the scenario's text)",
        choices=("off", "on"),
    )
    summary: str = option(
        "",
        "Write the run's JSON summary (timings and call outcomes) to this path at the end",
    )
    metrics_port: int = option(
        0,
        "Serve Prometheus /metrics on this port (0 = off)",
        _int_in(0, 65535),
    )
    metrics_host: str = option(
        "127.0.0.1",
        "Address for /metrics (an IPv6 one as ::1 or [::1])",
        _host,
    )
    metrics_file: str = option(
        "",
        "At the end, write the final Prometheus exposition (what /metrics would show) to this path",
    )
    sim_args: str = option(
        "",
        "Options for the built-in simulator started when no --host is given, "
        "e.g. '--drops-per-minute 2 --max-calls 50' (athos-sim --help)",
        _sim_args,
    )
    gates: str = option(
        "",
        "YAML file of k6-style thresholds (docs/ci.md); when given, they decide the exit code: "
        "0 passed, 3 a gate failed, 4 the run cannot be trusted",
        web_ui=True,
    )
    baseline: str = option(
        "",
        "A previous run's JSON summary: fail when this run is worse by more than the gates file's "
        "'regression' limits (default: connect_ready.p95, persona_response.p50/p95 at 10%) with 95% confidence",
    )
    junit: str = option(
        "",
        "At the end, write a JUnit XML report (one test case per gate, one for run validity)",
    )
    markdown: str = option(
        "",
        "At the end, write a Markdown summary for a CI job (also appended to $GITHUB_STEP_SUMMARY when set)",
    )
    report: str = option(
        "",
        "At the end, write a self-contained HTML report (verdict, gates, timings, plots over time) that opens offline",
    )
    shape: str = option(
        "",
        "Load shape: ramp, steps, spike, soak or capacity; empty = Locust's own -u/-r/-t",
        choices=("", "ramp", "steps", "spike", "soak", "capacity"),
    )
    shape_params: str = option(
        "",
        "Shape parameters as key=value,... e.g. 'start=10,step=10,step_seconds=60,steps=5' (README: Load shapes)",
    )

    @classmethod
    def parse(cls, namespace: Any) -> AthosOptions:
        """Check every option of a parsed namespace; the first bad one raises :class:`OptionError`."""
        values = {option.name: option.check(getattr(namespace, option.dest, option.default)) for option in OPTIONS}
        options = cls(**values)
        try:
            options.audio.check()
        except ValueError as exc:
            raise OptionError(f"--athos-sample-rate/--athos-frame-ms: {exc}") from None
        return options

    @property
    def audio(self) -> AudioFormat:
        return AudioFormat(sample_rate=self.sample_rate, frame_ms=self.frame_ms)

    @property
    def webhook_address(self) -> tuple[str, int] | None:
        """Where the receiver listens, or None when it is off."""
        if self.webhook_listen == "off":
            return None
        host, _, port = self.webhook_listen.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)


# The options, in declaration order, as add_options and describe() read them.
OPTIONS: tuple[Option, ...] = tuple(
    dataclasses.replace(f.metadata["option"], name=f.name) for f in dataclasses.fields(AthosOptions)
)


def add_options(parser: Any) -> None:
    """Listener for ``events.init_command_line_parser``: every option, with its env variable."""
    group = parser.add_argument_group("athos-load", "Options of the Athos roleplay load test (athos-load options)")
    for option in OPTIONS:
        action = group.add_argument(
            option.flag,
            default=option.default,
            type=_argparse_type(option),
            env_var=option.env_var,
            help=f"{option.help} (default: {option.default!r}; env {option.env_var})",
        )
        # what Locust's own add_argument sets; an argument group's add_argument does not
        action.include_in_web_ui = option.web_ui
        action.is_secret = action.is_required = action.is_multiple = False


def _argparse_type(option: Option) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return option.check(text)
        except OptionError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(option.flag + ": ")) from None

    convert.__name__ = option.name  # argparse names the type in some messages
    return convert


def describe() -> str:
    """Every option with its default, environment variable and help: ``athos-load options``."""
    lines = [
        "athos-load options for `locust -f locustfile.py` (also LOCUST_ATHOS_* variables and locust.conf keys;",
        "precedence as Locust's own: command line, environment, config file, default).",
        "Options marked [web UI] appear in Locust's start form and apply to the run started from it.",
        "",
    ]
    for option in OPTIONS:
        marks = " [web UI]" if option.web_ui else ""
        lines.append(f"  {option.flag}{marks}")
        lines.append(f"      {option.help}")
        lines.append(f"      default: {option.default!r}   env: {option.env_var}   locust.conf: {option.flag[2:]}")
    return "\n".join(lines)
