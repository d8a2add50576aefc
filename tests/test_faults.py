"""The fault matrix (docs/reliability.md), row by row: real calls (``Call`` with a real session,
REST client and score poller) against the simulator, through a fault-injecting TCP proxy
(``tests/support/faultproxy.py``), each bounded in time. In every row the call ends within its
bound, its outcome and error code say what happened, and the accounting holds:
``started = completed + failed + aborted`` and ``completed = scored + score_missing + score_pending``.

The last test is the whole run: ``locust -f locustfile.py`` through the proxy while connections
are reset and cut and the platform stalls, ending on time with its summary written.
"""

from __future__ import annotations

import functools
import json
import random
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from support.faultproxy import FaultProxy, stalled
from support.locust_run import LOCUST, ROOT, check_accounting, locust_env, silent_scenario
from support.net import free_port

from athos_load.api import AthosApi, ScoreBoard, ScorePoller, WebhookReceiver
from athos_load.audio import Clip
from athos_load.call import Call, CallSettings, ScoreDrain
from athos_load.metrics import Metrics, Outcome
from athos_load.pacer import AudioPacer
from athos_load.scenario import HangupPolicy, Scenario, Turn
from athos_load.session import ReconnectPolicy, RoleplaySession
from athos_load.simproc import SimulatorProcess
from athos_load.wire import AudioFormat, ErrorCode, realtime_url

FMT = AudioFormat()
DRILL = "cold-call-discovery"
BOUND = 15.0  # seconds any one call of these may take, faults included


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def silent_call(seconds: float = 3.0) -> Scenario:
    """One turn of silence (nothing for the persona to answer) and a hang-up right after it: a call
    of ``seconds`` in which every wait is the tool's own."""
    clip = Clip(None, FMT, (bytes(FMT.frame_bytes),) * round(seconds / FMT.frame_seconds), ())
    return Scenario(
        name="s", drill=DRILL, turns=(Turn(clip, "silence"),), think_time=(0.0, 0.0),
        hangup=HangupPolicy.IMMEDIATELY, reply_timeout=0.5, max_call_seconds=BOUND,
    )  # fmt: skip


class Rig:
    """One call's world: the simulator behind the proxy, the tool's shared services, a poller."""

    def __init__(self, sim: SimulatorProcess, proxy: FaultProxy, *, score_timeout: float = 4.0) -> None:
        self.sim, self.proxy = sim, proxy
        self.metrics = Metrics()
        self.board = ScoreBoard()
        self.api = AthosApi(proxy.url, sim.api_key, timeout=2.0)
        self.poller = ScorePoller(self.api, self.board, interval=0.2, max_interval=0.5).start()
        self.reports: list[dict[str, Any]] = []
        self.settings = CallSettings(
            api=self.api, ws_url=realtime_url(proxy.url), board=self.board, metrics=self.metrics,
            pacer=AudioPacer(), audio=FMT, drain=ScoreDrain(), score_timeout=score_timeout, connect_timeout=1.5,
            transport=functools.partial(
                RoleplaySession, read_timeout=0.2, idle_timeout=4.0, hangup_timeout=2.0,
                reconnect=ReconnectPolicy(max_attempts=3, initial_delay=0.1, max_delay=0.5),
            ),
        )  # fmt: skip

    def start(self, scenario: Scenario) -> tuple[Call, gevent.Greenlet]:
        call = Call(self.settings, scenario, lambda **kw: self.reports.append(kw), random.Random(1))
        return call, gevent.spawn(call.run)

    def when_ready(self, call: Call, after: float = 0.5) -> None:
        """Wait until the call is up (bounded), then ``after`` seconds more."""
        with gevent.Timeout(10):
            while call.conversation.ready_at is None:
                gevent.sleep(0.02)
        gevent.sleep(after)

    def finish(self, running: gevent.Greenlet, started: float) -> dict[str, Any]:
        running.get(timeout=BOUND)
        assert time.monotonic() - started < BOUND
        summary = self.metrics.summary()
        check_accounting(summary)
        assert summary["calls"]["started"] == 1
        return summary

    def close(self) -> None:
        self.poller.stop()
        self.api.close()


@pytest.fixture
def rig(sim_factory) -> Iterator[Rig]:
    sim = sim_factory()
    proxy = FaultProxy(port_of(sim.http_url))
    rig = Rig(sim, proxy)
    yield rig
    rig.close()
    proxy.stop()


# -- connections cut, reset, gone half-open ----------------------------------------------------------


@pytest.mark.parametrize("cut", ["fin", "rst"])
def test_a_connection_cut_mid_call_is_resumed_and_the_call_completes(rig, cut):
    started = time.monotonic()
    call, running = rig.start(silent_call())
    rig.when_ready(call)
    assert rig.proxy.inject(cut) >= 1
    summary = rig.finish(running, started)
    assert call.outcome is Outcome.COMPLETED, summary["errors"]
    assert summary["reconnects"] == 1 and summary["reconnect"]["count"] == 1
    assert summary["errors"] == {} and summary["calls"]["scored"] == 1  # the platform kept the call


