"""Pre-recorded rep audio, converted once at start-up to the wire format and cut into frames.

:func:`load_clip` reads a WAV file (any rate, channel count, 8/16/24/32-bit integer or 32/64-bit
float samples), mixes it to mono, resamples it to the wire rate, converts it to PCM16 LE and cuts
it into wire frames. It also finds where the speech is (:func:`find_speech`), so a user knows when
its rep stopped speaking from the clip itself rather than from the server's ``userSpeaking``.

Loaded clips are cached per file and format: a thousand users playing one scenario share one copy
of its frames. Pacing the frames in real time is :mod:`athos_load.pacer`'s job.

FLAC, OGG and other formats are read through the optional ``soundfile`` package when it is
installed; WAV needs nothing beyond numpy.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from athos_load.wire import AudioFormat, MaskedFrames, mask_frames

# Speech detection. A frame is speech when its RMS is within SPEECH_RANGE_DB of the clip's loudest
# frame and above SPEECH_FLOOR_DB; the relative part adapts to quiet recordings, the floor keeps a
# noise-only clip from turning its own hiss into "speech".
SPEECH_FLOOR_DB = -45.0
SPEECH_RANGE_DB = 35.0
MIN_GAP_SECONDS = 0.25  # pauses shorter than this are inside one utterance (between words)
MIN_SPEECH_SECONDS = 0.06  # shorter bursts are clicks, not speech

# Resampling: windowed-sinc (Kaiser) band-limited interpolation, evaluated as a polyphase filter
# bank. It is the textbook method (what libsamplerate and resampy do), costs one dot product per
# output sample, and low-passes below the lower Nyquist so downsampling does not alias. Linear
# interpolation would alias and dull the speech the platform's recogniser is fed.
_ZERO_CROSSINGS = 32  # half-length of the sinc in zero crossings: a narrow transition band
_ROLLOFF = 0.92  # cutoff over the lower Nyquist: -0.4 dB at 0.875 Nyquist, >85 dB down past Nyquist
_KAISER_BETA = 8.6
_CHUNK = 8192  # output samples per vectorised step: bounds the temporary (chunk x taps) matrix

_WAVE_PCM, _WAVE_FLOAT, _WAVE_EXTENSIBLE = 0x0001, 0x0003, 0xFFFE


class AudioError(ValueError):
    """A clip that cannot be used; ``path`` and ``problem`` let callers re-word the message."""

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


# eq=False: clips are compared and hashed by identity (comparing every frame would be pointless
# work, and the cache makes one file one object).
@dataclass(frozen=True, slots=True, eq=False)
class Clip:
    """Audio ready to stream: PCM16 LE mono frames of ``fmt.frame_bytes`` each."""

    path: Path | None  # the resolved file, None for generated audio
    fmt: AudioFormat
    frames: tuple[bytes, ...]
    speech: tuple[tuple[float, float], ...]  # (start, end) seconds of each utterance, on the frame grid
    wire: MaskedFrames = field(init=False)  # the frames masked for sending, once, shared by every session

    def __post_init__(self) -> None:
        object.__setattr__(self, "wire", mask_frames(self.frames))

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


# -- loading and the cache -------------------------------------------------------------------------

# (resolved path, format) -> ((mtime_ns, size), clip). A rewritten file is reloaded; one entry per
# file and format, so the cache is as big as the scenarios' audio and no bigger.
_cache: dict[tuple[Path, AudioFormat], tuple[tuple[int, int], Clip]] = {}


def load_clip(path: str | os.PathLike[str], fmt: AudioFormat) -> Clip:
    """Read an audio file and convert it to ``fmt``; cached, so call it freely.

    Raises :class:`AudioError` naming the file and the problem: missing, not a WAV, an unsupported
    sample format, no samples.
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
    key = (shown.resolve(), fmt)
    stamp = (st.st_mtime_ns, st.st_size)
    hit = _cache.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    try:
        samples, rate = _read(shown)
    except OSError as exc:
        raise AudioError(shown, exc.strerror or str(exc)) from None
    if samples.size == 0:
        raise AudioError(shown, "no audio samples")
    mono = samples.mean(axis=1)
    pcm = _to_pcm16(_resample(mono, rate, fmt.sample_rate))
    frames = frames_from_pcm(pcm, fmt)
    clip = Clip(key[0], fmt, frames, find_speech(b"".join(frames), fmt))
    _cache[key] = (stamp, clip)
    return clip


def _check_format(fmt: AudioFormat) -> None:
    if fmt.encoding != "pcm16le" or fmt.channels != 1:
        raise ValueError(f"clips are PCM16 LE mono; got {fmt.encoding}, {fmt.channels} channels")


