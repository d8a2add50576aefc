"""How much memory this test process took: its peak RSS growth, as the kernel saw it."""

from __future__ import annotations

from pathlib import Path


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # the kernel reports kB
    raise LookupError(field)


class PeakRss:
    """This process's peak RSS growth from now: the kernel's high-water mark (VmHWM) is reset
    through /proc/self/clear_refs, so a buffer that grew and was freed again is still seen."""

    def __init__(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.field = "VmHWM"
        except OSError:  # no way to reset the peak: the RSS afterwards is the best left
            self.field = "VmRSS"
        self.before = _status_bytes("VmRSS")

    def growth(self) -> int:
        return _status_bytes(self.field) - self.before
