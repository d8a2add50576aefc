"""The built-in Athos simulator: a real target for athos-load, run as its own process (``athos-sim``).

It speaks the reference protocol of :mod:`athos_load.protocol` (the only part of the package it
imports) and behaves like a platform under stress, every fault a knob. Modules:

* ``config``    the knobs (:class:`SimConfig`), the command line, latency :class:`Distribution`
* ``server``    the aiohttp application: REST, the realtime WebSocket, start/stop
* ``tap``       the fast path for a call's inbound frames, in front of aiohttp's reader
* ``platform``  the decisions: mint, join, resume, turn-taking, drops, ending calls
* ``calls``     one call's state and the persona's speech; the book of calls REST reads
* ``vad``       energy voice-activity detection of the rep's audio
* ``voice``     the persona's synthetic voice;  ``link``  a call's socket and WebSocket framing
* ``pacer``     the one task that streams every persona's audio on absolute deadlines
* ``scoring``   the scoring queue and ``call.scored`` webhook delivery
* ``tokens``    session tokens and the mint rate limit;  ``truth``  the ground-truth log
* ``counters``  the live counters ``GET /healthz`` shows
"""

from .config import Distribution, SimConfig

__all__ = ["Distribution", "SimConfig"]
