"""The exit codes of a run: each means one thing to a CI job (see docs/ci.md).

Locust itself exits 0, 1 (a request failed, with no verdict of ours) or 2 (bad input or a crash);
the tool's own verdicts take codes Locust never uses.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    PASSED = 0
    USAGE = 2  # a bad option, file or target, found before or as the run started (Locust's code for bad input)
    GATE_FAILED = 3  # the run is valid and a gate failed (a capacity search found no good level)
    INVALID = 4  # the run's numbers cannot be trusted
