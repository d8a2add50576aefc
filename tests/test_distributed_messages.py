"""The master/worker messages (:mod:`athos_load.plugin.distributed`) over a fake message bus, in
milliseconds: deltas merge on the master, a score reaches the worker that owns the call, and the
end of a run waits for each worker's last delta. The real processes are in test_distributed.py."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import gevent
from locust.event import Events
from locust.runners import STATE_MISSING

from athos_load.api import Score, ScoreBoard
from athos_load.metrics import Metrics, Outcome, ScoreOutcome, Timing
from athos_load.plugin import distributed
from athos_load.plugin.distributed import MasterHub, WorkerLink


class Bus:
    """Locust's master/worker messaging, reduced to what the hub and links use."""

    def __init__(self) -> None:
        self.master = Node(self, "master")
        self.workers: dict[str, Node] = {}

    def worker(self, node_id: str) -> Node:
        node = self.workers[node_id] = Node(self, node_id)
        return node

    def send(self, sender: Node, name: str, data: Any, client_id: str | None) -> None:
        target = self.master if sender is not self.master else self.workers[client_id]  # type: ignore[index]
        if name in target.handlers:
            target.handlers[name](SimpleNamespace(data=data, node_id=sender.node_id))
        else:
            target.unhandled.append((name, data))

    def report(self, worker: Node) -> None:
        """Locust's 3-second worker report: the worker fills ``data``, the master reads it."""
        data: dict[str, Any] = {}
        worker.environment.events.report_to_master.fire(client_id=worker.node_id, data=data)
        self.master.environment.events.worker_report.fire(client_id=worker.node_id, data=data)


class Clients(dict):
    """The master's ``runner.clients``: worker nodes by id."""

    @property
    def all(self) -> list[Any]:
        return list(self.values())


class Node:
    def __init__(self, bus: Bus, node_id: str) -> None:
        self.bus = bus
        self.node_id = node_id
        self.handlers: dict[str, Any] = {}
        self.unhandled: list[tuple[str, Any]] = []
        self.environment = SimpleNamespace(events=Events())
        self.clients = Clients()

    def register_message(self, name: str, handler: Any) -> None:
        self.handlers[name] = handler

    def send_message(self, name: str, data: Any, client_id: str | None = None) -> None:
        self.bus.send(self, name, data, client_id)

    def get_worker_index(self, client_id: str) -> int:
        return list(self.bus.workers).index(client_id)


def cluster(workers: int = 2) -> tuple[Bus, MasterHub, list[WorkerLink]]:
    bus = Bus()
    hub = MasterHub(bus.master, Metrics(), ScoreBoard(), score_timeout=5.0)
    links = [WorkerLink(bus.worker(f"node{i}"), Metrics(source="local"), ScoreBoard()) for i in range(workers)]
    bus.master.clients.update({node_id: SimpleNamespace(id=node_id, state="running") for node_id in bus.workers})
    return bus, hub, links


def test_the_master_merges_each_workers_report_and_names_the_worker():
    bus, hub, links = cluster()
    single = Metrics()
    for i, link in enumerate(links):
        for m in (link.metrics, single):
            m.timings[Timing.CONNECT_READY].observe(0.1 * (i + 1), scenario="s")
            m.call_started("s")
            m.call_finished("s", Outcome.COMPLETED, 30.0)
        link.metrics.loop_lag.observe(0.002, worker=link.metrics.source)
    for worker in bus.workers.values():
        bus.report(worker)
        bus.report(worker)  # a second report carries only what is new: nothing
    assert hub.metrics.summary()["calls"] == single.summary()["calls"]
    assert hub.metrics.summary()[Timing.CONNECT_READY] == single.summary()[Timing.CONNECT_READY]
    assert sorted(key for key in hub.metrics.loop_lag.series) == [("w0",), ("w1",)]


def test_a_score_the_master_receives_reaches_the_worker_that_owns_the_call():
    bus, hub, (first, second) = cluster()
    waiting = gevent.spawn(second.board.wait, "athos_call_2", 2.0)
    gevent.sleep(0)
    second.announce("athos_call_2")
    hub.board.deliver(Score("athos_call_2", 87.0, 0.0, "webhook"))  # the webhook arrives at the master
    score = waiting.get(timeout=2.0)
    assert (score.call_id, score.score, score.via) == ("athos_call_2", 87.0, "webhook")
    assert first.board.wait("athos_call_2", 0.01) is None  # not the other worker's
    assert list(hub.board.waiting) == []  # forwarded, then forgotten on the master


def test_the_end_of_a_run_asks_running_workers_to_stop_and_waits_for_each_final_delta():
    bus, hub, (first, second) = cluster()
    first.metrics.call_started("s")
    first.send_final()
    missing = hub.wait_for_finals(0.3)
    assert missing == {"node1"}  # the second never sent its final delta within the time given
    assert [name for name, _ in bus.workers["node1"].unhandled] == ["stop"]  # each running worker was asked
    assert hub.metrics.summary()["calls"]["started"] == 1
    assert [(w["worker"], w["why"]) for w in hub.lost] == [("w1", "sent no final report")]


def test_a_worker_that_goes_missing_is_lost_and_the_totals_still_add_up(monkeypatch):
    monkeypatch.setattr(distributed, "WATCH_SECONDS", 0.02)
    bus, hub, (first, second) = cluster()
    for _ in range(3):
        first.metrics.call_started("s")
        first.metrics.call_finished("s", Outcome.COMPLETED, 10.0)
        first.metrics.score_settled("s", ScoreOutcome.SCORED)
        second.metrics.call_started("s")
    second.metrics.call_finished("s", Outcome.COMPLETED, 10.0)  # its score still awaited
    for worker in bus.workers.values():
        bus.report(worker)
    assert hub.metrics.active_calls() == 2
    bus.master.clients["node1"].state = STATE_MISSING  # Locust: its heartbeats stopped
    with gevent.Timeout(2):
        while not hub.lost:
            gevent.sleep(0.01)
    (lost,) = hub.lost
    assert (lost["worker"], lost["calls_lost"], lost["scores_unsettled"]) == ("w1", 2, 1)
    calls = hub.metrics.summary()["calls"]
    assert calls["started"] == calls["completed"] + calls["failed"] + calls["aborted"] + calls["lost"] == 6
    assert calls["completed"] == calls["scored"] + calls["score_missing"] + calls["score_pending"] == 4
    assert calls["lost"] == 2 and calls["score_pending"] == 1
    assert hub.metrics.active_calls() == 0  # its gauges went with it
    second.metrics.call_finished("s", Outcome.COMPLETED, 10.0)  # whatever it says later was accounted for
    bus.report(bus.workers["node1"])
    assert hub.metrics.summary()["calls"] == calls
