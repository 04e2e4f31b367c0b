"""How much classifying a hostile log costs: ``dib-matrix classify`` on logs built to hurt.

A 200 MB log on a single line, 100 KB lines of one repeated character (the shape
that makes backtracking regexes explode), and the real-failure corpus as a whole.
Each is a separate process, timed with its peak memory.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.figures import MB, Figure
from bench.proc import last_lines, timed
from bench.workspace import REPO, Bench
from dib import spawn

HUGE_LINE_BYTES = 200 * MB
REPEATED = ("a", " ", ":", "/", "'")


def _write_huge_line(path: Path) -> None:
    block = b"y" * MB
    with path.open("wb") as out:
        out.write(b"E: Unable to locate package nosuch ")
        for _ in range(HUGE_LINE_BYTES // MB):
            out.write(block)


def _write_repeated(path: Path) -> None:
    path.write_text("".join(char * 100_000 + "\n" for char in REPEATED))


def _classify(bench: Bench, log: Path, name: str) -> tuple[float, int]:
    done = timed([sys.executable, "-m", "matrix.cli", "classify", str(log)], bench.log(name),
                 env=spawn.child_env(), cwd=REPO, timeout=600)
    if done.returncode not in (0, 1):
        raise RuntimeError(f"classify {log.name} exited {done.returncode}: {last_lines(done)}")
    return done.seconds, done.peak_rss


def run(bench: Bench) -> tuple[list[Figure], dict[str, list[str]]]:
    scratch = bench.path("classify")
    scratch.mkdir(parents=True, exist_ok=True)
    huge, repeated = scratch / "huge-line.log", scratch / "repeated.log"
    _write_huge_line(huge)
    _write_repeated(repeated)
    try:
        huge_s, huge_rss = _classify(bench, huge, "classify-huge")
        rep_s, rep_rss = _classify(bench, repeated, "classify-repeated")
    finally:
        huge.unlink(missing_ok=True)
    return [
        Figure("classify", "200 MB single-line log", huge_s, "s", 5.0,
               note=f"peak RSS {huge_rss / MB:.0f} MB"),
        Figure("classify", "100 KB lines of one character (x5)", rep_s, "s", 5.0,
               note=f"peak RSS {rep_rss / MB:.0f} MB"),
    ], {}
