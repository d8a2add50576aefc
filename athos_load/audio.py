"""Pre-recorded rep audio, converted once at start-up to the wire format and cut into frames.

:func:`load_clip` reads an audio file through ``soundfile`` (libsndfile: WAV in any sample format,
FLAC, OGG and MP3 among others), mixes it to mono, resamples it to the wire rate (``soxr``),
converts it to PCM16 LE and cuts it into wire frames. It also finds where the speech is
(:func:`find_speech`), so a user knows when its rep stopped speaking from the clip itself rather
than from the server's ``userSpeaking``.

:class:`Effects` make a clip sound like a real call: background noise at a signal-to-noise ratio,
then a gain. The speech bounds stay those of the clean clip, so the tool still knows exactly when
the rep stopped speaking when the platform hears it through noise.

Loaded clips are cached per file, format and effects: a thousand users playing one scenario share
one copy of its frames. Pacing the frames in real time is :mod:`athos_load.pacer`'s job.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import soxr

from athos_load.wire import AudioFormat

# Speech detection. A frame is speech when its RMS is within SPEECH_RANGE_DB of the clip's loudest
# frame and above SPEECH_FLOOR_DB; the relative part adapts to quiet recordings, the floor keeps a
# noise-only clip from turning its own hiss into "speech".
SPEECH_FLOOR_DB = -45.0
SPEECH_RANGE_DB = 35.0
MIN_GAP_SECONDS = 0.25  # pauses shorter than this are inside one utterance (between words)
MIN_SPEECH_SECONDS = 0.06  # shorter bursts are clicks, not speech

# Resampling: soxr, the SoX resampler, at its VHQ setting. benchmarks/resample.py measured it against
# the Kaiser-windowed sinc resampler this module had before, in one run (44100->16000, 2 cores):
# passband error to 7 kHz 0.005 dB (ours 0.37), aliases of tones past 8 kHz -184 dB (ours -89),
# 7.9 kHz -70 dB (ours -53), a 60 s clip in 13 ms (ours 227 ms); 8000->16000 alike. HQ is 4 ms
# faster a minute of audio but leaves 7.9 kHz at -53 dB and aliases at -134 dB: VHQ, at start-up.
_SOXR_QUALITY = "VHQ"

# Background noise is pink (power falling 3 dB an octave, flat below PINK_FLOOR_HZ): real rooms,
# offices, traffic and HVAC put most of their energy low, as pink noise does, while white noise at
# the same SNR would bury the consonants above 2 kHz far more than a real background does. The
# floor keeps sub-audio rumble, which no microphone path carries, from eating the noise budget.
PINK_FLOOR_HZ = 50.0


class AudioError(ValueError):
    """A clip that cannot be used; ``path`` and ``problem`` let callers re-word the message."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Effects:
    """What a turn does to its clip to sound like a real call; the default changes nothing.

    Pink background noise ``snr_db`` below the clip's speech RMS (over its utterances, not its
    silences), then ``gain_db`` on the mix, as a microphone's level would. Samples that the gain
    pushes past full scale saturate at the int16 limits (an overdriven microphone), never wrap.
    """

    snr_db: float | None = None  # None: no noise
    gain_db: float = 0.0

    def __post_init__(self) -> None:
        for name in ("snr_db", "gain_db"):
            value = getattr(self, name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if value is not None and not (number and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number; got {value!r}")


CLEAN = Effects()


# eq=False: clips are compared and hashed by identity (comparing every frame would be pointless
# work, and the cache makes one file one object).
@dataclass(frozen=True, slots=True, eq=False)
class Clip:
    """Audio ready to stream: PCM16 LE mono frames of ``fmt.frame_bytes`` each."""

    path: Path | None  # the resolved file, None for generated audio
    fmt: AudioFormat
    frames: tuple[bytes, ...]
    speech: tuple[tuple[float, float], ...]  # (start, end) seconds of each utterance, on the frame grid

    @property
    def duration(self) -> float:
        """Seconds of audio streamed, including the silence that pads the last frame."""
        return len(self.frames) * self.fmt.frame_seconds

    @property
    def speech_start(self) -> float | None:
        return self.speech[0][0] if self.speech else None

    @property
    def speech_end(self) -> float | None:
        """When the rep stops speaking, seconds from the first frame; None for pure silence."""
        return self.speech[-1][1] if self.speech else None


# -- public helpers --------------------------------------------------------------------------------


def frames_from_pcm(pcm: bytes, fmt: AudioFormat) -> tuple[bytes, ...]:
    """PCM16 LE mono cut into wire frames; the tail is padded with silence to a whole frame."""
    _check_format(fmt)
    if len(pcm) % 2:
        raise ValueError(f"PCM16 data has an odd length ({len(pcm)} bytes)")
    size = fmt.frame_bytes
    tail = len(pcm) % size
    if tail:
        pcm += bytes(size - tail)
    return tuple(pcm[i : i + size] for i in range(0, len(pcm), size))


def silence(seconds: float, fmt: AudioFormat) -> Clip:
    """``seconds`` of digital silence, rounded up to whole frames; every frame is one shared object."""
    _check_format(fmt)
    if seconds < 0:
        raise ValueError(f"negative silence: {seconds}")
    # round() first so 2.0 s of 20 ms frames is 100 frames, not 101 from float noise
    n = math.ceil(round(seconds / fmt.frame_seconds, 6))
    return Clip(None, fmt, (bytes(fmt.frame_bytes),) * n, ())


def find_speech(pcm: bytes, fmt: AudioFormat) -> tuple[tuple[float, float], ...]:
    """Utterances in whole frames of PCM16 LE mono, as ``(start, end)`` seconds on the frame grid.

    Energy-based: frame RMS in dBFS against a threshold relative to the loudest frame (see
    ``SPEECH_*`` above); pauses shorter than ``MIN_GAP_SECONDS`` are bridged, then bursts shorter
    than ``MIN_SPEECH_SECONDS`` dropped.
    """
    n_frames = len(pcm) // fmt.frame_bytes
    if not n_frames:
        return ()
    x = np.frombuffer(pcm, "<i2", n_frames * fmt.frame_samples).astype(np.float64)
    power = np.mean(x.reshape(n_frames, fmt.frame_samples) ** 2, axis=1)
    db = 10.0 * np.log10(np.maximum(power, 1e-12) / 32768.0**2)
    loud = db >= max(SPEECH_FLOOR_DB, float(db.max()) - SPEECH_RANGE_DB)

    frame = fmt.frame_seconds
    min_gap = round(MIN_GAP_SECONDS / frame)
    merged: list[list[int]] = []
    for start, end in _runs(loud):
        if merged and start - merged[-1][1] < min_gap:
            merged[-1][1] = end
        else:
            merged.append([start, end])
    min_frames = max(1, round(MIN_SPEECH_SECONDS / frame))
    return tuple((round(s * frame, 6), round(e * frame, 6)) for s, e in merged if e - s >= min_frames)


def apply_effects(clip: Clip, effects: Effects) -> Clip:
    """``clip`` with ``effects`` applied; its speech bounds are the clean clip's.

    The noise is seeded from the clip's samples, so one clip always gets the same noise (a run is
    reproducible, and two SNRs of one clip differ only in the noise's level).
    """
    if effects == CLEAN:
        return clip
    fmt = clip.fmt
    pcm = b"".join(clip.frames)
    x = np.frombuffer(pcm, "<i2") / 32768.0
    if effects.snr_db is not None:
        if not clip.speech:
            raise ValueError("no speech in the clip to set the noise level against")
        rate = fmt.sample_rate
        speech = np.concatenate([x[round(a * rate) : round(b * rate)] for a, b in clip.speech])
        level = math.sqrt(np.mean(speech**2)) * 10.0 ** (-effects.snr_db / 20.0)
        seed = int.from_bytes(hashlib.blake2b(pcm, digest_size=8).digest(), "little")
        x = x + level * pink_noise(len(x), rate, seed)
    x *= 10.0 ** (effects.gain_db / 20.0)
    return Clip(clip.path, fmt, frames_from_pcm(_to_pcm16(x), fmt), clip.speech)


def pink_noise(n: int, rate: int, seed: int) -> np.ndarray:
    """``n`` samples of unit-RMS pink noise at ``rate`` Hz, flat below ``PINK_FLOOR_HZ`` (see the top)."""
    if n < 2:
        return np.zeros(n)
    spectrum = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    spectrum /= np.sqrt(np.maximum(np.fft.rfftfreq(n, 1.0 / rate), PINK_FLOOR_HZ))
    spectrum[0] = 0.0  # no DC offset
    x = np.fft.irfft(spectrum, n)
    return x / math.sqrt(np.mean(x**2))


# -- loading and the cache -------------------------------------------------------------------------

# (resolved path, format, effects) -> ((mtime_ns, size), clip). A rewritten file is reloaded; one
# entry per file, format and effects, so the cache is as big as the scenarios' audio and no bigger.
_cache: dict[tuple[Path, AudioFormat, Effects], tuple[tuple[int, int], Clip]] = {}

# libsndfile's error codes for content it cannot make sense of: 1 is "format not recognised", 7
# ("file does not exist or is not a regular file") is what its MP3 reader says about any non-MP3
# content of an existing regular file, which load_clip has checked before reading.
_NOT_AUDIO = frozenset({1, 7})


def load_clip(path: str | os.PathLike[str], fmt: AudioFormat, effects: Effects = CLEAN) -> Clip:
    """Read an audio file, convert it to ``fmt`` and apply ``effects``; cached, so call it freely.

    Raises :class:`AudioError` naming the file and the problem: missing, not an audio file, not
    decodable, no samples, or noise asked for a clip without speech.
    """
    _check_format(fmt)
    shown = Path(path)
    try:
        st = shown.stat()
    except FileNotFoundError:
        raise AudioError(shown, "file not found") from None
    except OSError as exc:
        raise AudioError(shown, exc.strerror or str(exc)) from None
    if not shown.is_file():
        raise AudioError(shown, "not a file")
    key = (shown.resolve(), fmt, effects)
    stamp = (st.st_mtime_ns, st.st_size)
    hit = _cache.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    if effects == CLEAN:
        samples, rate = _read(shown)
        mono = samples.mean(axis=1)
        frames = frames_from_pcm(_to_pcm16(_resample(mono, rate, fmt.sample_rate)), fmt)
        clip = Clip(key[0], fmt, frames, find_speech(b"".join(frames), fmt))
    else:
        clean = load_clip(shown, fmt)
        try:
            clip = apply_effects(clean, effects)
        except ValueError as exc:
            raise AudioError(shown, str(exc)) from None
    _cache[key] = (stamp, clip)
    return clip


def _check_format(fmt: AudioFormat) -> None:
    if fmt.encoding != "pcm16le" or fmt.channels != 1:
        raise ValueError(f"clips are PCM16 LE mono; got {fmt.encoding}, {fmt.channels} channels")


def _read(path: Path) -> tuple[np.ndarray, int]:
    """Samples as float64 in [-1, 1], shape (frames, channels), and the sample rate."""
    try:
        open(path, "rb").close()  # Python's wording for permissions and the like, not libsndfile's
        data, rate = soundfile.read(path, dtype="float64", always_2d=True)
    except OSError as exc:
        raise AudioError(path, exc.strerror or str(exc)) from None
    except soundfile.LibsndfileError as exc:
        if exc.code in _NOT_AUDIO:
            raise AudioError(path, "not an audio file (expected WAV, FLAC, OGG or MP3)") from None
        raise AudioError(path, f"cannot decode: {exc.error_string.rstrip('.')}") from None
    except (soundfile.SoundFileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(path, f"cannot decode: {exc}") from None
    if data.size == 0:
        raise AudioError(path, "no audio samples")
    return data, int(rate)


# -- conversion ------------------------------------------------------------------------------------


def _resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Band-limited resampling of mono ``x`` from ``src`` to ``dst`` Hz (see the note at the top)."""
    if src == dst:
        return x
    y = soxr.resample(x, src, dst, quality=_SOXR_QUALITY)
    n = -(-len(x) * dst // src)  # the input's duration on the output grid, rounded up, whatever soxr rounds to
    return y[:n] if len(y) >= n else np.pad(y, (0, n - len(y)))


def _to_pcm16(x: np.ndarray) -> bytes:
    """Float samples (full scale 1.0) as PCM16 LE; past full scale they saturate, never wrap round."""
    return np.clip(np.rint(x * 32768.0), -32768, 32767).astype("<i2").tobytes()


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[start, end)`` index pairs of the True runs in a boolean array."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))
