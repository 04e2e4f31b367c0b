"""Image builds and imports through the docker SDK, streamed into a log."""

from __future__ import annotations

import io
import os
import re
import tarfile
import threading
import time
from collections import deque
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import docker.errors

TAIL_LINES = 300
# The classic builder names each RUN step's container: " ---> Running in 3f2a...".
RUNNING_IN = re.compile(r"^\s*---> Running in ([0-9a-f]{12,64})$")
# The engine colours RUN steps' stderr; logs and evidence lines want plain text.
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Proxy settings of the orchestrating machine reach RUN steps as build args
# (predefined by the engine, so they are not baked into the image's config).
PROXY_ARGS = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")


class BuildFailed(Exception):
    """The engine refused or failed a build; ``tail`` holds the last log lines."""

    def __init__(self, message: str, tail: tuple[str, ...], step: str = "",
                 timed_out: bool = False) -> None:
        super().__init__(message)
        self.tail = tail
        self.step = step  # the Dockerfile instruction that was running
        self.timed_out = timed_out


@dataclass(frozen=True)
class BuiltImage:
    id: str
    tail: tuple[str, ...]


def build_context(files: Mapping[str, bytes], modes: Mapping[str, int] | None = None) -> io.BytesIO:
    """An in-memory tar build context holding exactly ``files`` (mode 0644 unless given)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = (modes or {}).get(name, 0o644)
            tar.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


def build_image(
    client: docker.DockerClient,
    files: Mapping[str, bytes],
    log: BinaryIO,
    *,
    labels: Mapping[str, str],
    tag: str | None = None,
    nocache: bool = False,
    modes: Mapping[str, int] | None = None,
    proxy: Mapping[str, str] | None = None,
    deadline: float | None = None,
) -> BuiltImage:
    """Build the Dockerfile in ``files`` with host networking; stream output into ``log``.

    ``proxy``: proxy variables for RUN steps instead of this process's own.
    ``deadline`` (``time.monotonic()``): past it the build is abandoned. A watchdog
    kills the running step's container, which ends even a step that prints nothing;
    the stream is then dropped, which makes the engine cancel the build.
    """
    lines = _LineTail()
    watchdog = None
    if deadline is not None:
        watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), _kill_step,
                                   args=(client, lines))
        watchdog.daemon = True
        watchdog.start()
    try:
        return _stream_build(client, files, log, lines, labels=labels, tag=tag,
                             nocache=nocache, modes=modes, proxy=proxy, deadline=deadline)
    finally:
        if watchdog is not None:
            watchdog.cancel()


def _kill_step(client: docker.DockerClient, lines: _LineTail) -> None:
    """At the deadline: kill the container of the RUN step in progress, if any."""
    if lines.step_container:
        with suppress(docker.errors.DockerException):
            client.api.kill(lines.step_container)


def _stream_build(
    client: docker.DockerClient,
    files: Mapping[str, bytes],
    log: BinaryIO,
    lines: _LineTail,
    *,
    labels: Mapping[str, str],
    tag: str | None,
    nocache: bool,
    modes: Mapping[str, int] | None,
    proxy: Mapping[str, str] | None,
    deadline: float | None,
) -> BuiltImage:
    image_id = None
    if proxy is None:
        proxy = {key: os.environ[key] for key in PROXY_ARGS if key in os.environ}
    buildargs = {key: value for key, value in proxy.items() if key in PROXY_ARGS}
    stream = client.api.build(
        fileobj=build_context(files, modes),
        custom_context=True,
        tag=tag,
        labels=dict(labels),
        network_mode="host",
        pull=False,
        nocache=nocache,
        rm=True,
        forcerm=True,
        buildargs=buildargs,
        decode=True,
    )
    for chunk in stream:
        text = ANSI_ESCAPE.sub("", chunk.get("stream") or chunk.get("status") or "")
        if text:
            log.write(text.encode("utf-8", "replace"))
            log.flush()
            lines.feed(text)
        past_deadline = deadline is not None and time.monotonic() > deadline
        if "error" in chunk and not past_deadline:
            message = str(chunk.get("errorDetail", {}).get("message") or chunk["error"]).strip()
            log.write(f"\nERROR: {message}\n".encode("utf-8", "replace"))
            log.flush()
            raise BuildFailed(message, lines.done(), lines.step)
        aux: Any = chunk.get("aux")
        if isinstance(aux, dict) and "ID" in aux:
            image_id = aux["ID"]
        if past_deadline and image_id is None:
            stream.close()
            log.write(b"\nERROR: the build was still running at the hostgen deadline\n")
            raise BuildFailed("the build was still running at the deadline", lines.done(),
                              lines.step, timed_out=True)
    if image_id is None:
        raise BuildFailed("the engine reported no image id", lines.done(), lines.step)
    return BuiltImage(image_id, lines.done())


class _LineTail:
    """The last whole lines of a build's output; chunks may split lines anywhere."""

    def __init__(self) -> None:
        self.lines: deque[str] = deque(maxlen=TAIL_LINES)
        self.partial = ""
        self.step = ""  # the instruction of the last "Step N/M : ..." line
        self.step_container = ""  # the container of the RUN step in progress

    def feed(self, text: str) -> None:
        *complete, self.partial = (self.partial + text).split("\n")
        for line in complete:
            self._add(line)

    def done(self) -> tuple[str, ...]:
        if self.partial:
            self._add(self.partial)
            self.partial = ""
        return tuple(self.lines)

    def _add(self, line: str) -> None:
        line = ANSI_ESCAPE.sub("", line).rstrip()  # also codes split across chunks
        if not line.strip():
            return
        self.lines.append(line)
        if line.startswith("Step "):
            self.step = line.split(" : ", 1)[-1]
            self.step_container = ""
        running = RUNNING_IN.match(line)
        if running:
            self.step_container = running.group(1)


def import_tarball(
    client: docker.DockerClient,
    tarball: Path,
    reference: str,
    labels: Mapping[str, str],
) -> str:
    """Import a root filesystem tarball as image ``reference`` (repo:tag); returns its id."""
    repository, tag = reference.rsplit(":", 1)
    changes = [f"LABEL {_label_word(k)}={_label_word(v)}" for k, v in sorted(labels.items())]
    changes.append('CMD ["/bin/sh"]')
    client.api.import_image(src=str(tarball), repository=repository, tag=tag, changes=changes)
    return client.images.get(reference).id


def _label_word(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
