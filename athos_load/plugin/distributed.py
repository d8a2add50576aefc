"""Locust master/worker mode: workers record, the master merges, serves /metrics and owns scores.

Messages (Locust's custom messages, plus its own 3-second worker report):

=================  ===============  ========================================================
``report``         worker → master  ``data["athos"]``: the worker's metrics delta (Locust's
                                    ``report_to_master``), merged by addition on the master
``athos_ended``    worker → master  a completed call's callId: the master now knows the owner
``athos_scored``   master → worker  the ``call.scored`` the master's webhook (or poller) got for
                                    a call that worker owns; the worker times end→score on its
                                    own clock, as in a single process
``athos_final``    worker → master  after the worker drained its pending scores at the end of a
                                    run: its last delta. The master writes the summary once it
                                    has every worker's, so nothing recorded is lost
=================  ===============  ========================================================
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any

import gevent
from locust.runners import STATE_RUNNING, STATE_SPAWNING

from ..api import Score, ScoreBoard
from ..metrics import Metrics

logger = logging.getLogger(__name__)

MSG_ENDED = "athos_ended"
MSG_SCORED = "athos_scored"
MSG_FINAL = "athos_final"
REPORT_KEY = "athos"


class WorkerLink:
    """The worker's end: reports deltas, announces ended calls, receives their scores."""

    def __init__(self, runner: Any, metrics: Metrics, board: ScoreBoard) -> None:
        self.runner = runner
        self.metrics = metrics
        self.board = board
        runner.register_message(MSG_SCORED, self._on_scored)
        runner.environment.events.report_to_master.add_listener(self._on_report)

    def announce(self, call_id: str) -> None:
        self.runner.send_message(MSG_ENDED, call_id)

    def send_final(self) -> None:
        self.runner.send_message(MSG_FINAL, self.metrics.take_delta())

    def _on_report(self, client_id: str, data: dict[str, Any], **_: Any) -> None:
        data[REPORT_KEY] = self.metrics.take_delta()

    def _on_scored(self, msg: Any, **_: Any) -> None:
        call_id, score, via = msg.data
        self.board.deliver(Score(call_id, score, time.monotonic(), via))


class MasterHub:
    """The master's end: merges worker deltas and routes each score to the worker that owns it."""

    def __init__(self, runner: Any, metrics: Metrics, board: ScoreBoard, *, score_timeout: float) -> None:
        self.runner = runner
        self.metrics = metrics
        self.board = board
        self.score_timeout = score_timeout
        self.finals: set[str] = set()
        self._owners: OrderedDict[str, float] = OrderedDict()  # callId -> when to stop waiting
        runner.register_message(MSG_ENDED, self._on_ended)
        runner.register_message(MSG_FINAL, self._on_final)
        runner.environment.events.worker_report.add_listener(self._on_report)

    def source(self, client_id: str) -> str:
        """The low-cardinality label for a worker: its index, as Locust numbers them."""
        try:
            return f"w{self.runner.get_worker_index(client_id)}"
        except Exception:  # a worker that already left; its numbers still count
            return "w?"

    def wait_for_finals(self, timeout: float) -> set[str]:
        """Block until every connected worker sent its final delta, or ``timeout``; returns the missing."""
        # A headless master ends with quit(), which fires test_stop *before* it tells the workers
        # anything (they would get "quit" and exit within 0.5 s, mid-drain). Ask the ones still
        # running to stop first: Locust's own "stop" message, so they stop exactly as they would
        # from the web UI, drain their scores, and send us their final delta.
        for client in self.runner.clients.all:
            if client.state in (STATE_RUNNING, STATE_SPAWNING):
                self.runner.send_message("stop", None, client_id=client.id)
        deadline = time.monotonic() + timeout
        while True:
            missing = {c.id for c in self.runner.clients.all} - self.finals
            if not missing or time.monotonic() >= deadline:
                return missing
            gevent.sleep(0.1)

    def _on_report(self, client_id: str, data: dict[str, Any], **_: Any) -> None:
        delta = data.get(REPORT_KEY)
        if delta is not None:
            self.metrics.merge(delta, self.source(client_id))

    def _on_final(self, msg: Any, **_: Any) -> None:
        self.metrics.merge(msg.data, self.source(msg.node_id))
        self.finals.add(msg.node_id)

    def _on_ended(self, msg: Any, **_: Any) -> None:
        call_id, worker = msg.data, msg.node_id
        self._sweep()
        self._owners[call_id] = time.monotonic() + self.score_timeout
        result = self.board.expect(call_id)

        def forward(result: Any) -> None:
            score: Score = result.value
            self._owners.pop(call_id, None)
            self.board.forget(call_id)
            self.runner.send_message(MSG_SCORED, [score.call_id, score.score, score.via], client_id=worker)

        result.rawlink(forward)

    def _sweep(self) -> None:
        """Forget owners whose score never came: the worker has counted it missing by now."""
        now = time.monotonic()
        while self._owners:
            call_id, until = next(iter(self._owners.items()))
            if until > now:
                return
            self._owners.popitem(last=False)
            self.board.forget(call_id)
