"""The transport seam: one call, one timeline, two transports, the same records.

The timeline (tests/support/hostile.py ``TIMELINE``) is played once by a real WebSocket peer on
loopback to the reference transport (:class:`~athos_load.session.RoleplaySession`, real sockets and
the real pacer, in real time), and once by a transport that is not a WebSocket at all
(tests/support/fakes.py, events and audio injected at the same offsets on a virtual clock). The
call must record the same steps with the same outcomes, and the same timings within what a real
socket and the 20 ms frame grid add.
"""

from __future__ import annotations

import json
import random
from typing import Any

import gevent
import pytest
from support.fakes import FMT, FakeSpoken, FakeTransport, Harness, Platform, make_scenario
from support.hostile import TIMELINE

from athos_load.api import AthosApi, ScoreBoard
from athos_load.call import Call, CallSettings, ScoreDrain
from athos_load.metrics import Metrics
from athos_load.pacer import AudioPacer
from athos_load.session import RoleplaySession
from athos_load.wire import parse_server_message

SCENARIO = {"turns": 2, "reply_timeout": 2.0}
# What the real leg adds to a timing: the rep's clip starts on the next 20 ms frame slot, plus
# loopback and scheduling; generous, since CI machines are noisy.
SLACK_MS = 40.0


def entries(reports: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    return [(r["name"], None if r["exception"] is None else str(r["exception"])) for r in reports]


def test_a_fake_transport_and_the_websocket_one_record_the_same_call(hostile):
    peer = hostile("timeline")
    metrics = Metrics()
    settings = CallSettings(
        api=AthosApi(peer.http_url, "key", timeout=5.0), ws_url=peer.url, board=ScoreBoard(), metrics=metrics,
        pacer=AudioPacer(), audio=FMT, drain=ScoreDrain(), score_timeout=0.05, transport=RoleplaySession,
    )  # fmt: skip
    real: list[dict[str, Any]] = []
    call = Call(settings, make_scenario(**SCENARIO), lambda **kw: real.append(kw), random.Random(1))
    with gevent.Timeout(15):
        call.run()

    class Timeline(Platform):
        connect_seconds = 0.002
        score_after = None

        def connect(self, session: FakeTransport) -> None:
            super().connect(session)
            ready = session.clock
            for offset, message in TIMELINE:
                if isinstance(message, bytes):
                    session.vclock.at(ready + offset, lambda m=message, t=ready + offset: session.hear(t, m))
                else:
                    event = parse_server_message(json.dumps(message))
                    session.vclock.at(ready + offset, lambda e=event: session.emit(e))

        def turn(self, session: FakeTransport, index: int, utterance: FakeSpoken) -> None:
            pass  # the timeline answers

    h = Harness(score_timeout=0.05)
    h.run(Timeline, **SCENARIO)

    assert entries(real) == entries(h.reports)
    assert ("persona_response", None) in entries(real) and ("time_to_first_word", None) not in entries(real)
    for got, expected in zip(real, h.reports, strict=True):
        if expected["response_time"] is None:
            assert got["response_time"] is None, got
        elif got["name"] == "token_mint":
            continue  # a real HTTP request against none
        else:
            assert got["response_time"] == pytest.approx(expected["response_time"], abs=SLACK_MS), got["name"]
    for key in ("persona_response", "endpointing", "response", "speech_onset", "persona_audio_lead"):
        assert metrics.timing(key).count == h.metrics.timing(key).count > 0, key
    assert metrics.summary()["calls"] == h.metrics.summary()["calls"]