def _read(path: Path) -> tuple[np.ndarray, int]:
    """Samples as float64 in [-1, 1], shape (frames, channels), and the sample rate."""
    with open(path, "rb") as f:
        head = f.read(12)
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return _read_wav(path)
    try:
        import soundfile
    except ImportError:
        raise AudioError(path, "not a WAV file (other formats need the optional soundfile package)") from None
    try:
        data, rate = soundfile.read(path, dtype="float64", always_2d=True)
    except Exception as exc:  # soundfile raises its own error types and RuntimeError
        raise AudioError(path, f"not a WAV file, and soundfile cannot read it: {exc}") from None
    return data, int(rate)


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    # The stdlib ``wave`` module of Python 3.11 rejects WAVE_FORMAT_EXTENSIBLE (what sox and ffmpeg
    # write for 24-bit or multichannel audio) and float samples; the two chunks we need are simple.
    data = path.read_bytes()
    fmt_chunk = pcm = None
    pos = 12
    while pos + 8 <= len(data) and (fmt_chunk is None or pcm is None):
        cid, size = struct.unpack_from("<4sI", data, pos)
        body = data[pos + 8 : pos + 8 + size]  # clamps a bogus size (streamed WAVs) to the file's end
        if cid == b"fmt ":
            fmt_chunk = body
        elif cid == b"data":
            pcm = body
        pos += 8 + size + (size & 1)  # chunks are word-aligned
    if fmt_chunk is None or len(fmt_chunk) < 16:
        raise AudioError(path, "WAV file has no valid fmt chunk")
    if pcm is None:
        raise AudioError(path, "WAV file has no data chunk")
    tag, channels, rate, _, block_align, bits = struct.unpack_from("<HHIIHH", fmt_chunk)
    if tag == _WAVE_EXTENSIBLE and len(fmt_chunk) >= 26:
        tag = struct.unpack_from("<H", fmt_chunk, 24)[0]  # the sub-format GUID starts with the tag
    if not channels or not rate or not block_align or block_align % channels:
        raise AudioError(path, f"WAV fmt chunk is inconsistent ({channels} channels, {rate} Hz)")
    width = block_align // channels  # container bytes per sample
    raw = np.frombuffer(pcm, np.uint8, len(pcm) - len(pcm) % block_align)
    if tag == _WAVE_PCM and width == 1:
        x = (raw.astype(np.float64) - 128.0) / 128.0  # 8-bit WAV is unsigned
    elif tag == _WAVE_PCM and width in (2, 4):
        x = raw.view(f"<i{width}") / float(1 << (8 * width - 1))
    elif tag == _WAVE_PCM and width == 3:
        wide = np.zeros((raw.size // 3, 4), np.uint8)
        wide[:, 1:] = raw.reshape(-1, 3)  # 24-bit into the top of an int32 keeps the sign
        x = wide.view("<i4").ravel() / float(1 << 31)
    elif tag == _WAVE_FLOAT and width in (4, 8):
        x = raw.view(f"<f{width}").astype(np.float64)
    else:
        kind = {_WAVE_PCM: "integer", _WAVE_FLOAT: "float"}.get(tag, f"format tag 0x{tag:04x}")
        raise AudioError(path, f"unsupported sample format: {bits}-bit {kind} (use 8/16/24/32-bit PCM or float)")
    return x.reshape(-1, channels), rate


# -- conversion ------------------------------------------------------------------------------------


def _resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Band-limited resampling of mono ``x`` from ``src`` to ``dst`` Hz (see the note at the top)."""
    if src == dst:
        return x
    g = math.gcd(src, dst)
    up, down = dst // g, src // g  # output sample n sits at input time n * down / up
    cutoff = 0.5 * _ROLLOFF * min(1.0, dst / src)  # cycles per input sample
    half = math.ceil(_ZERO_CROSSINGS / (2 * cutoff))  # taps each side, in input samples
    # One filter per fractional position p/up; taps at input offsets -half+1 .. half from floor(t).
    offsets = np.arange(-half + 1, half + 1)
    d = np.arange(up)[:, None] / up - offsets[None, :]  # distance from output time to each tap
    window = np.i0(_KAISER_BETA * np.sqrt(np.clip(1.0 - (d / half) ** 2, 0.0, None))) / np.i0(_KAISER_BETA)
    bank = 2 * cutoff * np.sinc(2 * cutoff * d) * window
    bank /= bank.sum(axis=1, keepdims=True)  # unity gain at DC for every phase

    n_out = math.ceil(len(x) * up / down)
    padded = np.concatenate([np.zeros(half), x, np.zeros(half + 1)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * half)  # windows[i] starts at x[i - half]
    out = np.empty(n_out)
    for lo in range(0, n_out, _CHUNK):
        n = np.arange(lo, min(lo + _CHUNK, n_out))
        base, phase = np.divmod(n * down, up)
        out[lo : lo + len(n)] = np.einsum("ij,ij->i", windows[base + 1], bank[phase])
    return out


def _to_pcm16(x: np.ndarray) -> bytes:
    return np.clip(np.rint(x * 32768.0), -32768, 32767).astype("<i2").tobytes()


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[start, end)`` index pairs of the True runs in a boolean array."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))
