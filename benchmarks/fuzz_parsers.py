"""The long fuzz run of every wire parser (tests/test_fuzz_parsers.py with many more examples).

    python benchmarks/fuzz_parsers.py [EXAMPLES]     # default 20000 per test; CI runs 300

Prints each test's outcome; a failure shows hypothesis' smallest falsifying input. Exit code: pytest's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    examples = sys.argv[1] if len(sys.argv) > 1 else "20000"
    env = dict(os.environ, ATHOS_FUZZ_EXAMPLES=examples)
    started = time.monotonic()
    cmd = [sys.executable, "-m", "pytest", "-q", "tests/test_fuzz_parsers.py", "-p", "no:cacheprovider"]
    code = subprocess.call([*cmd, "--hypothesis-show-statistics"], cwd=ROOT, env=env)
    print(f"fuzzed with {examples} examples per test in {time.monotonic() - started:.0f} s: exit {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())
