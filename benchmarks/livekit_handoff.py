"""What the LiveKit transport's thread hand-off costs: a room loop (asyncio in its own OS thread,
livekit.RoomLoop) calling back into gevent with the hub's thread-safe callback, as every persona
audio frame and room signal of a LiveKit call does.

    python benchmarks/livekit_handoff.py [--frames 50000]

Prints the CPU per hand-off (both threads, the process's CPU time over the run) and the delay from
the loop's ``time.monotonic()`` stamp to gevent running the callback (p50/p99): what the hand-off
adds to every persona frame's arrival time and to a LiveKit generator's CPU.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import asyncio  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from athos_load.livekit import room_loop  # noqa: E402

FRAME_S = 0.02


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=50000, help="hand-offs to time")
    parser.add_argument("--sessions", type=int, default=500, help="streams paced at 50 frames a second")
    args = parser.parse_args()
    loop = room_loop()
    delays: list[float] = []
    done = gevent.event.Event()
    total = args.frames

    def received(frame: bytes, at: float) -> None:
        delays.append(time.monotonic() - at)
        if len(delays) >= total:
            done.set()

    frame = bytes(640)

    async def streams() -> None:
        # ``sessions`` persona streams, each a frame every 20 ms, as AudioStreams would deliver them
        start = time.monotonic()
        k = 0
        while len(delays) < total:
            await asyncio.sleep(max(0.0, start + k * FRAME_S - time.monotonic()))
            now = time.monotonic()
            for _ in range(args.sessions):
                loop.to_gevent(received, frame, now)
            k += 1

    cpu0, wall0 = time.process_time(), time.monotonic()
    loop.run(streams())
    done.wait(600)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    d = np.asarray(delays) * 1000
    print(f"hand-off: {len(delays)} frames from {args.sessions} streams in {wall:.1f} s")
    print(f"  cpu per frame {cpu / len(delays) * 1e6:.1f} us (both threads), {cpu / wall:.0%} of a core")
    print(f"  loop stamp -> gevent callback: p50 {np.percentile(d, 50):.2f} ms, p99 {np.percentile(d, 99):.2f} ms")


if __name__ == "__main__":
    main()
