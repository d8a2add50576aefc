"""The pacing schedule (athos_load.wire.pacing) on times passed in, and its two drivers: the
client's gevent AudioPacer with a recording sink in place of a socket, the simulator's asyncio Pacer."""

import asyncio
import math
import time

import gevent
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from athos_load.pacer import AudioPacer
from athos_load.sim.pacer import Pacer
from athos_load.wire.pacing import Schedule

P = 0.02  # a 20 ms frame


# -- the schedule, sans-I/O -----------------------------------------------------------------------


def test_deadlines_are_absolute_and_do_not_drift_over_an_hour():
    s = Schedule(1234.5678, P)
    accumulated = s.start  # what adding the period at each frame would give
    for k in range(180_000):  # an hour of 20 ms frames, each taken on time
        assert s.take(s.next_deadline) == (k,)
        accumulated += P
    assert s.next == 180_000
    assert s.next_deadline == 1234.5678 + 180_000 * P  # bit for bit: no error carried frame to frame
    assert accumulated != s.next_deadline  # the error an accumulating schedule would have built up


def test_a_frame_is_due_at_its_deadline_and_not_a_float_step_before():
    s = Schedule(100.0, P, next=7)
    deadline = s.deadline(7)
    assert s.due(math.nextafter(deadline, 0.0)) == 0
    assert s.take(math.nextafter(deadline, 0.0)) == () and s.next == 7
    assert s.due(deadline) == 1
    assert s.take(deadline) == (7,) and s.next == 8


def test_a_late_wake_up_takes_every_missed_frame_at_once_and_the_grid_stays():
    s = Schedule(50.0, P, next=10)
    now = s.deadline(10) + 3.5 * P  # woke three and a half frames late
    assert s.due(now) == 4
    assert list(s.take(now)) == [10, 11, 12, 13]
    assert s.take(now) == ()  # nothing twice
    # the next frame keeps its own deadline: the lateness is not carried into the schedule
    assert s.next == 14 and s.next_deadline == 50.0 + 14 * P
    assert s.take(s.deadline(14)) == (14,)


def test_lag_is_measured_against_each_frames_own_deadline():
    s = Schedule(0.0, P)
    now = 0.035  # frame 0 due at 0, frame 1 at 0.02; frame 2 (0.04) not yet
    lags = [s.lag(k, now) for k in s.take(now)]
    assert lags == pytest.approx([0.035, 0.015])
    assert s.lag(5, s.deadline(5)) == 0.0


def test_nothing_is_due_before_the_start():
    s = Schedule(10.0, P)
    assert s.due(9.0) == 0 and s.take(9.999) == () and s.next == 0
    assert s.index_at(3.0) == 0


def test_index_at_is_the_first_deadline_at_or_after():
    s = Schedule(2.0, P)
    assert s.index_at(2.0) == 0
    assert s.index_at(s.deadline(3)) == 3  # exactly on a deadline: that frame, not the next
    assert s.index_at(math.nextafter(s.deadline(3), math.inf)) == 4
    assert s.index_at(s.deadline(3) - P / 2) == 3


# times where (t - start) / period, truncated, misses the answer (found by a search): the deadlines decide
AWKWARD = [
    (712660.9699759112, 0.02, 1859584.4099759113),  # the first deadline at or after t is two frames on
    (589763.3712619398, 0.001, 647876.5182619398),  # the last deadline passed is one frame on
    (0.0, 1 / 3, 16695031.999999998),  # the last deadline passed is one frame back
]


@pytest.mark.parametrize(("start", "period", "t"), AWKWARD)
def test_float_division_does_not_decide_what_is_due(start, period, t):
    s = Schedule(start, period)
    i = s.index_at(t)
    assert s.deadline(i) >= t > s.deadline(i - 1)
    s.next = max(0, i - 5)
    taken = s.take(t)
    assert s.deadline(taken[-1]) <= t < s.deadline(s.next)


def test_period_must_be_positive():
    with pytest.raises(ValueError):
        Schedule(0.0, 0.0)


starts = st.floats(0.0, 1e6, allow_nan=False)
periods = st.sampled_from([0.001, 0.002, 0.01, 0.02, 0.03, 1 / 3]) | st.floats(1e-4, 1.0)


@settings(max_examples=300, deadline=None)
@given(start=starts, period=periods, first=st.integers(0, 10**7), late=st.floats(0.0, 40.0))
def test_take_is_exactly_the_frames_whose_deadline_has_passed(start, period, first, late):
    s = Schedule(start, period, next=first)
    now = s.deadline(first) + late * period
    taken = s.take(now)
    # never early: every frame taken is due; catch up: the first frame left is not
    assert all(s.deadline(k) <= now for k in taken)
    assert s.deadline(s.next) > now
    assert list(taken) == list(range(first, s.next))
    assert all(s.lag(k, now) >= 0 for k in taken)


