"""Locust users: each is one synthetic sales rep making roleplay calls, one call per task.

``locust -f locustfile.py`` runs :class:`RoleplayUser`. Subclass it to change the pause between
calls or to pin a scenario. The user owns nothing but its REST connection and a random generator;
the call flow is :class:`~athos_load.call.Call`, the shared services live in
:class:`~athos_load.runtime.Runtime`, and results reach Locust only through its request event.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import gevent
from locust import User, between, events, task

from .call import Call
from .options import add_options
from .runtime import Runtime
from .scenario import pick


class RoleplayUser(User):
    """A rep who makes one roleplay call after another, with a short pause between them."""

    wait_time = between(0.5, 2.0)
    """Pause between two calls of the same rep."""

    scenario_name: str | None = None
    """Pin this user class to one scenario by name; None mixes all loaded scenarios by weight."""

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.rng = random.Random()
        self._settings = None

    def on_start(self) -> None:
        # Locust starts each second's batch of users in one instant; connecting them all at once
        # would queue their handshakes in this process and inflate connect→ready. Spread them.
        gevent.sleep(self.rng.uniform(0.0, 1.0))
        runtime = Runtime.current
        assert runtime is not None, "athos_load.users must be imported by the locustfile"
        self.runtime = runtime
        self._settings = dataclasses.replace(runtime.settings(), api=runtime.api())
        scenarios = runtime.scenarios
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


@events.init_command_line_parser.add_listener
def _add_options(parser: Any, **_: Any) -> None:
    add_options(parser)


@events.init.add_listener
def _init(environment: Any, runner: Any = None, **_: Any) -> None:
    if environment.parsed_options is not None:
        Runtime(environment, runner)


@events.test_stop.add_listener
def _test_stop(environment: Any, **_: Any) -> None:
    if Runtime.current is not None:
        Runtime.current.on_test_stop()


@events.quitting.add_listener
def _quitting(environment: Any, **_: Any) -> None:
    if Runtime.current is not None:
        Runtime.current.on_quitting()
