"""What the rep hears of the persona: whether a frame of its audio carries sound.

The events say when the platform *means* the persona to speak; a rep hears it when the audio with
sound arrives. A frame has sound when its mean square is above :data:`SOUND_DB` dBFS (the same
floor :mod:`athos_load.audio` uses for the rep's own speech, so digital silence and a quiet hiss
are not words). The check is one numpy view and one dot product, and a call only makes it while a
timing waits for the persona's sound (after ``connecting``, after each ``personaSpeaking`` true):
the inbound audio path costs a comparison per frame otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .audio import SPEECH_FLOOR_DB

SOUND_DB = SPEECH_FLOOR_DB
_INT16 = np.dtype("<i2")
_THRESHOLD = (32768.0 * 10.0 ** (SOUND_DB / 20.0)) ** 2  # mean square at SOUND_DB


def has_sound(frame: bytes | memoryview) -> bool:
    """A PCM16 LE frame whose level is above :data:`SOUND_DB` dBFS."""
    n = len(frame) >> 1
    if not n:
        return False
    x = np.frombuffer(frame, _INT16, n).astype(np.float32)
    return float(x.dot(x)) > _THRESHOLD * n


JITTER_GAIN = 1.0 / 16.0  # RFC 3550 §6.4.1: the estimator's smoothing
GAP_FRAMES = 2.0  # a silence longer than this many frames between two arrivals is one a rep hears
JITTER_BUFFER = 0.06  # seconds a client buffers before it plays (the default of --athos-jitter-buffer)


class PersonaStream:
    """One persona utterance's audio as a rep's client would play it, frame by frame.

    * jitter: RFC 3550's interarrival jitter estimator, with each frame's send time taken as one
      frame after the last (the persona's audio is paced in real time);
    * gaps: the time between two arrivals less one frame is a silence; one longer than
      :data:`GAP_FRAMES` frames is a gap (dead air, stutter), jitter within a frame or two is not;
    * underruns: a playout buffer of ``buffer`` seconds that starts playing ``buffer`` after the
      first frame and plays a frame each frame period; a frame that arrives after its turn to play
      is an underrun (the rep hears a click or a hole), and the buffer refills from then on.

    Each gap and underrun keeps when it happened, so :meth:`judge` can tell the ones the
    generator's own stalled loop made (it read the frames late) from the platform's.

    :meth:`frame` is per frame on the inbound path: a few float operations, no allocation.
    """

    __slots__ = (
        "frame_seconds", "buffer", "jitter", "gaps", "underruns", "frames", "_last", "_need_at", "_gap_ends",
        "_late",
    )  # fmt: skip

    def __init__(self, frame_seconds: float, buffer: float = JITTER_BUFFER) -> None:
        self.frame_seconds = frame_seconds
        self.buffer = buffer
        self.jitter = 0.0
        self.gaps: list[float] = []
        self.underruns = 0
        self.frames = 0
        self._last: float | None = None
        self._need_at = 0.0  # the next frame must have arrived by then to play without a hole
        self._gap_ends: list[float] = []  # the arrival that ended each gap
        self._late: list[tuple[float, float]] = []  # each underrun: the silence before its frame (from, to)

    def frame(self, at: float) -> None:
        """A frame of this utterance arrived at ``at``."""
        self.frames += 1
        last = self._last
        self._last = at
        period = self.frame_seconds
        if last is None:
            self._need_at = at + self.buffer + period  # the first frame plays from at + buffer
            return
        spacing = at - last
        self.jitter += (abs(spacing - period) - self.jitter) * JITTER_GAIN
        if spacing - period > GAP_FRAMES * period + 1e-9:  # (float slack: exactly two frames is no gap)
            self.gaps.append(spacing - period)
            self._gap_ends.append(at)
        if at > self._need_at:  # its turn to play has come and gone: the buffer ran dry
            self.underruns += 1
            self._late.append((last + period, at))
            self._need_at = at + self.buffer + period  # it refills, then plays this frame
        else:
            self._need_at += period

    @property
    def seconds(self) -> float:
        """The persona audio received, in seconds."""
        return self.frames * self.frame_seconds

    def judge(self, stalls: Iterable[tuple[float, float]]) -> tuple[list[float], int, int]:
        """``(the platform's gaps, its underruns, the generator's gaps)``: a gap or an underrun
        whose silence before it the generator's loop stalls (``(from, to)``, monotonic) overlap and
        cover but for :data:`GAP_FRAMES` frames was the generator's: it read late frames that had
        come on time. (A stall is known from its monitor's late tick, up to a tick after it began:
        the slack covers that.)"""
        if not self.gaps and not self.underruns:
            return self.gaps, self.underruns, 0
        spans = list(stalls)
        slack = GAP_FRAMES * self.frame_seconds
        gaps = [g for g, end in zip(self.gaps, self._gap_ends, strict=True) if not _covered(end - g, end, spans, slack)]
        underruns = sum(1 for start, end in self._late if not _covered(start, end, spans, slack))
        return gaps, underruns, len(self.gaps) - len(gaps)


def _covered(start: float, end: float, stalls: list[tuple[float, float]], slack: float) -> bool:
    """Stalls overlap ``[start, end]`` and cover all of it but ``slack`` seconds."""
    inside = sum(max(0.0, min(end, b) - max(start, a)) for a, b in stalls)
    return inside > 0.0 and end - start - inside <= slack
