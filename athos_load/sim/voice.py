"""The persona's voice: a synthetic, voice-like PCM signal, built once per audio format.

Harmonics of a gliding ~120 Hz pitch, shaped by a ~4 Hz syllable envelope, with a little breath
noise. The envelope never falls below ~-25 dBFS RMS, so every frame is clearly speech to an energy
VAD (a client's, or this simulator's own at -40 dBFS). Utterances loop over these frames.
"""

from __future__ import annotations

import functools

import numpy as np

from athos_load.wire import AudioFormat

LOOP_SECONDS = 6.0
_SEED = 20240917  # fixed: the voice is the same in every run


@functools.lru_cache(maxsize=16)
def persona_pcm_frames(audio: AudioFormat) -> tuple[bytes, ...]:
    """``LOOP_SECONDS`` of persona voice cut into frames of ``audio``'s size (PCM16 LE mono)."""
    rate = audio.sample_rate
    n_frames = int(LOOP_SECONDS * 1000) // audio.frame_ms
    n = n_frames * audio.frame_samples
    t = np.arange(n) / rate
    pitch = 120.0 + 20.0 * np.sin(2 * np.pi * 0.7 * t) + 8.0 * np.sin(2 * np.pi * 3.1 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    nyquist = rate / 2
    wave = np.zeros(n)
    for h in range(1, 16):
        if 140.0 * h >= nyquist:
            break
        # a soft formant bump around 500-900 Hz makes it read as a vowel rather than a buzz
        weight = (1.0 / h) * (1.0 + 1.5 * np.exp(-((((120.0 * h) - 700.0) / 300.0) ** 2)))
        wave += weight * np.sin(h * phase)
    syllables = 0.35 + 0.65 * np.sin(np.pi * 4.0 * t) ** 2
    rng = np.random.default_rng(_SEED)
    wave = wave * syllables + 0.02 * rng.standard_normal(n)
    wave *= 0.5 / np.max(np.abs(wave))  # peak at -6 dBFS
    pcm = (wave * 32767.0).astype("<i2").tobytes()
    size = audio.frame_bytes
    return tuple(pcm[i : i + size] for i in range(0, len(pcm), size))
