"""The webhook receiver over real HTTP on loopback, and the score board it feeds."""

import time

import gevent
import pytest
import requests

from athos_load.api import Score, ScoreBoard, WebhookReceiver
from athos_load.wire import EVENT_ID_HEADER, SIGNATURE_HEADER, ScoredEvent, sign_webhook

SECRET = "whsec_test"


@pytest.fixture
def receiver():
    board = ScoreBoard()
    rx = WebhookReceiver(board, SECRET, host="127.0.0.1", port=0).start()
    yield rx
    rx.stop()


def deliver(rx, event_id="evt_1", call_id="athos_call_1", *, secret=SECRET, ts=None, body=None, header=None):
    body = body if body is not None else ScoredEvent(event_id, call_id, 80.0, time.time()).serialize().encode()
    ts = int(time.time()) if ts is None else ts
    headers = {"Content-Type": "application/json", EVENT_ID_HEADER: event_id}
    sig = header if header is not None else sign_webhook(secret, ts, body)
    if sig:
        headers[SIGNATURE_HEADER] = sig
    return requests.post(rx.url, data=body, headers=headers, timeout=5)


def test_valid_delivery_reaches_the_waiter(receiver):
    waiter = receiver.board.expect("athos_call_1")
    response = deliver(receiver)
    assert response.status_code == 200
    score = waiter.get(timeout=5)
    assert score.call_id == "athos_call_1" and score.score == 80.0 and score.via == "webhook"
    assert receiver.counts["accepted"] == 1


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"secret": "wrong"}, "bad_signature"),
        ({"ts": int(time.time()) - 3600}, "stale"),
        ({"header": ""}, "missing"),
        ({"header": "v1=deadbeef"}, "malformed"),
    ],
)
def test_bad_deliveries_are_rejected_and_counted(receiver, kwargs, reason):
    waiter = receiver.board.expect("athos_call_1")
    response = deliver(receiver, **kwargs)
    assert response.status_code == 401
    assert receiver.counts[reason] == 1 and receiver.counts["accepted"] == 0
    assert not waiter.ready()


def test_signed_garbage_is_a_400(receiver):
    assert deliver(receiver, body=b'{"type":"call.other"}').status_code == 400
    assert receiver.counts["bad_body"] == 1


def test_replayed_event_id_is_counted_once(receiver):
    seen: list[Score] = []
    receiver.board.listeners.append(seen.append)
    assert deliver(receiver, "evt_9").status_code == 200
    assert deliver(receiver, "evt_9").status_code == 200  # 2xx so the sender stops retrying
    assert receiver.counts["accepted"] == 1 and receiver.counts["duplicate"] == 1
    assert len(seen) == 1


def test_wrong_path_and_method(receiver):
    base = receiver.url.rsplit("/", 2)[0]
    assert requests.post(base + "/nope", data=b"{}", timeout=5).status_code == 404
    assert requests.get(receiver.url, timeout=5).status_code == 405


def test_score_that_arrives_before_the_waiter_is_kept():
    board = ScoreBoard(max_unclaimed=2)
    board.deliver(Score("a", 1.0, 0.0, "poll"))
    assert board.wait("a", timeout=0.1).score == 1.0
    for call in ("b", "c", "d"):
        board.deliver(Score(call, 1.0, 0.0, "poll"))
    assert board.wait("b", timeout=0.05) is None  # the oldest unclaimed is evicted: memory is bounded
    assert board.wait("d", timeout=0.05) is not None


def test_wait_times_out_and_forgets():
    board = ScoreBoard()
    started = time.monotonic()
    assert board.wait("never", timeout=0.2) is None
    assert 0.15 < time.monotonic() - started < 5
    assert "never" not in board.waiting


def test_score_is_handed_over_across_greenlets():
    board = ScoreBoard()
    waiter = gevent.spawn(board.wait, "x", 5)
    gevent.sleep(0.01)
    board.deliver(Score("x", 50.0, 1.0, "webhook"))
    assert waiter.get(timeout=5).score == 50.0


def test_score_arriving_as_the_waiter_is_killed_is_kept_for_the_next_waiter():
    board = ScoreBoard()
    waiter = gevent.spawn(board.wait, "x", 5)
    gevent.sleep(0.01)
    waiter.kill(block=False)  # the run stops this user...
    board.deliver(Score("x", 70.0, 1.0, "webhook"))  # ...in the same loop turn its score arrives
    gevent.sleep(0.01)
    assert waiter.dead
    assert board.wait("x", timeout=0.5).score == 70.0  # the drain's wait still gets it
