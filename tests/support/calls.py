"""Real calls run in this process (gevent) against a simulator, without Locust: the call flow
and the session on real sockets, judged against the simulator's truth log."""

from __future__ import annotations

import random
from typing import Any

import gevent
import gevent.pool

from athos_load.api import AthosApi, ScoreBoard, ScorePoller
from athos_load.call import Call, CallSettings, ScoreDrain
from athos_load.metrics import Metrics
from athos_load.pacer import AudioPacer
from athos_load.scenario import Scenario
from athos_load.wire import AudioFormat

FMT = AudioFormat()


def run_calls(
    sim: Any, plan: list[Scenario], stagger: float = 0.1, metrics: Metrics | None = None, **options: Any
) -> tuple[list[Call], Metrics, list[dict]]:
    """Run one call per scenario in ``plan``, all at once (started ``stagger`` apart), to the end,
    recording into ``metrics`` (a new one by default); ``options`` are more of :class:`CallSettings`' fields."""
    api, board = AthosApi(sim.http_url, sim.api_key), ScoreBoard()
    # no webhook here; a transcript is readable once the call is scored, so a check polls for scores
    checking = bool(options.get("transcript_check"))
    poller = ScorePoller(api, board, interval=0.2).start() if checking else None
    settings = CallSettings(
        api=api,
        ws_url=sim.ws_url,
        board=board,
        metrics=metrics if metrics is not None else Metrics(),
        pacer=AudioPacer(),
        audio=FMT,
        drain=ScoreDrain(),
        score_timeout=20.0 if checking else 0.0,
        **options,
    )
    reports: list[dict] = []
    calls = [Call(settings, s, lambda **kw: reports.append(kw), random.Random(i)) for i, s in enumerate(plan)]
    group = gevent.pool.Group()
    for i, call in enumerate(calls):
        group.add(gevent.spawn_later(i * stagger, call.run))
    try:
        group.join(timeout=60, raise_error=True)
    finally:
        if poller is not None:
            poller.stop()
    return calls, settings.metrics, reports
