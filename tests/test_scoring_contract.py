"""Scores as the contract has them, against the built-in simulator over loopback: call.scored with
``success: false`` counted score_failed with its reason, a redelivery with the same webhook id
counted once, the score fetched with ``GET /calls/:id``, and a failed REST step's request id in
what the tool logs. Calls run in-process (gevent, no Locust); every wait is bounded."""

from __future__ import annotations

import logging
import random

import gevent
import gevent.pool
from support.locust_run import check_accounting

from athos_load.api import AthosApi, ScoreBoard, WebhookReceiver
from athos_load.audio import Clip
from athos_load.call import Call, CallSettings, ScoreDrain
from athos_load.metrics import Metrics, Outcome
from athos_load.pacer import AudioPacer
from athos_load.scenario import HangupPolicy, Scenario, Turn
from athos_load.sim.config import SIM_WEBHOOK_SECRET
from athos_load.wire import AudioFormat

FMT = AudioFormat()
FAST = ("--ready-latency", "fixed:0.05", "--score-delay", "fixed:0.2", "--drops-per-minute", "0")


def short_call() -> Scenario:
    clip = Clip(None, FMT, (bytes(FMT.frame_bytes),) * 25, ())  # half a second of silence, then hang up
    return Scenario(
        name="s", drill="ma-full-sale", turns=(Turn(clip, "silence"),), think_time=(0.0, 0.0),
        hangup=HangupPolicy.IMMEDIATELY, reply_timeout=0.5, max_call_seconds=10.0,
    )  # fmt: skip


def run(sim, board: ScoreBoard, n: int, score_timeout: float = 10.0) -> tuple[list[Call], Metrics, list[dict]]:
    metrics = Metrics()
    settings = CallSettings(
        api=AthosApi(sim.http_url, sim.api_key), ws_url="", board=board, metrics=metrics, pacer=AudioPacer(),
        audio=FMT, drain=ScoreDrain(), score_timeout=score_timeout,
    )  # fmt: skip
    reports: list[dict] = []
    calls = [Call(settings, short_call(), lambda **kw: reports.append(kw), random.Random(i)) for i in range(n)]
    group = gevent.pool.Group()
    for call in calls:
        group.spawn(call.run)
    group.join(timeout=30, raise_error=True)
    return calls, metrics, reports


def test_a_score_that_failed_is_score_failed_with_its_reason_and_a_redelivery_counts_once(sim_factory):
    board = ScoreBoard()
    receiver = WebhookReceiver(board, SIM_WEBHOOK_SECRET).start()
    try:
        sim = sim_factory(
            *FAST, "--webhook-url", receiver.url, "--score-fail-rate", "1", "--webhook-duplicate-rate", "1"
        )
        calls, metrics, reports = run(sim, board, 3)
        summary = metrics.summary()
        check_accounting({"calls": summary["calls"]})
        assert all(call.outcome is Outcome.COMPLETED for call in calls)
        assert summary["calls"]["score_failed"] == 3 and summary["calls"]["scored"] == 0
        assert summary["score_failed_reasons"] == {"SCORING_INCOMPLETE": 3}
        assert summary["errors"] == {}  # a score the platform could not make is counted apart, not an error
        failed = [r for r in reports if r["name"] == "end_to_score"]
        assert [str(r["exception"]) for r in failed] == ["SCORING_INCOMPLETE"] * 3
        assert not [r for r in reports if r["name"] == "transcript_fetch"]  # a call that did not score is not readable
        gevent.sleep(1.0)  # the duplicates (same X-Athos-Webhook-Id) arrive right behind
        assert receiver.counts["accepted"] == 3 and receiver.counts["duplicate"] == 3
        assert receiver.counts["not_scored"] == 3
        assert summary["quota"] == {"calls": 3, "tokens": 3}
    finally:
        receiver.stop()


def test_a_scored_call_is_fetched_and_its_score_read(sim_factory):
    board = ScoreBoard()
    receiver = WebhookReceiver(board, SIM_WEBHOOK_SECRET).start()
    try:
        sim = sim_factory(*FAST, "--webhook-url", receiver.url)
        calls, metrics, reports = run(sim, board, 2)
        summary = metrics.summary()
        assert summary["calls"]["scored"] == 2 and summary["end_to_score"]["count"] == 2
        assert [r["exception"] for r in reports if r["name"] == "transcript_fetch"] == [None, None]
        assert all(call.score is not None and 0 <= call.score <= 100 for call in calls)
    finally:
        receiver.stop()


def test_a_refused_rest_step_names_its_request_id(sim_factory, caplog):
    sim = sim_factory(*FAST, "--quota-calls", "1")
    caplog.set_level(logging.WARNING, logger="athos_load.call")
    calls, metrics, reports = run(sim, ScoreBoard(), 2, score_timeout=0.0)
    refused = [r for r in reports if r["name"] == "token_mint" and r["exception"] is not None]
    assert [str(r["exception"]) for r in refused] == ["TENANT_QUOTA_EXCEEDED"]
    assert metrics.summary()["errors"] == {"TENANT_QUOTA_EXCEEDED": 1}
    lines = [r.getMessage() for r in caplog.records if "TENANT_QUOTA_EXCEEDED" in r.getMessage()]
    assert len(lines) == 1 and "(request req_" in lines[0], lines
