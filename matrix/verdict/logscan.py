"""Read an untrusted log line by line at bounded cost.

A cell's log can be anything: hundreds of megabytes on one line, binary noise,
invalid UTF-8. Classification only ever looks at the head of each line
(``LINE_LIMIT`` bytes): the rest of an overlong line is skipped as it streams by,
so memory stays at one read buffer plus one head, and time is one pass over the
bytes whatever their shape.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

LINE_LIMIT = 4096  # bytes of each line that patterns see
CHUNK = 1 << 20  # bytes read at a time
EVIDENCE_LIMIT = 1024  # characters of an evidence line kept in results


def lines_of_stream(stream: BinaryIO, limit: int = LINE_LIMIT) -> Iterator[str]:
    """Each line of ``stream`` (without its newline), cut to ``limit`` bytes, decoded."""
    head = bytearray()
    skipping = False  # inside an overlong line: drop bytes until its newline
    while chunk := stream.read(CHUNK):
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


def lines_of_file(path: Path, limit: int = LINE_LIMIT) -> Iterator[str]:
    with open(path, "rb") as stream:
        yield from lines_of_stream(stream, limit)


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
