"""Read an untrusted log line by line at bounded cost.

A cell's log can be anything: hundreds of megabytes on one line, binary noise,
invalid UTF-8, and a path given to ``dib-matrix classify`` may name a FIFO or a
device. A log is opened through ``results.safefile`` (regular files only, never a
hang) and only its last ``LOG_TAIL`` bytes are read: a build's cause is at its end
(the last attempt, dib's failure record, the tool's last words), and the window
bounds the time a log costs whatever its size. Classification only ever looks at the
head of each line (``LINE_LIMIT`` bytes): the rest of an overlong line is skipped as
it streams by, so memory stays at one read buffer plus one head. The line the window
starts inside is read from its start when that is at most ``LINE_START_LOOKBACK``
bytes earlier (one 200 MB line is still judged by its head), else left out.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from results.safefile import MiB, open_regular

LINE_LIMIT = 4096  # bytes of each line that patterns see
CHUNK = 1 << 20  # bytes read at a time
EVIDENCE_LIMIT = 1024  # characters of an evidence line kept in results
# Bytes of a log read, from its end: real build logs are a few MB; a window of
# millions of one-character lines still classifies in seconds. (The excerpt of an
# unexplained failure reads the same window: matrix.verdict.excerpt.LOG_WINDOW.)
LOG_TAIL = 8 * MiB
LINE_START_LOOKBACK = 256 * MiB  # searched back for the start of the window's first line


def lines_of_stream(stream: BinaryIO, limit: int = LINE_LIMIT,
                    max_bytes: int | None = None) -> Iterator[str]:
    """Each line of ``stream`` (without its newline), cut to ``limit`` bytes, decoded;
    at most ``max_bytes`` bytes are read (a log still being written keeps growing)."""
    head = bytearray()
    skipping = False  # inside an overlong line: drop bytes until its newline
    left = max_bytes
    while chunk := stream.read(CHUNK if left is None else min(CHUNK, left)):
        if left is not None:
            left -= len(chunk)
        start = 0
        while start < len(chunk):
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if not skipping:
                room = limit - len(head)
                head += piece[:room]
                skipping = len(piece) > room
            if end < 0:
                break
            yield _decode(head)
            head.clear()
            skipping = False
            start = end + 1
    if head or skipping:
        yield _decode(head)


def lines_of_file(path: Path, limit: int = LINE_LIMIT, tail: int = LOG_TAIL) -> Iterator[str]:
    """The lines of the last ``tail`` bytes of the regular file ``path``, each cut to
    ``limit`` bytes; the line the window starts inside is read from its start (when
    that is within LINE_START_LOOKBACK bytes; else it is left out). Anything but a
    regular file raises ``results.safefile.UnsafeFile``, an OSError."""
    with open_regular(path) as stream:
        size = os.fstat(stream.fileno()).st_size
        window = max(size - tail, 0)
        start = _line_start(stream, window, LINE_START_LOOKBACK)
        stream.seek(window if start is None else start)
        lines = lines_of_stream(stream, limit, max_bytes=size - stream.tell())
        if start is None:  # the window's first line began too far back: left out
            next(lines, None)
        yield from lines


def head_of_file(path: Path, total: int, limit: int = LINE_LIMIT) -> Iterator[str]:
    """The lines of the first ``total`` bytes of the regular file ``path``, each cut to
    ``limit`` bytes (a serial console is judged from its start)."""
    with open_regular(path) as stream:
        yield from lines_of_stream(stream, limit, max_bytes=total)


def _line_start(stream: BinaryIO, position: int, lookback: int) -> int | None:
    """Where the line holding byte ``position`` starts, searched at most ``lookback``
    bytes back (a block at a time); None when it starts further back."""
    end, floor = position, max(position - lookback, 0)
    while end > floor:
        begin = max(end - CHUNK, floor)
        stream.seek(begin)
        found = stream.read(end - begin).rfind(b"\n")
        if found >= 0:
            return begin + found + 1
        end = begin
    return 0 if floor == 0 else None


def lines_of_text(lines: Iterable[str], limit: int = LINE_LIMIT) -> Iterator[str]:
    """The same cut for lines already in memory (a cell's own evidence lines)."""
    for text in lines:
        for line in text.splitlines() or [""]:
            yield line[:limit]


def _decode(raw: bytes | bytearray) -> str:
    return bytes(raw).decode("utf-8", errors="replace").rstrip("\r")


def evidence(line: str, limit: int = EVIDENCE_LIMIT) -> str:
    """An evidence line as results keep it: stripped, at most ``limit`` characters."""
    text = line.strip()
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"