def test_a_connection_gone_half_open_fails_the_call_within_its_deadlines(rig):
    """Nothing arrives and nothing closes: the silence is noticed (idle timeout), the resume
    attempts reach a proxy that never answers their handshake (connect timeout each)."""
    started = time.monotonic()
    call, running = rig.start(silent_call(seconds=8.0))  # still speaking when the silence is noticed
    rig.when_ready(call)
    rig.proxy.inject("blackhole")
    summary = rig.finish(running, started)
    assert call.outcome is Outcome.FAILED
    assert summary["errors"] == {ErrorCode.RECONNECT_FAILED: 1}
    assert summary["reconnects"] == 1 and summary["reconnect"]["count"] == 0  # a drop never recovered


# -- the platform killed and restarted, or stalled -----------------------------------------------------


def test_a_platform_killed_and_restarted_mid_call_fails_the_call_it_forgot(rig, sim_factory):
    started = time.monotonic()
    call, running = rig.start(silent_call(seconds=4.0))
    rig.when_ready(call)
    port = port_of(rig.sim.http_url)
    rig.sim.kill()
    restarted = sim_factory("--port", str(port))  # the same address, none of the old calls
    assert port_of(restarted.http_url) == port
    summary = rig.finish(running, started)
    assert call.outcome is Outcome.FAILED
    # the resume reached the new process, which refused it; or every attempt came before it listened
    assert set(summary["errors"]) <= {ErrorCode.UNKNOWN_CALL, ErrorCode.RECONNECT_FAILED}
    assert sum(summary["errors"].values()) == 1


def test_a_platform_stalled_mid_call_is_waited_for(rig):
    """SIGSTOP for 0.8 s, under the idle timeout: the platform resumes where it was, the call
    completes without a reconnect."""
    started = time.monotonic()
    call, running = rig.start(silent_call())
    rig.when_ready(call)
    with stalled(rig.sim.process.pid):
        gevent.sleep(0.8)
    summary = rig.finish(running, started)
    assert call.outcome is Outcome.COMPLETED and summary["errors"] == {}
    assert summary["calls"]["scored"] == 1


def test_a_platform_stalled_at_the_hang_up_fails_the_call_at_the_deadline(rig):
    started = time.monotonic()
    call, running = rig.start(silent_call(seconds=2.0))
    rig.when_ready(call, after=1.5)  # near the end of the turn: the stall spans the hang-up
    with stalled(rig.sim.process.pid):
        summary = rig.finish(running, started)
    assert call.outcome is Outcome.FAILED
    assert set(summary["errors"]) & {ErrorCode.HANGUP_TIMEOUT, ErrorCode.RECONNECT_FAILED}


# -- scores: webhooks failing, polling recovers them ----------------------------------------------------


def test_scores_whose_webhooks_fail_are_recovered_by_polling(sim_factory):
    receiver = WebhookReceiver(ScoreBoard(), "whsec").start()
    sim = sim_factory("--webhook-url", receiver.url, "--webhook-failure-rate", "1", "--webhook-retries", "1")
    proxy = FaultProxy(port_of(sim.http_url))
    rig = Rig(sim, proxy)
    try:
        started = time.monotonic()
        call, running = rig.start(silent_call(seconds=1.0))
        summary = rig.finish(running, started)
        assert call.outcome is Outcome.COMPLETED and summary["calls"]["scored"] == 1
        gevent.sleep(0.5)  # the poller counts a pass when it is through
        assert rig.poller.counts["delivered"] >= 1 and receiver.counts["accepted"] == 0
    finally:
        rig.close()
        proxy.stop()
        receiver.stop()


# -- the whole run ----------------------------------------------------------------------------------------


def test_a_run_through_faults_ends_on_time_with_every_call_accounted_for(sim_factory, tmp_path):
    """12 s of 8 users making 2-second calls through the proxy: connections reset at 3 s, the
    platform stalled for 1.5 s at 5 s, connections cut at 8 s. The run ends within -t plus its
    stop and drain times."""
    listen = free_port()
    sim = sim_factory("--webhook-url", f"http://127.0.0.1:{listen}/webhooks/athos")
    proxy = FaultProxy(port_of(sim.http_url))
    env = locust_env(ATHOS_API_KEY=sim.api_key, ATHOS_WEBHOOK_SECRET=sim.webhook_secret)
    scenario = silent_scenario(tmp_path, 2.0)
    args = [
        "--host", proxy.url, "--athos-transport", "reference",
        "--headless", "-u", "8", "-r", "8", "-t", "12s", "--athos-scenario", str(scenario),
        "--athos-webhook-listen", f"127.0.0.1:{listen}", "--athos-summary", str(tmp_path / "s.json"),
        "--athos-drain-timeout", "5", "--stop-timeout", "0",
    ]  # fmt: skip
    started = time.monotonic()
    run = subprocess.Popen(
        [*LOCUST, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        time.sleep(3)
        hit = proxy.inject("rst")
        time.sleep(2)
        with stalled(sim.process.pid):
            time.sleep(1.5)
        time.sleep(1.5)
        proxy.inject("fin")
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(5)
        proxy.stop()
    took = time.monotonic() - started
    # -t 12 s, then each call's hang-up (3 s at most), the 5 s drain, and the process's own start and stop
    assert took < 12 + 3 + 5 + 8, took
    assert run.returncode in (0, 1), err[-3000:]  # 1: Locust's own, for the failures the faults caused
    assert "Traceback" not in err, err[-3000:]
    summary = json.loads((tmp_path / "s.json").read_text())
    check_accounting(summary)
    assert hit >= 1 and summary["reconnects"] >= 1, summary
    assert summary["calls"]["completed"] > 0
