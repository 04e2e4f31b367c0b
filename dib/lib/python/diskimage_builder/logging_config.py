"""``setup()``: log to stderr, DEBUG when DIB_DEBUG_TRACE is above 0, else INFO."""

import logging
import os
import sys


def setup() -> None:
    trace = os.environ.get("DIB_DEBUG_TRACE", "0").strip()
    level = logging.DEBUG if trace.isdigit() and int(trace) > 0 else logging.INFO
    logging.basicConfig(
        stream=sys.stderr,
        level=level,
        format="%(asctime)s.%(msecs)03d %(levelname)s %(name)s [-] %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
    )