@settings(max_examples=300, deadline=None)
@given(start=starts, period=periods, k=st.integers(0, 10**7), offset=st.floats(-2.0, 2.0))
def test_index_at_never_places_early_nor_a_frame_late(start, period, k, offset):
    s = Schedule(start, period)
    for t in (s.deadline(k), s.deadline(k) + offset * period):
        i = s.index_at(t)
        assert s.deadline(i) >= t
        assert i == 0 or s.deadline(i - 1) < t


# -- the client's driver (gevent) ------------------------------------------------------------------


class RecordingSink:
    def __init__(self, open_=True):
        self.open = open_
        self.sent: list[tuple[float, bytes]] = []

    def send_audio_frame(self, frame):
        if not self.open:
            return False
        self.sent.append((time.monotonic(), frame))
        return True


def test_frames_leave_in_order_on_an_absolute_schedule():
    lags: list[float] = []
    pacer = AudioPacer(on_lags=lags.extend)
    sinks = [RecordingSink() for _ in range(50)]
    frames = [bytes([i]) * 4 for i in range(25)]
    start = time.monotonic() + 0.05
    streams = [pacer.play(sink, frames, 0.02, start) for sink in sinks]
    for stream in streams:
        assert stream.wait(timeout=10)
    for sink in sinks:
        assert [f for _, f in sink.sent] == frames
        # never early: frame i leaves at or after start + i * period
        assert all(t >= start + i * 0.02 - 1e-3 for i, (t, _) in enumerate(sink.sent))
        # and the schedule does not drift: the last frame is not a frame-count of lag behind
        assert sink.sent[-1][0] - (start + 24 * 0.02) < 0.5
    assert len(lags) == 50 * 25 and min(lags) >= 0
    assert pacer.active_streams == 0


def test_frames_due_while_the_call_cannot_take_audio_are_skipped():
    pacer = AudioPacer()
    sink = RecordingSink(open_=False)
    stream = pacer.play(sink, [b"a", b"b", b"c"], 0.01)
    assert stream.wait(timeout=5)
    assert stream.skipped == 3 and stream.sent == 0 and sink.sent == []


def test_close_stops_a_microphone_and_releases_waiters():
    pacer = AudioPacer()
    sink = RecordingSink()
    mic = pacer.microphone(sink, 0.02, None)
    stream = mic.say([b"x"] * 100)
    time.sleep(0.1)
    mic.close()
    assert stream.wait(timeout=1)
    count = len(sink.sent)
    time.sleep(0.1)
    assert len(sink.sent) == count < 100


def test_empty_clip_is_done_at_once():
    assert AudioPacer().play(RecordingSink(), [], 0.02).done


def test_continuous_microphone_sends_silence_between_clips_on_the_grid():
    pacer = AudioPacer()
    sink = RecordingSink()
    start = time.monotonic() + 0.02
    mic = pacer.microphone(sink, 0.02, b"0", start)
    time.sleep(0.1)
    first = mic.say([b"a"] * 5)
    second = mic.say([b"b"] * 3)  # queued right behind the first, no gap
    assert second.start == pytest.approx(first.end)
    assert second.wait(timeout=5)
    time.sleep(0.1)
    mic.close()
    sent = b"".join(f for _, f in sink.sent)
    assert sent.strip(b"0") == b"aaaaabbb"  # silence before and after, the clips contiguous
    # every frame sits on the microphone's grid, so the clips start exactly on a frame boundary
    offset = (first.start - start) / 0.02
    assert offset == pytest.approx(round(offset), abs=1e-6)
    assert sent.index(b"a") == round(offset)
    assert len(sink.sent) == pytest.approx((time.monotonic() - start) / 0.02, abs=6)


def test_a_late_microphone_sends_its_missed_frames_at_once_on_its_grid():
    pacer = AudioPacer()
    sink = RecordingSink()
    start = time.monotonic() + 60.0  # far ahead: this test passes the times in, the greenlet never sends
    mic = pacer.microphone(sink, P, b"0", start)
    clip = mic.say([b"a", b"b"])
    assert clip.start == start and clip.first == 0
    assert mic.say([b"c"]).first == 2  # right behind the first clip
    lags: list[float] = []
    now = start + 3.5 * P  # the pacer woke 3.5 frames late
    assert mic._send_due(now, lags) == start + 4 * P  # the next deadline stays on the grid
    assert [f for _, f in sink.sent] == [b"a", b"b", b"c", b"0"]  # clips, then silence
    assert lags == pytest.approx([3.5 * P, 2.5 * P, 1.5 * P, 0.5 * P])
    assert clip.done and clip.sent == 2
    assert mic._send_due(start + 3.9 * P, lags) == start + 4 * P and len(sink.sent) == 4  # not early
    mic.close()


