"""Resampling for rep clips: soxr (python-soxr, the SoX resampler) against the hand-written
windowed-sinc (Kaiser) polyphase resampler athos_load/audio.py used before, measured in one run.

    flock /tmp/athos-bench.lock python benchmarks/resample.py

Quality, per conversion (44100->16000, 48000->16000, 8000->16000), from pure tones at whole Hz:
each tone is resampled alone and the middle second of the output (whole cycles, so every tone and
every alias sits exactly on an FFT bin: a rectangular window, no leakage) is measured with numpy's
FFT against the input amplitude:

* passband error: the largest |gain| in dB over the tones of a band (flat is 0).
* gain at 7600 / 7900 Hz: the top of the band, where the anti-alias filter rolls off.
* worst alias: for tones above the output's Nyquist (which must vanish when downsampling), the
  largest output level; "from N Hz" leaves out the tones just above Nyquist, the transition band.
* worst spurious: for passband tones, the output that is not the tone (aliases, images, ringing).
  When upsampling 8000->16000 it is the image rejection (a tone at f leaves an image at 8000 - f).
* alignment: the lag in output samples of a 1 kHz burst against the same burst made at the output
  rate (0: speech boundaries found on the output are where they were in the input).

Speed: the best of 3 timings of a 60 s clip (float64 mono, noise with a speech-like spectrum).
Prints one table, the resamplers side by side.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import soxr

Resampler = Callable[[np.ndarray, int, int], np.ndarray]


# -- the hand-written resampler, as it was in athos_load/audio.py, kept here as the reference -----

_ZERO_CROSSINGS = 32  # half-length of the sinc in zero crossings
_ROLLOFF = 0.92  # cutoff over the lower Nyquist
_KAISER_BETA = 8.6
_CHUNK = 8192  # output samples per vectorised step


def kaiser_sinc(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Band-limited interpolation, a polyphase bank of Kaiser-windowed sincs (one dot product per output)."""
    if src == dst:
        return x
    g = math.gcd(src, dst)
    up, down = dst // g, src // g
    cutoff = 0.5 * _ROLLOFF * min(1.0, dst / src)
    half = math.ceil(_ZERO_CROSSINGS / (2 * cutoff))
    offsets = np.arange(-half + 1, half + 1)
    d = np.arange(up)[:, None] / up - offsets[None, :]
    window = np.i0(_KAISER_BETA * np.sqrt(np.clip(1.0 - (d / half) ** 2, 0.0, None))) / np.i0(_KAISER_BETA)
    bank = 2 * cutoff * np.sinc(2 * cutoff * d) * window
    bank /= bank.sum(axis=1, keepdims=True)
    n_out = math.ceil(len(x) * up / down)
    padded = np.concatenate([np.zeros(half), x, np.zeros(half + 1)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * half)
    out = np.empty(n_out)
    for lo in range(0, n_out, _CHUNK):
        n = np.arange(lo, min(lo + _CHUNK, n_out))
        base, phase = np.divmod(n * down, up)
        out[lo : lo + len(n)] = np.einsum("ij,ij->i", windows[base + 1], bank[phase])
    return out


RESAMPLERS: dict[str, Resampler] = {
    "hand-written": kaiser_sinc,
    "soxr HQ": lambda x, src, dst: soxr.resample(x, src, dst, quality="HQ"),
    "soxr VHQ": lambda x, src, dst: soxr.resample(x, src, dst, quality="VHQ"),
}

# -- measurements ----------------------------------------------------------------------------------


def tone_response(resample: Resampler, src: int, dst: int, freq: int) -> tuple[float, float]:
    """(gain of the tone, level of everything else) in dB re the input amplitude, over a whole second."""
    x = np.sin(2 * np.pi * freq * np.arange(round(1.4 * src)) / src)
    y = resample(x, src, dst)[dst // 5 : dst // 5 + dst]  # the middle second: the edges' transients left out
    spectrum = np.abs(np.fft.rfft(y)) / (dst / 2)  # a unit sine on bin f reads 1.0
    tone = spectrum[freq] if freq < dst / 2 else 0.0
    if freq < dst / 2:
        spectrum[freq] = 0.0  # zeroed, not subtracted: a difference of two powers would floor at -160 dB
    rest = math.sqrt(float(np.sum(spectrum**2)))
    return 20 * math.log10(max(tone, 1e-12)), 20 * math.log10(max(rest, 1e-12))


def alignment(resample: Resampler, src: int, dst: int) -> int:
    """Lag in output samples of a Gaussian 1 kHz burst at 0.5 s against the ideal output."""

    def burst(rate: int) -> np.ndarray:
        t = np.arange(rate) / rate - 0.5
        return np.exp(-((t / 0.02) ** 2)) * np.sin(2 * np.pi * 1000 * t)

    y, ideal = resample(burst(src), src, dst)[:dst], burst(dst)
    y = np.pad(y, (0, dst - len(y)))
    return int(np.argmax(np.correlate(y, ideal, "full"))) - (dst - 1)


def speed_ms(resample: Resampler, src: int, dst: int) -> float:
    rng = np.random.default_rng(1)
    x = np.cumsum(rng.standard_normal(60 * src)) * 1e-3  # brown-ish: most energy low, like speech
    x -= np.convolve(x, np.ones(64) / 64, "same")  # no DC drift
    best = math.inf
    for _ in range(3):
        started = time.perf_counter()
        resample(x, src, dst)
        best = min(best, time.perf_counter() - started)
    return best * 1000


def figures(resample: Resampler, src: int, dst: int) -> dict[str, float]:
    nyquist = min(src, dst) // 2
    out: dict[str, float] = {}
    speech = [tone_response(resample, src, dst, f) for f in range(100, 3401, 100)]
    wide_top = int(0.875 * nyquist)
    wide = [tone_response(resample, src, dst, f) for f in range(100, wide_top + 1, 100)]
    out["passband error 100-3400 Hz (dB)"] = max(abs(g) for g, _ in speech)
    out[f"passband error 100-{wide_top} Hz (dB)"] = max(abs(g) for g, _ in wide)
    for f in (7600, 7900):
        if f < nyquist:
            out[f"gain at {f} Hz (dB)"] = tone_response(resample, src, dst, f)[0]
    out["worst spurious, passband tones (dB)"] = max(r for _, r in wide)
    if src > dst:  # tones the output cannot carry must vanish, not fold back
        high = src // 2 - 1
        for start in (nyquist + 10, nyquist + 200, int(1.1 * nyquist)):
            levels = [tone_response(resample, src, dst, f)[1] for f in range(start, high, 97)]
            out[f"worst alias, tones from {start} Hz (dB)"] = max(levels)
    out["alignment (output samples)"] = alignment(resample, src, dst)
    out["60 s clip (ms)"] = speed_ms(resample, src, dst)
    return out


def main() -> None:
    names = list(RESAMPLERS)
    print(f"{'':46}" + "".join(f"{n:>14}" for n in names))
    for src, dst in [(44100, 16000), (48000, 16000), (8000, 16000)]:
        print(f"{src} -> {dst}")
        table = {name: figures(fn, src, dst) for name, fn in RESAMPLERS.items()}
        for row in table[names[0]]:
            print(f"  {row:44}" + "".join(f"{table[n][row]:14.3f}" for n in names))
    print(f"soxr {soxr.__version__}, numpy {np.__version__}")


if __name__ == "__main__":
    main()
