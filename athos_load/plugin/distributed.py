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

A worker that disappears (killed, its network gone: Locust marks it missing when its heartbeats
stop) or never sends its final delta is *lost*. From what that worker reported, the master counts
its calls started and not finished as ``lost`` and its completed calls whose score it had not
settled as ``score_pending``, so ``started = completed + failed + aborted + lost`` and ``completed =
scored + score_missing + score_pending`` still hold; it zeroes the worker's gauges, says so in the
log, lists it in the summary (``lost_workers``) and the run's verdict is invalid. Anything the
worker sends afterwards is ignored: its calls are already accounted for.
"""

from __future__ import annotations

import logging
import time
from collections import Counter as Tally
from collections import OrderedDict
from typing import Any

import gevent
from locust.runners import STATE_MISSING, STATE_RUNNING, STATE_SPAWNING

from ..api import Score, ScoreBoard
from ..metrics import Metrics, Outcome
from ..wire.fields import iso

logger = logging.getLogger(__name__)

MSG_ENDED = "athos_ended"
MSG_SCORED = "athos_scored"
MSG_FINAL = "athos_final"
REPORT_KEY = "athos"
WATCH_SECONDS = 1.0  # how often the master looks for workers Locust has marked missing
# The counters a worker's calls are accounted by: what the master needs to account for a lost one.
ACCOUNTS = ("athos_sessions_started", "athos_sessions", "athos_scores", "athos_scores_missing", "athos_scores_pending")


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
        call_id, score, via, *failed = msg.data  # failed: a call.scored with success false (its reason)
        self.board.deliver(Score(call_id, score, time.monotonic(), via, failed[0] if failed else None))


class MasterHub:
    """The master's end: merges worker deltas and routes each score to the worker that owns it."""

    def __init__(self, runner: Any, metrics: Metrics, board: ScoreBoard, *, score_timeout: float) -> None:
        self.runner = runner
        self.metrics = metrics
        self.board = board
        self.score_timeout = score_timeout
        self.finals: set[str] = set()
        self.lost: list[dict[str, Any]] = []  # the summary's lost_workers
        self._lost_ids: set[str] = set()
        self._sources: dict[str, str] = {}  # client id -> its label, fixed at its first report
        self._accounts: dict[str, Tally[tuple[str, tuple[str, ...]]]] = {}  # client id -> what it reported
        self._owners: OrderedDict[str, tuple[float, str]] = OrderedDict()  # callId -> (stop waiting at, worker)
        runner.register_message(MSG_ENDED, self._on_ended)
        runner.register_message(MSG_FINAL, self._on_final)
        runner.environment.events.worker_report.add_listener(self._on_report)
        self._watch = gevent.spawn(self._watch_workers)

    def source(self, client_id: str) -> str:
        """The low-cardinality label for a worker: its index, as Locust numbers them."""
        if client_id in self._sources:
            return self._sources[client_id]
        try:
            source = f"w{self.runner.get_worker_index(client_id)}"
        except Exception:  # a worker that already left; its numbers still count
            return "w?"
        self._sources[client_id] = source
        return source

    def stop(self) -> None:
        self._watch.kill(block=False)

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
            expected = {c.id for c in self.runner.clients.all} | set(self._accounts)
            missing = expected - self.finals - self._lost_ids
            if not missing or time.monotonic() >= deadline:
                break
            gevent.sleep(0.1)
        for client_id in sorted(missing):
            self._lose(client_id, "sent no final report")
        return missing

    def _on_report(self, client_id: str, data: dict[str, Any], **_: Any) -> None:
        delta = data.get(REPORT_KEY)
        if delta is not None:
            self._take(client_id, delta)

    def _on_final(self, msg: Any, **_: Any) -> None:
        self._take(msg.node_id, msg.data)
        self.finals.add(msg.node_id)

    def _take(self, client_id: str, delta: dict[str, Any]) -> None:
        if client_id in self._lost_ids:
            logger.warning("athos-load: ignoring a report of %s, already counted lost", self.source(client_id))
            return
        self.metrics.merge(delta, self.source(client_id))
        accounts = self._accounts.setdefault(client_id, Tally())
        for name, labels, n in delta["counters"]:
            if name in ACCOUNTS:
                accounts[(name, tuple(labels))] += n

    # -- lost workers ------------------------------------------------------------------------------

    def _watch_workers(self) -> None:
        while True:
            gevent.sleep(WATCH_SECONDS)
            for client_id in list(self._accounts):
                if client_id in self.finals or client_id in self._lost_ids:
                    continue
                client = self.runner.clients.get(client_id)
                if client is None or client.state == STATE_MISSING:
                    self._lose(client_id, "stopped sending heartbeats")

    def _lose(self, client_id: str, why: str) -> None:
        """Account for a worker that is gone from what it reported (see the module's docstring)."""
        self._lost_ids.add(client_id)
        source = self.source(client_id)
        accounts = self._accounts.get(client_id, Tally())

        def reported(name: str, scenario: str, outcome: str | None = None) -> float:
            return accounts[(name, (scenario,) if outcome is None else (scenario, outcome))]

        m = self.metrics
        lost = unsettled = 0.0
        for scenario in sorted({labels[0] for _, labels in accounts}):
            finished = sum(reported("athos_sessions", scenario, o) for o in Outcome)
            calls = max(0.0, reported("athos_sessions_started", scenario) - finished)
            settled = sum(reported(name, scenario) for name in ACCOUNTS[2:])
            scores = max(0.0, reported("athos_sessions", scenario, Outcome.COMPLETED) - settled)
            if calls:
                m.sessions.inc(calls, scenario=scenario, outcome=Outcome.LOST)
            if scores:
                m.scores_pending.inc(scores, scenario=scenario)
            lost, unsettled = lost + calls, unsettled + scores
        m.active.pop(source, None)  # its calls are in progress no more
        m.health.pop(source, None)
        for call_id, (_, owner) in list(self._owners.items()):
            if owner == client_id:
                self._owners.pop(call_id)
                self.board.forget(call_id)
        self.lost.append(
            {"worker": source, "id": client_id, "at": iso(time.time()), "why": why,
             "calls_lost": lost, "scores_unsettled": unsettled}
        )  # fmt: skip
        logger.warning(
            "athos-load: worker %s (%s) %s: lost; %d unfinished calls counted lost, %d unsettled scores pending",
            source, client_id, why, lost, unsettled,
        )  # fmt: skip

    # -- scores ------------------------------------------------------------------------------------

    def _on_ended(self, msg: Any, **_: Any) -> None:
        call_id, worker = msg.data, msg.node_id
        if worker in self._lost_ids:
            return
        self._sweep()
        self._owners[call_id] = (time.monotonic() + self.score_timeout, worker)
        result = self.board.expect(call_id)

        def forward(result: Any) -> None:
            score: Score = result.value
            if self._owners.pop(call_id, None) is None:
                return  # its worker was lost meanwhile
            self.board.forget(call_id)
            self.runner.send_message(
                MSG_SCORED, [score.call_id, score.score, score.via, score.failed], client_id=worker
            )

        result.rawlink(forward)

    def _sweep(self) -> None:
        """Forget owners whose score never came: the worker has counted it missing by now."""
        now = time.monotonic()
        while self._owners:
            call_id, (until, _) = next(iter(self._owners.items()))
            if until > now:
                return
            self._owners.popitem(last=False)
            self.board.forget(call_id)
