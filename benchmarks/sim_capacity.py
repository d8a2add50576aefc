"""How many concurrent real-time audio calls one simulator process carries on one core.

Starts ``athos-sim`` pinned to one core and, from this process pinned to another, drives N calls
(rising levels) of 20 ms / 16 kHz PCM16 audio in real time: 1 s of tone, 3 s of silence, repeated,
so the persona answers each turn (~2 s of persona audio per 4 s cycle). The client is deliberately
lean (raw asyncio sockets, pre-built masked frames, the simulator's own pacer with 1 ms buckets for
all calls) so that it is not what saturates first. Per level it prints the simulator's CPU use
(from /proc/PID/stat), the inbound and outbound frame rates the simulator counted (``/healthz``),
and persona frame lateness at the client (arrival minus ``personaSpeaking`` arrival + k * 20 ms),
then the highest N carried with simulator CPU < 90 % of a core and lateness p99 < 20 ms. Two
columns tell whose lateness it is:
``cliLag99`` is how late this client's own pacer sends (a busy client stamps arrivals late too),
``simLag99`` the simulator's persona pacer wake-up lag (``/healthz`` ``pacerLagP99Ms``).
The machine must be otherwise idle: other work on either core shows up as lateness.

    python benchmarks/sim_capacity.py                       # levels 250,500,1000,1250,1500,2000,2500
    python benchmarks/sim_capacity.py --levels 500,1000 --measure 10

Everything runs on 127.0.0.1 and stops by itself (a level past saturation ends the run).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os
import re
import subprocess
import sys
import time

import aiohttp
import numpy as np

from athos_load.sim.pacer import Pacer
from athos_load.wire import (
    OPCODE_BINARY,
    OPCODE_TEXT,
    PATH_AGENTS,
    PATH_REDEEM,
    PATH_SESSION,
    FrameReader,
    authority,
    client_frame,
)
from athos_load.wire.pacing import Schedule

FRAME_S = 0.020
RATE = 16000
SAMPLES = RATE * 20 // 1000
CYCLE_FRAMES = 200  # 4 s: 1 s of speech then 3 s of silence
SPEECH_FRAMES = 50
CLK_TCK = os.sysconf("SC_CLK_TCK")
CLIENT_LAG_OK_MS = 5.0  # above this the client itself was late, so its lateness figures are not the sim's
DRILL = "cold-call-discovery"
SIM_ARGS = [
    # latencies fixed and unscaled, so every level has the same conversation shape
    "--ready-latency", "fixed:0.01", "--response-latency", "fixed:0.2", "--persona-utterance", "fixed:2",
    "--load-slowdown", "0", "--max-call-seconds", "0", "--score-delay", "fixed:0.05", "--scorers", "8",
    "--drops-per-minute", "0",  # every level the same conversation: no transient drops
]  # fmt: skip


t = np.arange(SAMPLES) / RATE
SPEECH = client_frame(
    OPCODE_BINARY, (0.3 * 32767 * np.sin(2 * np.pi * 300 * t)).astype("<i2").tobytes()
)  # 6 whole cycles
SILENCE = client_frame(OPCODE_BINARY, (np.random.default_rng(1).normal(0, 30, SAMPLES)).astype("<i2").tobytes())


class Stream(asyncio.Protocol):
    """One call: WebSocket handshake, join, then frames in; the pacer writes frames out (:meth:`pace`)."""

    def __init__(self, key: str, lateness: list[float], stats: dict[str, int]) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()  # the HTTP upgrade response, until it is complete
        self.reader = FrameReader()
        self.handshaken = asyncio.get_running_loop().create_future()
        self.ready = asyncio.get_running_loop().create_future()
        self.upgraded = False
        self.lateness = lateness
        self.stats = stats
        self.persona = Schedule(0.0, FRAME_S)  # when each persona frame of the current utterance is due
        self.speaking = False
        self.phase = 0  # where in the speech/silence cycle frame 0 falls
        self.out = Schedule(0.0, FRAME_S)  # this call's outgoing frames; set by start_streaming
        self.pacer_slot = -1
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.stats["lost"] += 1
        for fut in (self.handshaken, self.ready):
            if not fut.done():
                fut.set_exception(ConnectionError("lost"))

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if not self.upgraded:
            buf = self.buf
            buf += data
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end])
            data = bytes(buf[end + 4 :])
            buf.clear()
            self.upgraded = True
            self.handshaken.set_result(head.startswith(b"HTTP/1.1 101"))
        for op, payload in self.reader.feed(data):  # the tool's own frame parser
            if op == 2:
                if self.speaking:
                    persona = self.persona
                    self.lateness.append(persona.lag(persona.next, now))
                    persona.next += 1
                self.stats["persona_frames"] += 1
            elif op == 1:
                self.on_text(payload, now)
            elif op == 8:
                self.stats["closed"] += 1

    def on_text(self, text: bytes, now: float) -> None:
        msg = json.loads(text)
        kind = msg["type"]
        if kind == "personaSpeaking":
            self.speaking = msg["speaking"]
            self.persona = Schedule(now, FRAME_S)
        elif kind == "ready":
            self.ready.set_result(msg)
        elif kind == "error":
            self.stats["errors"] += 1
            if not self.ready.done():
                self.ready.set_exception(RuntimeError(msg["code"]))

    def pace(self, now: float) -> float | None:
        """The pacer's hook: write the frames due by ``now``; the next deadline, or None once closed."""
        if self.closed:
            return None
        out, phase = self.out, self.phase
        for k in out.take(now):
            self.transport.write(SPEECH if (phase + k) % CYCLE_FRAMES < SPEECH_FRAMES else SILENCE)  # type: ignore[union-attr]
        return out.next_deadline


