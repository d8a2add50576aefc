"""Audio loading: decoding, mix-down, resampling, framing, speech boundaries, noise and gain, errors, the cache."""

from __future__ import annotations

import math
import os
import struct
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile

from athos_load.audio import (
    AudioError,
    Clip,
    Effects,
    apply_effects,
    find_speech,
    frames_from_pcm,
    load_clip,
    silence,
)
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


def tone_level_db(x: np.ndarray, rate: int, freq: float) -> float:
    """Peak level in dB re full scale of the component at ``freq``, which must sit on an FFT bin
    (Blackman window: what leaks from other components is 58 dB down at worst, and fading)."""
    window = np.blackman(len(x))
    spectrum = np.abs(np.fft.rfft(x * window)) * 2 / window.sum()
    return 20 * math.log10(max(spectrum[round(freq * len(x) / rate)], 1e-12))


def test_the_resampler_keeps_the_band_and_rejects_what_would_alias(tmp_path):
    """44100 -> 16000 (written as float, so the input is exact): 1 kHz keeps its frequency and level,
    the band's top (7 kHz) is flat, 7.9 kHz (just under the new Nyquist, in the filter's transition)
    is 60 dB down, and tones just past 8 kHz, which would fold back to just under it, vanish."""

    def resampled(freq: float) -> np.ndarray:
        """One second of the output, edges left out: whole-Hz tones sit on its FFT bins."""
        x = 0.5 * np.sin(2 * np.pi * freq * np.arange(round(1.25 * 44100)) / 44100)
        path = tmp_path / f"{freq:g}.wav"
        soundfile.write(path, x, 44100, subtype="FLOAT")
        return samples(load_clip(path, FMT))[2000:18000] / 32768

    one_k = resampled(1000.0)
    assert np.argmax(np.abs(np.fft.rfft(one_k * np.hanning(len(one_k))))) == 1000  # 1 Hz bins
    assert tone_level_db(one_k, 16000, 1000.0) == pytest.approx(20 * math.log10(0.5), abs=0.05)
    assert tone_level_db(resampled(7000.0), 16000, 7000.0) == pytest.approx(20 * math.log10(0.5), abs=0.1)
    assert tone_level_db(resampled(7900.0), 16000, 7900.0) < 20 * math.log10(0.5) - 60
    for freq in (8100.0, 8500.0):  # their aliases would sit at 7900 and 7500 Hz
        assert np.sqrt(np.mean(resampled(freq) ** 2)) < 0.5 / math.sqrt(2) * 10 ** (-60 / 20), freq


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
    def problem(path) -> str:
        with pytest.raises(AudioError) as info:
            load_clip(path, FMT)
        assert "\n" not in str(info.value) and str(info.value) == f"{path}: {info.value.problem}"
        return info.value.problem

    assert problem(tmp_path / "nope.wav") == "file not found"
    assert problem(tmp_path) == "not a file"
    for name in ("notes.wav", "notes.flac", "notes.mp3", "notes.ogg"):
        (tmp_path / name).write_text("not audio at all")
        assert problem(tmp_path / name) == "not an audio file (expected WAV, FLAC, OGG or MP3)", name
    assert problem(write_wav(tmp_path / "empty.wav", np.zeros((0, 1)), 16000)) == "no audio samples"
    # a 16-bit float WAV does not exist in practice; libsndfile's reason is as vague as it gets
    assert problem(write_raw_wav(tmp_path / "half.wav", bytes(64), 16000, 1, 2, 3, False)).startswith("cannot decode")
    flac = tmp_path / "cut.flac"
    soundfile.write(flac, tone_with_gaps(16000), 16000)
    flac.write_bytes(flac.read_bytes()[:-3000])  # cut off mid-frame
    assert problem(flac) == "cannot decode: Error : flac decoder lost sync"
    unreadable = write_wav(tmp_path / "locked.wav", tone_with_gaps(16000), 16000)
    unreadable.chmod(0)
    if not os.access(unreadable, os.R_OK):  # root reads anything
        assert problem(unreadable) == "Permission denied"


# -- other formats ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("ext", "subtype"), [("flac", "PCM_16"), ("mp3", "MPEG_LAYER_III"), ("ogg", "VORBIS")])
def test_flac_mp3_and_ogg_load_like_the_wav(tmp_path, ext, subtype):
    tone = tone_with_gaps(44100)
    stereo = np.stack([tone, 0.5 * tone], axis=1)
    wav = load_clip(write_wav(tmp_path / "gaps.wav", stereo, 44100), FMT)
    path = tmp_path / f"gaps.{ext}"
    # FLAC gets the WAV's int16 samples (libsndfile's float to int16 scaling differs between WAV and
    # FLAC); MP3 gets floats (libsndfile 1.2.2's MP3 encoder garbles int16 input: peaks past full scale)
    data = np.rint(stereo * 32767).astype(np.int16) if ext == "flac" else stereo
    soundfile.write(path, data, 44100, subtype=subtype)

    clip = load_clip(path, FMT)

    assert len(clip.frames) == len(wav.frames) and all(len(f) == FMT.frame_bytes for f in clip.frames)
    assert len(clip.speech) == len(wav.speech) == 2
    for got, want in zip(clip.speech, wav.speech, strict=True):
        assert got == pytest.approx(want, abs=FMT.frame_seconds)
    if ext == "flac":  # lossless: the very same samples
        assert clip.frames == wav.frames
    else:
        assert np.std(samples(clip)) == pytest.approx(np.std(samples(wav)), rel=0.06)


