"""A user class picks its calls' transport with a class attribute, as Locust's users pick clients."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import gevent
from locust.env import Environment
from support.fakes import CALL_ID, FakeTransport, Harness, Platform, make_scenario

from athos_load.plugin.users import RoleplayUser


def test_a_users_transport_attribute_carries_its_calls():
    h = Harness()
    made: list[FakeTransport] = []

    def fake(**options: object) -> FakeTransport:
        made.append(FakeTransport(Platform(h.board), h.clock, **options))  # type: ignore[arg-type]
        return made[-1]

    class FakeLegRep(RoleplayUser):
        transport = functools.partial(fake)

    env = Environment(user_classes=[FakeLegRep])
    env.athos = SimpleNamespace(user_settings=lambda: (h.settings, [make_scenario()]))  # type: ignore[attr-defined]
    seen: list[dict] = []
    env.events.request.add_listener(lambda **kw: seen.append(kw))
    user = FakeLegRep(env)
    with gevent.Timeout(10):
        user.on_start()
        user.call()
    assert len(made) == 1 and h.sessions == []  # the user's transport, not the run's
    assert made[0].end_reason == "hangup" and made[0].options["drill_key"] == "fake-drill"
    assert h.calls()["completed"] == 1 and h.calls()["scored"] == 1
    assert ("call", None) in [(e["name"], e["exception"]) for e in seen]
    assert h.announced == [CALL_ID]
