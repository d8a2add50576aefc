"""Start and stop the built-in simulator as its own process (the Locust run and the tests use it)."""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .sim.config import API_KEY_ENV, SIM_API_KEY, SIM_WEBHOOK_SECRET, WEBHOOK_SECRET_ENV
from .wire import realtime_url

LISTENING = re.compile(rb"athos-sim: listening on (https?://\S+)")


SECRET_OPTIONS = ("--api-key", "--webhook-secret")


def redact(args: Sequence[str]) -> list[str]:
    """``args`` with the values of athos-sim's secret options hidden, for messages and reports."""
    out: list[str] = []
    hide = False
    for arg in args:
        name, eq, _ = arg.partition("=")
        if hide:
            out.append("***")
        elif eq and name in SECRET_OPTIONS:
            out.append(f"{name}=***")
        else:
            out.append(arg)
        hide = not eq and arg in SECRET_OPTIONS
    return out


class SimulatorProcess:
    """An ``athos-sim`` child process on loopback, from start to a bounded stop."""

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        truth_log: str | Path | None = None,
        timeout: float = 15.0,
        api_key: str | None = None,
        webhook_secret: str | None = None,
    ) -> None:
        """``api_key`` and ``webhook_secret`` reach the child through its environment, not its
        command line, where ``ps`` would show them."""
        cmd = [sys.executable, "-m", "athos_load.sim", "--host", "127.0.0.1", "--port", "0"]
        if truth_log is not None:
            cmd += ["--truth-log", str(truth_log)]
        cmd += list(args)
        self.args = cmd
        self.truth_log = Path(truth_log) if truth_log is not None else None
        env = dict(os.environ)
        env.pop(API_KEY_ENV, None)
        env.pop(WEBHOOK_SECRET_ENV, None)
        if api_key:
            env[API_KEY_ENV] = api_key
        if webhook_secret:
            env[WEBHOOK_SECRET_ENV] = webhook_secret
        self.api_key = self._option("--api-key") or api_key or SIM_API_KEY
        self.webhook_secret = self._option("--webhook-secret") or webhook_secret or SIM_WEBHOOK_SECRET
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=None, env=env, preexec_fn=_die_with_parent)
        self.url = self._wait_listening(timeout)

    def _wait_listening(self, timeout: float) -> str:
        """Read stdout until the listening line; a simulator that dies or stays silent is an error."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        seen = b""
        while (remaining := deadline - time.monotonic()) > 0:
            if not select.select([self.process.stdout], [], [], remaining)[0]:
                break  # silent past the deadline
            line = self.process.stdout.readline()
            if not line:
                break  # EOF: it exited
            seen += line
            match = LISTENING.search(line)
            if match:
                return match.group(1).decode()
        self.stop()
        raise RuntimeError(
            f"athos-sim did not start ({shlex.join(redact(self.args[3:]))}): {seen.decode(errors='replace')[-500:]}"
        )

    @property
    def http_url(self) -> str:
        return self.url

    @property
    def ws_url(self) -> str:
        return realtime_url(self.url)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def _option(self, name: str) -> str | None:
        """A value given on the command line (the last one wins, as in argparse)."""
        values = [self.args[i + 1] for i, arg in enumerate(self.args[:-1]) if arg == name]
        return values[-1] if values else None

    def truth(self) -> list[dict[str, Any]]:
        """The ground-truth lines written so far (the simulator flushes every 0.5 s)."""
        if self.truth_log is None or not self.truth_log.exists():
            return []
        with self.truth_log.open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (the simulator flushes its truth log), then SIGKILL if it does not exit in time."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode

    def kill(self) -> None:
        """Vanish at once, as a crashed platform would: no close frames, no flush."""
        self.process.kill()
        self.process.wait(5)


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, get SIGTERM when the parent dies, so a killed Locust
    never leaves a simulator running; elsewhere the parent's quitting handler has to do."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
