"""Audio loading: decoding, mix-down, resampling, framing, speech boundaries, errors, the cache."""

from __future__ import annotations

import math
import os
import struct
import wave
from pathlib import Path

import numpy as np
import pytest

from athos_load.audio import AudioError, find_speech, frames_from_pcm, load_clip, silence
from athos_load.wire import AudioFormat

FMT = AudioFormat()  # 16 kHz, 20 ms frames
SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"

# (seconds, tone?) segments with known boundaries: speech at 0.5-1.7 s and 2.4-3.2 s
SEGMENTS = [(0.5, False), (1.2, True), (0.7, False), (0.8, True), (0.4, False)]


def tone_with_gaps(rate: int, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    parts = []
    for seconds, on in SEGMENTS:
        t = np.arange(round(seconds * rate)) / rate
        parts.append(amp * np.sin(2 * np.pi * freq * t) if on else np.zeros(t.size))
    return np.concatenate(parts)


def write_wav(path: Path, channels: np.ndarray, rate: int) -> Path:
    """16-bit PCM through the stdlib ``wave`` module; ``channels`` is (n,) or (n, channels) in [-1, 1]."""
    x = channels.reshape(len(channels), -1) if channels.ndim == 1 else channels
    with wave.open(str(path), "wb") as w:
        w.setnchannels(x.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.rint(x * 32767).astype("<i2").tobytes())
    return path


def write_raw_wav(path: Path, data: bytes, rate: int, channels: int, width: int, tag: int, extensible: bool) -> Path:
    """A WAV header by hand, for what ``wave`` cannot write (float, WAVE_FORMAT_EXTENSIBLE)."""
    block = width * channels
    fmt = struct.pack("<HHIIHH", 0xFFFE if extensible else tag, channels, rate, rate * block, block, 8 * width)
    if extensible:  # cbSize, valid bits, channel mask, sub-format GUID (starts with the tag)
        guid_tail = bytes.fromhex("000000001000800000aa00389b71")
        fmt += struct.pack("<HHIH", 22, 8 * width, 0, tag) + guid_tail
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def samples(clip) -> np.ndarray:
    return np.frombuffer(b"".join(clip.frames), "<i2")


# -- conversion ------------------------------------------------------------------------------------


def test_stereo_44k1_comes_out_mono_16k_in_whole_frames(tmp_path):
    tone = tone_with_gaps(44100)
    path = write_wav(tmp_path / "stereo.wav", np.stack([tone, 0.5 * tone], axis=1), 44100)

    clip = load_clip(path, FMT)

    # ceil(duration / frame), computed in integers: n_in / 44100 s over 20 ms frames
    assert len(clip.frames) == math.ceil(len(tone) * 50 / 44100)
    assert all(type(f) is bytes and len(f) == FMT.frame_bytes for f in clip.frames)
    assert clip.duration == pytest.approx(len(clip.frames) * 0.02)
    x = samples(clip)
    assert len(x) == len(clip.frames) * FMT.frame_samples
    # mono mean of (1, 0.5) x 0.5 amplitude: peak ~0.375 of full scale
    assert np.abs(x).max() / 32768 == pytest.approx(0.375, abs=0.01)


def test_channels_are_averaged(tmp_path):
    tone = 0.5 * np.sin(2 * np.pi * 300 * np.arange(16000) / 16000)
    clip = load_clip(write_wav(tmp_path / "cancel.wav", np.stack([tone, -tone], axis=1), 16000), FMT)
    assert np.abs(samples(clip)).max() <= 1  # +x and -x average to silence
    assert clip.speech == ()


@pytest.mark.parametrize(("src", "dst", "freq"), [(44100, 16000, 1000.0), (22050, 16000, 3100.0), (8000, 48000, 700.0)])
def test_resampling_keeps_the_frequency_and_level(tmp_path, src, dst, freq):
    tone = 0.5 * np.sin(2 * np.pi * freq * np.arange(2 * src) / src)
    fmt = AudioFormat(sample_rate=dst)
    x = samples(load_clip(write_wav(tmp_path / "tone.wav", tone, src), fmt)) / 32768

    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    peak = np.argmax(spectrum) * dst / len(x)
    assert peak == pytest.approx(freq, abs=dst / len(x))
    middle = x[len(x) // 4 : 3 * len(x) // 4]
    assert np.sqrt(2 * np.mean(middle**2)) == pytest.approx(0.5, rel=0.01)


def test_downsampling_does_not_alias(tmp_path):
    # 9 kHz is above the 8 kHz Nyquist of 16 kHz audio; without a low-pass it folds to 7 kHz
    tone = 0.5 * np.sin(2 * np.pi * 9000 * np.arange(44100) / 44100)
    x = samples(load_clip(write_wav(tmp_path / "high.wav", tone, 44100), FMT)) / 32768
    assert np.sqrt(np.mean(x[1000:-1000] ** 2)) < 0.5 * 10 ** (-60 / 20)


@pytest.mark.parametrize(
    ("width", "tag", "extensible", "encode"),
    [
        (1, 1, False, lambda x: np.rint(x * 127 + 128).astype(np.uint8).tobytes()),
        (3, 1, True, lambda x: b"".join(int(v).to_bytes(3, "little", signed=True) for v in np.rint(x * 8388607))),
        (4, 1, True, lambda x: np.rint(x * 2147483647).astype("<i4").tobytes()),
        (4, 3, False, lambda x: x.astype("<f4").tobytes()),
        (8, 3, True, lambda x: x.astype("<f8").tobytes()),
    ],
    ids=["u8", "s24-extensible", "s32-extensible", "f32", "f64-extensible"],
)
def test_sample_formats_decode_alike(tmp_path, width, tag, extensible, encode):
    x = 0.5 * np.sin(2 * np.pi * 250 * np.arange(3200) / 16000)
    path = write_raw_wav(tmp_path / "f.wav", encode(x), 16000, 1, width, tag, extensible)
    got = samples(load_clip(path, FMT))[: len(x)] / 32768
    assert np.max(np.abs(got - x)) < (0.01 if width == 1 else 1e-4)


def test_frames_from_pcm_pads_the_tail():
    frames = frames_from_pcm(b"\x01\x00" * 500, FMT)  # 500 samples: 1 frame + 180 samples
    assert len(frames) == 2
    assert frames[1] == b"\x01\x00" * 180 + bytes(FMT.frame_bytes - 360)
    assert frames_from_pcm(b"", FMT) == ()
    with pytest.raises(ValueError, match="odd length"):
        frames_from_pcm(b"\x00" * 3, FMT)


def test_silence():
    clip = silence(2.0, FMT)
    assert len(clip.frames) == 100 and clip.duration == pytest.approx(2.0)
    assert set(clip.frames) == {bytes(FMT.frame_bytes)}
    assert clip.speech == () and clip.speech_start is None and clip.speech_end is None
    assert len(silence(0.01, FMT).frames) == 1  # rounded up to a whole frame


# -- speech boundaries -----------------------------------------------------------------------------


def test_speech_boundaries_match_the_tone_bursts(tmp_path):
    tone = tone_with_gaps(44100)
    clip = load_clip(write_wav(tmp_path / "gaps.wav", np.stack([tone, tone], axis=1), 44100), FMT)
    expected = [(0.5, 1.7), (2.4, 3.2)]
    assert len(clip.speech) == 2
    for (start, end), (want_start, want_end) in zip(clip.speech, expected, strict=True):
        assert start == pytest.approx(want_start, abs=0.02)
        assert end == pytest.approx(want_end, abs=0.02)
    assert clip.speech_start == clip.speech[0][0] and clip.speech_end == clip.speech[-1][1]


def test_short_pauses_merge_and_clicks_are_ignored():
    rate, fs = 16000, FMT.frame_samples
    x = np.zeros(rate * 2)
    x[8000:12000] = 0.3  # 0.5-0.75 s
    x[14400:19840] = 0.3  # 0.9-1.24 s: a 150 ms pause, same utterance
    x[28800 : 28800 + fs] = 0.3  # a 20 ms click at 1.8 s
    speech = find_speech(np.rint(x * 32767).astype("<i2").tobytes(), FMT)
    assert speech == ((0.5, 1.24),)


def test_quiet_noise_is_not_speech():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 32768 * 10 ** (-55 / 20), 16000)  # -55 dBFS hiss, below the floor
    assert find_speech(noise.astype("<i2").tobytes(), FMT) == ()


def test_shipped_espeak_clips_have_speech_where_expected():
    paths = sorted(SCENARIOS.glob("audio/*/*.wav"))
    assert len(paths) >= 9
    total = 0
    for path in paths:
        clip = load_clip(path, FMT)
        total += path.stat().st_size
        assert clip.speech_start is not None and clip.speech_start < 1.0, path
        assert clip.duration - 0.6 < clip.speech_end <= clip.duration, path
        assert 2.0 <= clip.speech_end - clip.speech_start <= 6.0, path
        # one utterance per turn: a pause long enough to end the turn would make the persona answer half
        assert len(clip.speech) == 1, (path, clip.speech)
    assert total < 3_000_000


# -- errors and the cache --------------------------------------------------------------------------


def test_errors_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(AudioError, match=r"nope\.wav: file not found"):
        load_clip(tmp_path / "nope.wav", FMT)

    text = tmp_path / "notes.wav"
    text.write_text("not audio at all")
    with pytest.raises(AudioError, match=r"notes\.wav: not a WAV file"):
        load_clip(text, FMT)

    half_float = write_raw_wav(tmp_path / "half.wav", bytes(64), 16000, 1, 2, 3, False)
    with pytest.raises(AudioError, match=r"half\.wav: unsupported sample format: 16-bit float"):
        load_clip(half_float, FMT)

    empty = write_wav(tmp_path / "empty.wav", np.zeros((0, 1)), 16000)
    with pytest.raises(AudioError, match=r"empty\.wav: no audio samples"):
        load_clip(empty, FMT)

    with pytest.raises(AudioError, match="not a file"):
        load_clip(tmp_path, FMT)


def test_clips_are_cached_per_file_and_format(tmp_path):
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(8000) / 16000)
    path = write_wav(tmp_path / "a.wav", tone, 16000)
    first = load_clip(path, FMT)
    assert load_clip(str(path), FMT) is first
    assert load_clip(tmp_path / "." / "a.wav", FMT) is first
    assert load_clip(path, AudioFormat(sample_rate=8000)) is not first

    write_wav(path, tone[:4000], 16000)  # rewritten: reloaded
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert len(load_clip(path, FMT).frames) == 13
