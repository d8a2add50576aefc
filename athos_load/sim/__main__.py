"""``athos-sim``: run the simulator until SIGTERM/SIGINT. ``python -m athos_load.sim --help`` lists the knobs."""

from __future__ import annotations

import asyncio
import logging
import sys

from athos_load.wire import authority

from .config import SimConfig, build_parser
from .server import serve


def _loop_factory() -> type[asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # uvloop is optional (and absent on Windows): the stdlib loop works, slower
        return None
    return uvloop.new_event_loop  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
        format="%(asctime)s athos-sim %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    config = SimConfig.from_args(argv)

    def listening(url: str) -> None:
        # The one line on stdout: tests and the Locust integration parse it to find the port.
        print(f"athos-sim: listening on {url}", flush=True)

    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(serve(config, listening))
    except OSError as exc:  # typically the port is taken or the address is not local
        print(f"athos-sim: cannot listen on {authority(config.host, config.port)}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