# -- noise and gain --------------------------------------------------------------------------------


def speech_and_noise_db(clean, mixed) -> tuple[float, float]:
    """RMS in dBFS of the clean clip's speech (its utterances) and of what the mix added (everywhere)."""
    rate, x, y = FMT.sample_rate, samples(clean).astype(float), samples(mixed).astype(float)
    speech = np.concatenate([x[round(a * rate) : round(b * rate)] for a, b in clean.speech])
    return tuple(10 * math.log10(np.mean(v**2) / 32768**2) for v in (speech, y - x))


@pytest.fixture
def gaps(tmp_path) -> Path:
    return write_wav(tmp_path / "gaps.wav", tone_with_gaps(44100, amp=0.3), 44100)


@pytest.mark.parametrize("snr", [15.0, 0.0, 40.0])
def test_noise_is_mixed_at_the_snr_of_the_speech(gaps, snr):
    clean = load_clip(gaps, FMT)
    noisy = load_clip(gaps, FMT, Effects(snr_db=snr))
    speech_db, noise_db = speech_and_noise_db(clean, noisy)
    assert speech_db - noise_db == pytest.approx(snr, abs=1.0)
    assert noisy.path == clean.path and len(noisy.frames) == len(clean.frames)


def test_the_noise_is_pink_and_the_same_for_a_clip_every_time(gaps):
    clean = load_clip(gaps, FMT)
    noisy = apply_effects(clean, Effects(snr_db=10))
    assert apply_effects(clean, Effects(snr_db=10)).frames == noisy.frames
    noise = (samples(noisy).astype(float) - samples(clean)) / 32768
    power = np.abs(np.fft.rfft(noise)) ** 2
    hz = np.fft.rfftfreq(len(noise), 1 / FMT.sample_rate)

    def octave_db(low: float) -> float:
        return 10 * math.log10(power[(hz >= low) & (hz < 2 * low)].sum())

    # pink: the same energy in every octave (white noise would gain 3 dB an octave, 9 dB here)
    assert octave_db(250) == pytest.approx(octave_db(2000), abs=1.0)
    # another clip (here: its own first half) gets other noise, not a copy
    other = apply_effects(Clip(None, FMT, clean.frames[:80], clean.speech[:1]), Effects(snr_db=10))
    assert other.frames[:20] != noisy.frames[:20]


def test_speech_bounds_come_from_the_clean_clip(gaps):
    clean = load_clip(gaps, FMT)
    for effects in (Effects(snr_db=0), Effects(snr_db=15, gain_db=-30), Effects(gain_db=-50)):
        assert load_clip(gaps, FMT, effects).speech == clean.speech, effects
    # what a detector would make of the noisy clip itself: the noise fills the pauses
    loud_noise = load_clip(gaps, FMT, Effects(snr_db=0))
    assert find_speech(b"".join(loud_noise.frames), FMT) != clean.speech


def test_gain_scales_the_level_and_saturates_instead_of_wrapping(gaps):
    clean = samples(load_clip(gaps, FMT)).astype(float)
    halved = samples(load_clip(gaps, FMT, Effects(gain_db=-6))).astype(float)
    assert np.abs(halved).max() / np.abs(clean).max() == pytest.approx(0.5, abs=0.005)
    assert np.sqrt(np.mean(halved**2) / np.mean(clean**2)) == pytest.approx(10 ** (-6 / 20), rel=1e-3)
    hot = samples(load_clip(gaps, FMT, Effects(gain_db=20))).astype(float)  # 0.3 x 10 = 3x full scale
    assert hot.max() == 32767 and hot.min() == -32768
    assert np.all(np.sign(hot) == np.sign(clean))  # clipped, never wrapped round to the other sign


def test_noise_and_gain_need_finite_numbers_and_noise_needs_speech(tmp_path):
    for bad in ({"snr_db": math.nan}, {"gain_db": math.inf}, {"gain_db": "6"}, {"snr_db": True}):
        with pytest.raises(ValueError, match=f"{next(iter(bad))} must be a finite number"):
            Effects(**bad)
    quiet = write_wav(tmp_path / "quiet.wav", np.zeros(16000), 16000)
    with pytest.raises(AudioError, match=r"quiet\.wav: no speech in the clip to set the noise level against$"):
        load_clip(quiet, FMT, Effects(snr_db=15))
    assert load_clip(quiet, FMT, Effects(gain_db=6)).speech == ()  # gain alone needs no speech


def test_clips_are_cached_per_file_and_format(tmp_path):
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(8000) / 16000)
    path = write_wav(tmp_path / "a.wav", tone, 16000)
    first = load_clip(path, FMT)
    assert load_clip(str(path), FMT) is first
    assert load_clip(tmp_path / "." / "a.wav", FMT) is first
    assert load_clip(path, AudioFormat(sample_rate=8000)) is not first
    noisy = load_clip(path, FMT, Effects(snr_db=15))
    assert noisy is not first and load_clip(path, FMT, Effects(snr_db=15.0, gain_db=0)) is noisy
    assert load_clip(path, FMT, Effects(snr_db=20)) is not noisy
    assert load_clip(path, FMT, Effects(snr_db=15, gain_db=-6)) is not noisy
    assert load_clip(path, FMT, Effects()) is first

    write_wav(path, tone[:4000], 16000)  # rewritten: reloaded
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert len(load_clip(path, FMT).frames) == 13
    assert len(load_clip(path, FMT, Effects(snr_db=15)).frames) == 13