async def open_stream(host: str, port: int, token: str, lateness: list[float], stats: dict[str, int]) -> Stream:
    loop = asyncio.get_running_loop()
    key = base64.b64encode(os.urandom(16)).decode()
    _, stream = await loop.create_connection(lambda: Stream(key, lateness, stats), host, port)
    assert stream.transport is not None
    stream.transport.write(
        f"GET /v1/realtime HTTP/1.1\r\nHost: {authority(host, port)}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    if not await asyncio.wait_for(stream.handshaken, 10):
        raise RuntimeError("handshake refused")
    join = json.dumps({"type": "join", "token": token, "drillKey": DRILL}).encode()
    stream.transport.write(client_frame(OPCODE_TEXT, join))
    await asyncio.wait_for(stream.ready, 10)
    return stream


def start_streaming(pacer: Pacer, stream: Stream, index: int, grid: float) -> None:
    """Put ``stream`` on the shared 20 ms frame grid from ``grid``, its calls spread over 20 one-ms
    offsets and their speech turns over the cycle; its first frame is the next one due."""
    stream.phase = index * 37 % CYCLE_FRAMES
    out = stream.out = Schedule(grid + (index % 20) * 0.001, FRAME_S)
    out.next = out.index_at(time.monotonic())
    pacer.schedule(stream, out.next_deadline)


def proc_cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


async def run(args: argparse.Namespace, sim_pid: int, url: str) -> list[dict[str, float]]:
    host, port = re.match(r"http://([^:]+):(\d+)", url).groups()  # type: ignore[union-attr]
    lateness: list[float] = []
    stats = {"lost": 0, "closed": 0, "errors": 0, "persona_frames": 0}
    pacer = Pacer(granularity=0.001, lag_window=None)  # every wake-up's lag, for the whole measurement
    pacer_task = asyncio.get_running_loop().create_task(pacer.run())
    grid = time.monotonic()
    streams: list[Stream] = []
    results = []
    auth = {"Authorization": "Bearer sim-key"}
    async with aiohttp.ClientSession(headers=auth) as http:

        async def health() -> dict[str, int]:
            async with http.get(url + "/healthz") as r:
                return await r.json()

        rep = {"firstName": "bench", "lastName": "rep", "platformAgentId": "bench-rep"}
        async with http.post(url + PATH_AGENTS, json=rep) as r:
            assert r.status in (201, 409), r.status

        async def add_one() -> None:
            async with http.post(url + PATH_SESSION, json={"platformAgentId": "bench-rep"}) as r:
                session_token = (await r.json())["token"]
            redeem = {"Authorization": f"Bearer {session_token}"}
            async with http.post(url + PATH_REDEEM, json={"drillKey": DRILL}, headers=redeem) as r:
                token = (await r.json())["connectionTicket"]
            stream = await open_stream(host, int(port), token, lateness, stats)
            streams.append(stream)
            start_streaming(pacer, stream, len(streams) - 1, grid)

        for level in args.levels:
            t_ramp = time.monotonic()
            while len(streams) < level:  # ramp up in batches so the accept queue is not flooded
                batch = min(50, level - len(streams))
                await asyncio.gather(*(add_one() for _ in range(batch)))
            ramp = time.monotonic() - t_ramp
            await asyncio.sleep(args.settle)
            lateness.clear()
            pacer.lags.clear()
            h0, c0, m0, w0 = await health(), proc_cpu_seconds(sim_pid), proc_cpu_seconds(os.getpid()), time.monotonic()
            await asyncio.sleep(args.measure)
            h1, c1, m1, w1 = await health(), proc_cpu_seconds(sim_pid), proc_cpu_seconds(os.getpid()), time.monotonic()
            wall = w1 - w0
            late = lateness[:]
            row = {
                "calls": level,
                "live": h1["liveCalls"],
                "sim_cpu": 100 * (c1 - c0) / wall,
                "in_fps": (h1["framesIn"] - h0["framesIn"]) / wall,
                "out_fps": (h1["framesOut"] - h0["framesOut"]) / wall,
                "late_p50_ms": 1000 * pct(late, 50),
                "late_p99_ms": 1000 * pct(late, 99),
                "client_cpu": 100 * (m1 - m0) / wall,
                "send_lag_p99_ms": 1000 * pct(list(pacer.lags), 99),
                "sim_pacer_p99_ms": h1["pacerLagP99Ms"] or 0.0,
                "lost": stats["lost"],
                "ramp_s": ramp,
            }
            results.append(row)
            note = "  * client late: lateness includes its delays" if row["send_lag_p99_ms"] > CLIENT_LAG_OK_MS else ""
            print(
                f"{level:6d} {row['live']:6d} {row['sim_cpu']:7.1f}% {row['in_fps']:9.0f} {row['out_fps']:9.0f} "
                f"{row['late_p50_ms']:8.1f} {row['late_p99_ms']:8.1f} {row['client_cpu']:9.1f}% "
                f"{row['send_lag_p99_ms']:8.1f} {row['sim_pacer_p99_ms']:8.1f} {row['lost']:5d}{note}",
                flush=True,
            )
            if row["sim_cpu"] >= args.stop_cpu or row["late_p99_ms"] >= 100 or row["client_cpu"] >= 95:
                break  # saturated: a higher level only takes longer
    pacer_task.cancel()
    for s in streams:
        if s.transport is not None:
            s.transport.abort()
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levels", default="250,500,1000,1250,1500,2000,2500", help="concurrent calls per step")
    p.add_argument("--settle", type=float, default=4.0, help="seconds after a ramp before measuring")
    p.add_argument("--measure", type=float, default=8.0, help="seconds measured per level")
    p.add_argument("--sim-cpu", type=int, default=0, help="core the simulator is pinned to")
    p.add_argument("--client-cpu", type=int, default=1, help="core this client is pinned to")
    p.add_argument("--stop-cpu", type=float, default=95.0, help="stop after a level with this simulator CPU %%")
    p.add_argument("--sim-args", default="", help="extra simulator options, e.g. '--ws-reader aiohttp'")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="the client's event loop")
    args = p.parse_args()
    args.levels = [int(x) for x in args.levels.split(",")]

    os.sched_setaffinity(0, {args.client_cpu})
    gc.disable()  # a collection pause in this client would show up as persona lateness; the run is short
    sim = subprocess.Popen(
        [sys.executable, "-m", "athos_load.sim", "--port", "0", *SIM_ARGS, *args.sim_args.split()],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {args.sim_cpu}),
    )
    try:
        line = sim.stdout.readline()  # type: ignore[union-attr]
        url = line.strip().rsplit(" ", 1)[-1]
        if not url.startswith("http://"):
            raise SystemExit(f"simulator did not start: {line!r}")
        print(f"athos-sim pid {sim.pid} on core {args.sim_cpu} at {url}; client on core {args.client_cpu}")
        print(f"levels {args.levels}, settle {args.settle:g}s, measure {args.measure:g}s per level")
        print(
            f"{'calls':>6} {'live':>6} {'simCPU':>8} {'in f/s':>9} {'out f/s':>9} {'late50ms':>8} {'late99ms':>8} "
            f"{'clientCPU':>10} {'cliLag99':>8} {'simLag99':>8} {'lost':>5}"
        )
        factory = None
        if args.loop == "uvloop":
            import uvloop

            factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            results = runner.run(run(args, sim.pid, url))
    finally:
        sim.terminate()
        sim.wait(10)
    ok = [r for r in results if r["sim_cpu"] < 90 and r["late_p99_ms"] < 20 and r["live"] == r["calls"]]
    best = max((r["calls"] for r in ok), default=0)
    print(f"highest N carried (sim CPU < 90% of one core, persona lateness p99 < 20 ms): {best}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
