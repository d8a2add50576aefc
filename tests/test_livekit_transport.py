"""The LiveKit transport's driver with the real livekit SDK (its native library, its asyncio loop in a
thread of its own, signals handed to gevent), where it can be tried without a LiveKit server: a join
that is refused, a redeem that fails, and the microphone's real-time pacing on the room loop. No
LiveKit server runs on these machines; the room's signals are tested in tests/unit/test_livekit_room.py."""

from __future__ import annotations

import asyncio
import random
import socket
import time

import gevent
import pytest
from support.fakes import FMT, FakeApi, make_scenario

pytest.importorskip("livekit.rtc")

from athos_load.api import ScoreBoard  # noqa: E402
from athos_load.call import Call, CallSettings, ScoreDrain  # noqa: E402
from athos_load.livekit import LiveKitTransport, Microphone, room_loop  # noqa: E402
from athos_load.metrics import Metrics, Outcome  # noqa: E402
from athos_load.transport import TransportError  # noqa: E402
from athos_load.wire import Event  # noqa: E402
from athos_load.wire.pacing import Schedule  # noqa: E402


class Heard:
    def __init__(self) -> None:
        self.events: list[tuple[str, float]] = []

    def event(self, message: Event, at: float) -> None:
        self.events.append((message.name, at))

    def audio(self, frame: bytes, at: float) -> None:
        pass


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when this returns: a refused connection


def test_a_refused_join_is_connect_failed_in_bounded_time_and_gevent_runs_on_meanwhile():
    heard = Heard()
    transport = LiveKitTransport(
        listener=heard, token="ticket", drill_key="d", url=f"ws://127.0.0.1:{closed_port()}", audio=FMT,
        connect_timeout=8.0,
    )  # fmt: skip
    ticks = []
    ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.01)) for _ in range(2000)])
    started = time.monotonic()
    with pytest.raises(TransportError) as refused:
        transport.connect()
    took = time.monotonic() - started
    ticker.kill()
    assert refused.value.code == "connect_failed" and "ConnectError" in refused.value.message
    assert [name for name, _ in heard.events] == ["connecting", "error"]  # a refused join gets no ended
    assert took < 8.0 and len(ticks) >= took / 0.01 / 4  # the hub was not blocked while the SDK tried
    assert transport.wait_ended(0)


def test_a_call_over_livekit_whose_redeem_is_refused_is_one_failed_call_with_one_error():
    api = FakeApi()
    api.refuse_redeem = "TENANT_QUOTA_EXCEEDED"
    metrics = Metrics()
    settings = CallSettings(
        api=api, ws_url="", board=ScoreBoard(), metrics=metrics, pacer=None, audio=FMT, drain=ScoreDrain(),  # type: ignore[arg-type]
        transport=LiveKitTransport,
    )  # fmt: skip
    reports: list[dict] = []
    call = Call(settings, make_scenario(), lambda **kw: reports.append(kw), random.Random(1))
    with gevent.Timeout(10):
        call.run()
    assert call.outcome is Outcome.FAILED
    assert metrics.summary()["errors"] == {"TENANT_QUOTA_EXCEEDED": 1}
    assert [(r["name"], str(r["exception"])) for r in reports if r["exception"]] == [
        ("connect_ready", "TENANT_QUOTA_EXCEEDED"), ("call", "TENANT_QUOTA_EXCEEDED"),
    ]  # fmt: skip


def test_the_microphone_sends_a_frame_every_period_and_a_clip_where_it_was_queued():
    loop = room_loop()
    sent: list[tuple[float, bytes]] = []

    async def capture(frame: bytes) -> None:
        sent.append((time.monotonic(), frame))

    start = time.monotonic() + 0.05
    mic = Microphone(capture, Schedule(start, 0.02), b"s")
    clip = tuple(bytes([k]) for k in range(1, 6))
    loop.soon(mic.queue, 10, clip)
    task = loop.run(mic.run())
    gevent.sleep(0.6)
    task.cancel()
    frames = [f for _, f in sent[:25]]
    assert frames[:10] == [b"s"] * 10 and frames[10:15] == list(clip) and frames[15:20] == [b"s"] * 5
    lateness = [at - (start + k * 0.02) for k, (at, _) in enumerate(sent[:25])]
    assert min(lateness) >= 0  # never early
    assert asyncio.iscoroutinefunction(capture)
