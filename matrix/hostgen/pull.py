"""Pull a registry image under a deadline, streaming the engine's progress into a log.

``docker.DockerClient.images.pull`` waits as long as the registry keeps the engine
waiting (the client's socket timeout per read, 10 minutes here, and with no bound at
all while progress trickles in). Hostgen has a deadline, so the pull is the Engine
API's ``POST /images/create`` streamed here: every progress line goes to the log, the
deadline is checked between lines, and a watchdog shuts the response's socket at the
deadline, which ends a read that would otherwise wait; dropping the connection makes
the engine cancel the pull. An error the engine relays (the registry's own words:
``manifest unknown``, ``connection refused``) is kept as it is, for the evidence line.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, BinaryIO

import docker
import docker.errors
import requests

from matrix.config.registry import BadReference, parse_reference, repo_digest


class PullFailed(Exception):
    """The image could not be had: ``message`` is the engine's or the registry's line."""

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


@dataclass(frozen=True)
class Pulled:
    """What the engine holds after a pull."""

    reference: str
    image_id: str
    digest: str | None  # ``registry/repository@sha256:...``; None if the engine has none


def _api_name(reference: str) -> tuple[str, str]:
    """(fromImage, tag) for the Engine API: the tag may be a digest."""
    try:
        parsed = parse_reference(reference)
    except BadReference as err:
        raise PullFailed(str(err)) from err
    name = reference.partition("@")[0]
    if parsed.tag:
        name = name[: -len(parsed.tag) - 1]
    return name, parsed.digest or parsed.tag or "latest"


def pull(client: docker.DockerClient, reference: str, log: BinaryIO, deadline: float) -> Pulled:
    """Pull ``reference`` by ``deadline`` (``time.monotonic()``); PullFailed if not."""
    api = client.api
    name, tag = _api_name(reference)
    headers = {}
    registry, _ = docker.auth.resolve_repository_name(name)
    header = docker.auth.get_config_header(api, registry)
    if header:
        headers["X-Registry-Auth"] = header
    left = deadline - time.monotonic()
    if left <= 0:
        raise PullFailed(f"cannot pull {reference}: no time left before the hostgen deadline",
                         timed_out=True)
    started = time.monotonic()
    try:
        # Private helpers of docker-py's APIClient (stable for years): the public pull
        # hides the response, whose socket the watchdog must be able to shut.
        response = api._post(api._url("/images/create"), params={"fromImage": name,
                             "tag": tag}, headers=headers, stream=True, timeout=left)
        api._raise_for_status(response)
    except requests.exceptions.Timeout as err:
        raise PullFailed(_timed_out(reference, started), timed_out=True) from err
    except docker.errors.APIError as err:
        raise PullFailed(f"cannot pull {reference}: {_explain(err)}") from err
    except requests.exceptions.RequestException as err:
        raise PullFailed(f"cannot pull {reference}: {err}") from err
    watchdog = _Watchdog(api, response, deadline)
    try:
        _follow(response, log, reference, started, watchdog)
    finally:
        watchdog.cancel()
        response.close()
    try:
        image = client.images.get(reference)
    except docker.errors.ImageNotFound as err:
        raise PullFailed(f"cannot pull {reference}: the engine reported no image") from err
    return Pulled(reference, image.id, repo_digest(reference, image.attrs.get("RepoDigests")
                                                   or []))


def _follow(response: Any, log: BinaryIO, reference: str, started: float,
            watchdog: _Watchdog) -> None:
    """Copy the progress lines into ``log``; raise PullFailed on an error or the deadline."""
    last = ""
    try:
        for raw in response.iter_lines(chunk_size=1024):
            if watchdog.fired.is_set():
                break
            if not raw:
                continue
            try:
                chunk = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(chunk, dict):
                continue
            if "error" in chunk:
                detail = chunk.get("errorDetail") or {}
                message = str(detail.get("message") or chunk["error"]).strip()
                _note(log, f"ERROR: {message}")
                raise PullFailed(f"cannot pull {reference}: {message}")
            # Per-layer byte counts come many times a second: the log keeps the steps.
            progress = chunk.get("progressDetail")
            if isinstance(progress, dict) and progress.get("current") is not None:
                continue
            line = " ".join(str(chunk[k]) for k in ("id", "status") if chunk.get(k))
            if line and line != last:
                _note(log, line)
                last = line
    except (requests.exceptions.RequestException, OSError, ValueError) as err:
        if not watchdog.fired.is_set():
            raise PullFailed(f"cannot pull {reference}: the engine's stream broke ({err})"
                             ) from err
    if watchdog.fired.is_set():
        _note(log, "ERROR: the pull was still running at the hostgen deadline")
        raise PullFailed(_timed_out(reference, started), timed_out=True)


def _timed_out(reference: str, started: float) -> str:
    return (f"cannot pull {reference}: no image after {time.monotonic() - started:.0f} s "
            "(the hostgen timeout)")


def _explain(err: docker.errors.APIError) -> str:
    return str(err.explanation or err).strip()


def _note(log: BinaryIO, text: str) -> None:
    log.write(f"{text}\n".encode("utf-8", "replace"))
    log.flush()


class _Watchdog:
    """At the deadline, shut the response's socket: a blocked read returns at once."""

    def __init__(self, api: Any, response: Any, deadline: float) -> None:
        self.fired = threading.Event()
        self._api = api
        self._response = response
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired.set()
        with suppress(Exception):  # whatever the transport, the read must end
            sock = self._api._get_raw_response_socket(self._response)
            sock = getattr(sock, "_sock", sock)
            sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()
