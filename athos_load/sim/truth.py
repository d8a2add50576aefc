"""The simulator's ground truth: what happened, stamped on the server's clocks, as JSON lines.

Each line is ``{"t": unix wall time, "mono": time.monotonic(), "event": NAME, "callId": ..., ...}``.
``mono`` is CLOCK_MONOTONIC, the clock ``time.monotonic()`` reads in every process on the machine,
so a test or benchmark on the same host can subtract its own monotonic stamps from it directly.
(Under uvloop ``loop.time()`` is a millisecond libuv clock, hence not used here.)

Lines are buffered and written by :meth:`TruthLog.run` every half second and by :meth:`close`.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

FLUSH_INTERVAL = 0.5


class TruthLog:
    """Buffered JSON-lines writer; with no path every :meth:`record` is a cheap no-op."""

    def __init__(self, path: str | None) -> None:
        self._file = open(path, "a", encoding="utf-8") if path else None  # closed in close()
        self._lines: list[str] = []
        self.enabled = self._file is not None

    def record(self, event: str, call_id: str | None = None, **fields: Any) -> None:
        if self._file is None:
            return
        line = {"t": round(time.time(), 6), "mono": round(time.monotonic(), 6), "event": event, "callId": call_id}
        line.update(fields)
        self._lines.append(json.dumps(line, separators=(",", ":")))

    def flush(self) -> None:
        if self._file is None or not self._lines:
            return
        lines, self._lines = self._lines, []
        self._file.write("\n".join(lines) + "\n")
        self._file.flush()

    async def run(self) -> None:
        """Flush periodically until cancelled."""
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            self.flush()

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None
