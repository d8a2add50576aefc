"""The process-wide audio pacer, with a recording sink in place of a socket."""

import time

import pytest

from athos_load.pacer import AudioPacer


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
