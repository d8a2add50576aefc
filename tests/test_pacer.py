"""The process-wide audio pacer, with a recording sink in place of a socket."""

import time

from athos_load.pacer import AudioPacer


class RecordingSink:
    def __init__(self, open_=True):
        self.open = open_
        self.sent: list[tuple[float, bytes]] = []

    def can_send_audio(self):
        return self.open

    def send_audio_frame(self, frame):
        self.sent.append((time.monotonic(), frame))
        return True


def test_frames_leave_in_order_on_an_absolute_schedule():
    lags: list[float] = []
    pacer = AudioPacer(on_lag=lags.append)
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


def test_cancel_stops_a_stream_and_releases_waiters():
    pacer = AudioPacer()
    sink = RecordingSink()
    stream = pacer.play(sink, [b"x"] * 100, 0.02)
    time.sleep(0.1)
    stream.cancel()
    assert stream.wait(timeout=1)
    count = len(sink.sent)
    time.sleep(0.1)
    assert len(sink.sent) == count < 100


def test_empty_clip_is_done_at_once():
    assert AudioPacer().play(RecordingSink(), [], 0.02).done
