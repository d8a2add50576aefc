"""The Locust side of the tool: the user class, and :func:`install`, which wires the tool into Locust.

A locustfile calls :func:`install` once and defines a concrete subclass of :class:`RoleplayUser`
(the shipped ``locustfile.py`` does exactly that). Importing this module registers nothing. Each
user is one synthetic sales rep; it owns nothing but its REST connection and a random generator:
the call flow is :class:`~athos_load.call.Call`, the shared services live in the process's
:class:`~athos_load.plugin.runtime.Runtime` (``environment.athos``), and results reach Locust only
through its request event.
"""

from __future__ import annotations

import dataclasses
import random
import sys
from typing import Any

import gevent
from locust import User, between, events, task

from ..call import Call
from ..options import OptionError, add_options
from ..scenario import ScenarioError, pick
from ..transport import TransportFactory
from ..verdict import ExitCode
from .runtime import Runtime


class RoleplayUser(User):
    """A rep who makes one roleplay call after another, with a short pause between them.

    Abstract: subclass it in a locustfile (to change the pause between calls or to pin a
    scenario); Locust runs the subclasses only.
    """

    abstract = True

    wait_time = between(0.5, 2.0)
    """Pause between two calls of the same rep."""

    scenario_name: str | None = None
    """Pin this user class to one scenario by name; None mixes all loaded scenarios by weight."""

    transport: TransportFactory | None = None
    """The realtime leg its calls ride (athos_load/transport.py): a transport class, or a
    ``functools.partial`` of one. None: the run's (the reference WebSocket protocol's
    :class:`~athos_load.session.RoleplaySession`)."""

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.rng = random.Random()
        self._settings = None

    def on_start(self) -> None:
        # Locust starts each second's batch of users in one instant; connecting them all at once
        # would queue their handshakes in this process and inflate connect→ready. Spread them.
        gevent.sleep(self.rng.uniform(0.0, 1.0))
        runtime: Runtime | None = getattr(self.environment, "athos", None)
        if runtime is None:
            raise RuntimeError("athos-load is not installed: call athos_load.plugin.users.install() in the locustfile")
        self._settings, scenarios = runtime.user_settings()
        if self.transport is not None:
            self._settings = dataclasses.replace(self._settings, transport=self.transport)
        if self.scenario_name is not None:
            scenarios = [s for s in scenarios if s.name == self.scenario_name]
            if not scenarios:
                raise ValueError(f"{type(self).__name__}.scenario_name {self.scenario_name!r} is not loaded")
        self.scenarios = scenarios

    def on_stop(self) -> None:
        if self._settings is not None:
            self._settings.api.close()

    @task
    def call(self) -> None:
        scenario = pick(self.scenarios, self.rng)
        Call(self._settings, scenario, self.environment.events.request.fire, self.rng).run()


def install() -> None:
    """Add the ``--athos-*`` options and the tool's start and end of a run to Locust's events.

    Call it once, at the top level of the locustfile; calling it again does nothing (the listeners
    already on Locust's hooks are the record of it: no flag of this module's).
    """
    if _add_options in events.init_command_line_parser._handlers:
        return
    events.init_command_line_parser.add_listener(_add_options)
    events.init.add_listener(_init)
    events.test_start.add_listener(_test_start)
    events.test_stopping.add_listener(_test_stopping)
    events.test_stop.add_listener(_test_stop)
    events.quitting.add_listener(_quitting)


def _add_options(parser: Any, **_: Any) -> None:
    add_options(parser)


def _init(environment: Any, runner: Any = None, **_: Any) -> None:
    if environment.parsed_options is None:
        return
    try:
        Runtime(environment, runner)
    except (OptionError, ScenarioError) as exc:
        # before any user starts: one line, no traceback, Locust's exit code for bad input
        sys.stderr.write(f"athos-load: {exc}\n")
        raise SystemExit(int(ExitCode.USAGE)) from None


def _runtime(environment: Any) -> Runtime | None:
    return getattr(environment, "athos", None)


def _test_start(environment: Any, **_: Any) -> None:
    if (runtime := _runtime(environment)) is not None:
        runtime.on_test_start()


def _test_stopping(environment: Any, **_: Any) -> None:
    if (runtime := _runtime(environment)) is not None:
        runtime.on_test_stopping()


def _test_stop(environment: Any, **_: Any) -> None:
    if (runtime := _runtime(environment)) is not None:
        runtime.on_test_stop()


def _quitting(environment: Any, **_: Any) -> None:
    if (runtime := _runtime(environment)) is not None:
        runtime.on_quitting()