def test_a_one_shot_microphone_leaves_the_pacer_when_its_clip_is_done():
    pacer = AudioPacer()
    sink = RecordingSink()
    start = time.monotonic() + 60.0
    mic = pacer.microphone(sink, P, None, start)
    clip = mic.say([b"a", b"b"])
    assert mic._send_due(start + 10 * P, []) is None  # both sent, nothing owed after them
    assert [f for _, f in sink.sent] == [b"a", b"b"] and clip.done
    mic.close()


def test_a_microphone_closed_while_its_frame_is_sent_stops_cleanly():
    pacer = AudioPacer()
    start = time.monotonic() + 60.0

    class ClosingSink(RecordingSink):
        def send_audio_frame(self, frame):
            mic.close()  # as a session ending during a blocking send does
            return super().send_audio_frame(frame)

    sink = ClosingSink()
    mic = pacer.microphone(sink, P, b"0", start)
    clip = mic.say([b"a"])
    assert mic._send_due(start + 2 * P, []) is None
    assert len(sink.sent) == 1 and clip.done


def test_a_stream_filed_during_a_send_keeps_both_streams_on_schedule():
    lags: list[float] = []
    pacer = AudioPacer(on_lags=lags.extend)
    refiled = []
    refile = pacer._refile
    pacer._refile = lambda entry, due: (refiled.append(entry), refile(entry, due))  # type: ignore[method-assign]
    other = RecordingSink()
    added: list = []

    class FilingSink(RecordingSink):
        def send_audio_frame(self, frame):
            if not added:  # a stream due earlier than this one lands on top of the heap mid-send
                added.append(pacer.microphone(other, P, b"0", start=time.monotonic() - 0.1))
            return super().send_audio_frame(frame)

    sink = FilingSink()
    clip = pacer.play(sink, [b"a"] * 5, P, start=time.monotonic())
    assert clip.wait(timeout=5)
    added[0].close()
    gevent.sleep(0.05)
    assert len(refiled) == 1  # the heap changed under the send, and the entry was found again
    assert [f for _, f in sink.sent] == [b"a"] * 5
    assert len(other.sent) >= 6  # the earlier stream caught up its silence from 0.1 s ago
    assert min(lags) >= 0 and pacer.active_streams == 0


# -- the simulator's driver (asyncio) -------------------------------------------------------------


def test_the_wheel_files_a_call_in_the_first_bucket_at_or_after_its_deadline():
    pacer = Pacer(granularity=0.002)

    class Item:
        pacer_slot = -1

    item = Item()
    for due in (time.monotonic() + 1.0, time.monotonic() + 1.0011, time.monotonic() + 7.0):
        pacer.schedule(item, due)
        assert item.pacer_slot * 0.002 >= due > (item.pacer_slot - 1) * 0.002
    pacer.schedule(item, time.monotonic() - 5.0)  # already past: the next bucket the wheel visits
    assert item.pacer_slot * 0.002 >= time.monotonic() - 0.002


def test_the_simulator_pacer_never_paces_early_and_catches_up_after_a_stall():
    class Stream:
        def __init__(self, start: float, stall: bool) -> None:
            self.pacer_slot = -1
            self.schedule = Schedule(start, P)
            self.stall = stall
            self.asked: list[tuple[float, float]] = []  # (deadline asked for, now it was paced at)
            self.sent: list[tuple[int, float]] = []

        def pace(self, now: float) -> float | None:
            self.asked.append((self.schedule.next_deadline, now))
            self.sent.extend((k, now) for k in self.schedule.take(now))
            if self.stall and len(self.sent) >= 3:
                self.stall = False
                time.sleep(0.1)  # a blocked event loop: five frames' worth
            return self.schedule.next_deadline if self.schedule.next < 15 else None

    async def main() -> tuple[Pacer, list[Stream]]:
        pacer = Pacer()
        task = asyncio.get_running_loop().create_task(pacer.run())
        start = time.monotonic() + 0.01
        streams = [Stream(start + i * 0.003, stall=i == 0) for i in range(4)]
        for stream in streams:
            pacer.schedule(stream, stream.schedule.start)
        while any(s.schedule.next < 15 for s in streams):
            await asyncio.sleep(0.02)
        task.cancel()
        return pacer, streams

    pacer, streams = asyncio.run(asyncio.wait_for(main(), 10))
    for stream in streams:
        assert [k for k, _ in stream.sent] == list(range(15))  # every frame, once, in order
        assert all(now >= due for due, now in stream.asked)  # never woken before its deadline
        assert all(now >= stream.schedule.deadline(k) for k, now in stream.sent)  # never sent early
    # the stall: the frames it delayed left together, at one wake-up, and the lag says so
    burst = max(sum(1 for _, t in streams[1].sent if t == now) for _, now in streams[1].sent)
    assert burst >= 3
    assert min(pacer.lags) >= 0 and max(pacer.lags) >= 0.05
