"""Energy voice-activity detection of the rep's audio, one frame at a time.

This runs for every inbound frame of every call (50 000 frames/s at 1000 calls), so it is one
``frombuffer`` view, one float conversion and one dot product, compared with a threshold that is
precomputed in sum-of-squares units: no logarithm, no allocation beyond numpy's temporaries.
"""

from __future__ import annotations

import numpy as np

from athos_load.wire import AudioFormat

NONE, STARTED, ENDED = 0, 1, 2  # what feed() reports
START_FRAMES = 2  # consecutive speech frames that make an utterance start
_EPS = 1e-6  # float slack when summing frame durations against the hangover
_INT16 = np.dtype("<i2")


class EnergyVad:
    """Turns PCM16 frames into utterance boundaries, stamped with the caller's arrival times.

    A frame that arrives at ``now`` is taken to hold the audio of ``[now, now + its duration]``.
    ``start`` is the arrival of the first speech frame; ``last_end`` the arrival end of the latest
    speech frame, so an utterance's extent does not include the hangover that detected its end.
    """

    __slots__ = ("_thr", "_inv_rate", "_hangover", "_run", "_run_start", "_quiet", "speaking", "start", "last_end")

    def __init__(self, audio: AudioFormat, threshold_db: float, hangover_s: float) -> None:
        full_scale = 32768.0 * 10.0 ** (threshold_db / 20.0)
        self._thr = full_scale * full_scale  # mean square at the threshold
        self._inv_rate = 1.0 / audio.sample_rate
        self._hangover = hangover_s - _EPS
        self._run = 0
        self._run_start = 0.0
        self._quiet = 0.0
        self.speaking = False
        self.start = 0.0
        self.last_end = 0.0

    def feed_pcm(self, data: bytes, now: float) -> int:
        """:meth:`feed` for a PCM16 LE byte string."""
        return self.feed(np.frombuffer(data, _INT16, len(data) >> 1), now)

    def feed(self, samples: np.ndarray, now: float) -> int:
        """One frame of int16 samples that arrived at ``now``: NONE, STARTED or ENDED."""
        n = len(samples)
        if not n:
            return NONE
        x = samples.astype(np.float32)
        duration = n * self._inv_rate
        if x.dot(x) > self._thr * n:
            if self.speaking:
                self.last_end = now + duration
                self._quiet = 0.0
                return NONE
            self._run += 1
            if self._run == 1:
                self._run_start = now
            if self._run < START_FRAMES:
                return NONE
            self.speaking = True
            self.start = self._run_start
            self.last_end = now + duration
            self._quiet = 0.0
            return STARTED
        self._run = 0
        if self.speaking:
            self._quiet += duration
            if self._quiet >= self._hangover:
                self.speaking = False
                return ENDED
        return NONE

    def stalled(self, now: float, grace: float) -> bool:
        """Speaking, but no speech for the hangover plus ``grace``: the client stopped sending audio."""
        return self.speaking and now - self.last_end >= self._hangover + grace

    def reset(self) -> bool:
        """Forget the current utterance (connection lost); True if one was in progress."""
        was = self.speaking
        self.speaking = False
        self._run = 0
        self._quiet = 0.0
        return was
